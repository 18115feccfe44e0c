"""The promotion gate of scheduled retraining: a candidate must edit, and edit well, to replace the champion.

Background fidelity alone rewards not editing (a do-nothing editor scores PSNR 100 dB, SSIM 1), so the gate
decides on per-item results, (item, seed) by (item, seed), in four steps; any failure refuses:

1. **sanity** — a NaN in any candidate metric refuses; the instruction-following metrics (``INSTRUCTION_METRICS``:
   CLIP, CLIP direction, VLM judge, L1 / CLIP-I / DINO to a target image) must be available, otherwise the gate
   raises ``GateUnavailable`` unless ``allow_fidelity_only`` (then recorded in the decision's ``mode``).
2. **it edits** — the fraction of items whose edit region changed by at least ``min_fg_change`` (mean |Δ|, [0, 1])
   must reach ``min_edit_rate``.
3. **it beats doing nothing** — against the built-in ``identity`` baseline, at least one instruction-following
   metric (``fg_change`` in fidelity-only mode) must be better with the whole bootstrap confidence interval of the
   paired mean difference above zero. The identity baseline can never pass this against itself.
4. **it is not worse than the champion nor than the anchor** (the first champion): for every gated metric both
   have, the paired per-item differences (oriented so that > 0 is better) must not have their whole confidence
   interval below ``-margin`` (default margin 0). Comparing with the anchor as well stops small regressions from
   stacking up promotion after promotion. References must have been scored under the same settings
   (``model.evaluation.comparability``); a stale one refuses (the retrain flow re-evaluates it first).

The first run (no champion) is steps 1–3: a candidate is promoted only if it beats ``identity``.
Confidence intervals: scipy's percentile bootstrap of the mean, fixed seed, so a decision is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from model.evaluation.instruction_following import CHANGE_METRIC, INSTRUCTION_METRICS

Direction = Literal["higher", "lower"]
DIRECTIONS: dict[str, Direction] = {
    "psnr": "higher", "ssim": "higher", "lpips": "lower", "clip": "higher", "clip_direction": "higher",
    "vlm": "higher", "l1": "lower", "clip_i": "higher", "dino": "higher", "fg_change": "higher",
}
FIDELITY_METRICS = ("psnr", "ssim", "lpips")
ITEM_FIELDS = ("key", "seed", "group", "category")


class GateUnavailable(RuntimeError):
    """The gate cannot judge instruction following with the metrics given; the message says how to fix it."""


@dataclass
class GatePolicy:
    """How the gate decides (module docstring)."""

    confidence: float = 0.95
    """Two-sided confidence level of the bootstrap intervals."""
    n_resamples: int = 2000
    seed: int = 0
    """Seed of the bootstrap: the same per-item results always give the same decision."""
    min_fg_change: float = 0.02
    """An item counts as edited when its mean |Δ| inside the edit region is at least this (5/255 ≈ 0.02)."""
    min_edit_rate: float = 0.5
    """Fraction of (item, seed) pairs that must be edited."""
    margins: dict[str, float] = field(default_factory=dict)
    """Metric → how much worse (in its units, per item on average) may be tolerated before "significantly
    worse"; default 0 for every metric."""
    allow_fidelity_only: bool = False
    """Run without instruction-following metrics (recorded as mode "fidelity-only")."""
    instruction_metrics: tuple[str, ...] = INSTRUCTION_METRICS
    fidelity_metrics: tuple[str, ...] = FIDELITY_METRICS

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"GatePolicy.confidence={self.confidence}; expected a level in (0.5, 1), e.g. 0.95")
        for name, margin in self.margins.items():
            if name not in DIRECTIONS:
                raise ValueError(f"GatePolicy.margins: unknown metric {name!r}; expected one of {sorted(DIRECTIONS)}")
            if margin < 0 or math.isnan(margin):
                raise ValueError(f"GatePolicy.margins[{name!r}]={margin}; margins are non-negative amounts")
        if not 0 <= self.min_edit_rate <= 1:
            raise ValueError(f"GatePolicy.min_edit_rate={self.min_edit_rate}; expected a fraction in [0, 1]")


