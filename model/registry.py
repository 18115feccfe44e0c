"""The champion registry and the promotion gate of scheduled retraining.

A candidate replaces the champion only if, on the corrected Reason-Edit protocol, no gated metric is
worse than the champion's beyond its tolerance. The registry is one small JSON file: the champion's
pipeline directory, its metrics, the manifests' hashes it was trained on, and the history of decisions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

Direction = Literal["higher", "lower"]

# metric → which way is better; keys follow the evaluation report's aggregates ("<group>.<metric>")
DEFAULT_DIRECTIONS: dict[str, Direction] = {"psnr": "higher", "ssim": "higher", "lpips": "lower", "clip": "higher"}


@dataclass
class PromotionPolicy:
    """When a candidate may replace the champion.

    tolerances: metric key (e.g. "understanding.psnr") → how much worse than the champion it may be, in the
        metric's own units (absolute). Metrics absent from this dict are reported, not gated.
    directions: metric name (last part of the key) → "higher" or "lower" is better.
    """

    tolerances: dict[str, float] = field(default_factory=lambda: {
        "understanding.psnr": 0.25, "understanding.ssim": 0.005, "understanding.lpips": 0.005, "understanding.clip": 0.25,
        "reasoning.psnr": 0.25, "reasoning.ssim": 0.005, "reasoning.lpips": 0.005, "reasoning.clip": 0.25,
    })
    directions: dict[str, Direction] = field(default_factory=lambda: dict(DEFAULT_DIRECTIONS))

    def __post_init__(self) -> None:
        for key, tol in self.tolerances.items():
            if tol < 0:
                raise ValueError(f"tolerance for {key!r} is {tol}; tolerances are non-negative amounts of allowed regression")
            name = key.rsplit(".", 1)[-1]
            if name not in self.directions:
                raise ValueError(f"tolerance for {key!r}: no direction for metric {name!r}; add it to directions")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: dict[str, float | None], champion: dict[str, float | None] | None,
           policy: PromotionPolicy | None = None) -> Decision:
    """Compare flat metric dicts ("group.metric" → value). No champion → promote."""
    policy = policy or PromotionPolicy()
    if not champion:
        return Decision(True, ["no champion yet"])
    reasons, worse = [], False
    for key, tol in sorted(policy.tolerances.items()):
        cand, champ = candidate.get(key), champion.get(key)
        if champ is None:
            reasons.append(f"{key}: champion has no value, not gated")
            continue
        if cand is None:
            worse = True
            reasons.append(f"{key}: candidate has no value (champion {champ:.4f})")
            continue
        higher = policy.directions[key.rsplit(".", 1)[-1]] == "higher"
        regression = (champ - cand) if higher else (cand - champ)
        if regression > tol:
            worse = True
            reasons.append(f"{key}: {cand:.4f} vs champion {champ:.4f}, worse by {regression:.4f} > tolerance {tol}")
        else:
            reasons.append(f"{key}: {cand:.4f} vs champion {champ:.4f}, ok")
    return Decision(not worse, reasons)


def flatten_metrics(aggregates: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """{"understanding": {"psnr": 22.1, ...}, ...} → {"understanding.psnr": 22.1, ...}."""
    return {f"{group}.{name}": value for group, metrics in aggregates.items() for name, value in metrics.items()}


class ChampionRegistry:
    """A JSON file: {"champion": {...} | null, "history": [{...decision...}]}. Written atomically."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"champion": None, "history": []}
        data = json.loads(self.path.read_text())
        if "champion" not in data or "history" not in data:
            raise ValueError(f"{self.path}: not a champion registry (needs 'champion' and 'history'); move it aside")
        return data

    @property
    def champion(self) -> dict[str, Any] | None:
        return self.load()["champion"]

    def record(self, candidate: dict[str, Any], decision: Decision) -> dict[str, Any]:
        """Append the decision to the history; make the candidate champion when promoted. Returns the registry."""
        data = self.load()
        entry = {**candidate, "decision": decision.to_json(), "decided": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data["history"].append(entry)
        if decision.promote:
            data["champion"] = {k: v for k, v in entry.items() if k != "decision"}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        return data