@dataclass
class Comparison:
    """Paired comparison of one metric: mean of (candidate − reference), oriented so that > 0 is better."""

    reference: str
    metric: str
    n: int
    mean: float
    low: float
    high: float
    verdict: Literal["better", "worse", "no significant difference"]


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]
    mode: Literal["instruction-following", "fidelity-only"] = "instruction-following"
    edit_rate: float | None = None
    comparisons: list[Comparison] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(diffs: Sequence[float], policy: GatePolicy) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``diffs`` (scipy.stats.bootstrap)."""
    import numpy as np
    from scipy.stats import bootstrap

    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 1 or np.ptp(d) == 0:
        return float(d.mean()), float(d.mean())  # no spread: the interval is the point (scipy would warn and NaN)
    res = bootstrap((d,), np.mean, confidence_level=policy.confidence, n_resamples=policy.n_resamples,
                    method="percentile", rng=np.random.default_rng(policy.seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _values(items: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[str, int], float]:
    return {(str(i["key"]), int(i["seed"])): float(i[metric]) for i in items if i.get(metric) is not None}


def compare(candidate: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], metric: str,
            policy: GatePolicy, name: str) -> Comparison | None:
    """Paired comparison on the (item, seed) pairs both have a value for; None if there are none."""
    cand, ref = _values(candidate, metric), _values(reference, metric)
    pairs = sorted(set(cand) & set(ref))
    if not pairs:
        return None
    sign = 1.0 if DIRECTIONS[metric] == "higher" else -1.0
    diffs = [sign * (cand[p] - ref[p]) for p in pairs]
    low, high = bootstrap_ci(diffs, policy)
    margin = policy.margins.get(metric, 0.0)
    verdict = "better" if low > 0 else "worse" if high < -margin else "no significant difference"
    return Comparison(name, metric, len(pairs), sum(diffs) / len(diffs), low, high, verdict)


def _fmt(c: Comparison) -> str:
    return f"{c.metric} vs {c.reference}: mean Δ {c.mean:+.4f}, {c.n} pairs, CI [{c.low:+.4f}, {c.high:+.4f}] → {c.verdict}"


def edit_rate(items: Sequence[Mapping[str, Any]], policy: GatePolicy) -> float | None:
    changes = [i.get(CHANGE_METRIC) for i in items if i.get(CHANGE_METRIC) is not None]
    if not changes:
        return None
    return sum(c >= policy.min_fg_change for c in changes) / len(changes)


def _has(items: Sequence[Mapping[str, Any]], metric: str) -> bool:
    return any(i.get(metric) is not None for i in items)


def decide(
    candidate: Sequence[Mapping[str, Any]],
    identity: Sequence[Mapping[str, Any]],
    references: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    policy: GatePolicy | None = None,
) -> GateDecision:
    """Gate a candidate's per-item results (dicts with key, seed and metric values, as in report.json's records).

    ``identity``: the identity baseline's per-item results under the same settings; ``references``: name →
    per-item results of the current champion and the anchor (empty or None on the first run).
    Raises GateUnavailable when no instruction-following metric is available and fidelity-only is not allowed.
    """
    policy = policy or GatePolicy()
    references = dict(references or {})
    reasons: list[str] = []
    nan = sorted({m for i in candidate for m in DIRECTIONS if isinstance(i.get(m), float) and math.isnan(i[m])})
    if nan:
        return GateDecision(False, [f"NaN in the candidate's {', '.join(nan)}: refused (a metric that cannot be "
                                    "computed cannot pass)"])
    following = [m for m in policy.instruction_metrics if _has(candidate, m)]
    mode: Literal["instruction-following", "fidelity-only"] = "instruction-following"
    if not following:
        if not policy.allow_fidelity_only:
            raise GateUnavailable(
                "promotion gate: no instruction-following metric was computed (CLIP, CLIP direction, VLM judge, or "
                "L1/CLIP-I/DINO against target images); give clip_dir (a local CLIP ViT-L/14), a vlm judge, or a "
                "benchmark with target images — or allow_fidelity_only=true to gate on background fidelity and the "
                "edit check only (recorded with the decision)"
            )
        mode = "fidelity-only"
        reasons.append("fidelity-only mode (allow_fidelity_only): no instruction-following metric available")
    decision = GateDecision(True, reasons, mode)

    decision.edit_rate = rate = edit_rate(candidate, policy)
    if rate is None or rate < policy.min_edit_rate:
        decision.promote = False
        reasons.append(f"edits nothing: {0 if rate is None else rate:.0%} of items changed their edit region by ≥ "
                       f"{policy.min_fg_change} (needs {policy.min_edit_rate:.0%})")
    else:
        reasons.append(f"edit rate {rate:.0%} ≥ {policy.min_edit_rate:.0%}")

    beats = following or [CHANGE_METRIC]  # fidelity-only: at least it must change its edit regions
    versus_identity = [c for m in beats if (c := compare(candidate, identity, m, policy, "identity")) is not None]
    decision.comparisons += versus_identity
    reasons += [_fmt(c) for c in versus_identity]
    if not any(c.verdict == "better" for c in versus_identity):
        decision.promote = False
        reasons.append(f"does not beat the identity baseline on {'/'.join(beats)}")

    if not references:
        reasons.append("no champion yet: first run")
    gated = following + [m for m in policy.fidelity_metrics if _has(candidate, m)]
    for name, items in references.items():
        for metric in gated:
            c = compare(candidate, items, metric, policy, name)
            if c is None:
                reasons.append(f"{metric} vs {name}: the {name} has no values, not gated")
                continue
            decision.comparisons.append(c)
            reasons.append(_fmt(c))
            if c.verdict == "worse":
                decision.promote = False
    if any(c.verdict == "worse" and c.reference != "identity" for c in decision.comparisons):
        reasons.append("significantly worse than a reference: refused")
    return decision


def items_of(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-item results to store and gate on: identity fields and every metric, from ItemRecords or dicts."""
    out = []
    for r in records:
        d = r if isinstance(r, Mapping) else asdict(r)
        out.append({k: d.get(k) for k in (*ITEM_FIELDS, *DIRECTIONS)})
    return out
