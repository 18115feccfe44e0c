"""Strict key mapping between an upstream checkpoint and this project's layout, with a report.

Every importer goes through ``KeyMapping``: each source key must be consumed (``take``) or listed as intentionally
dropped (``drop``, with the reason), and the mapped tensors are checked against the target's expected names and
shapes (from a model built on the meta device, so no memory is spent). Anything left over is an error naming the keys.
Files are read with ``torch.load(weights_only=True)`` or safetensors only: a pickle can run code, a tensor file cannot.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def load_weights(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch pickle (``.bin``/``.pt``/``.ckpt``) read with
    ``weights_only=True``; a Lightning-style ``{"state_dict": ...}`` wrapper is unwrapped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=device)
    try:
        data = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends: say why and what to do
        raise ValueError(f"{path}: not loadable with torch.load(weights_only=True) ({exc}); only plain tensor "
                         f"checkpoints are accepted (convert it to safetensors first)") from exc
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def shapes_of(module_or_state: Any) -> dict[str, tuple[int, ...]]:
    """Name → shape of a module's state dict (build it under ``torch.device('meta')``) or of a tensor dict."""
    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: tuple(v.shape) for k, v in state.items()}


@dataclass
class MappingReport:
    """What one import or export did: per component, counts and the dropped keys with their reasons."""

    format: str
    direction: str = "import"
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "direction": self.direction, "components": self.components,
                "notes": self.notes}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def summary(self) -> str:
        lines = [f"{self.direction} {self.format}:"]
        for name, c in self.components.items():
            lines.append(f"  {name}: {c['source_keys']} source keys → {c['target_keys']} target keys "
                         f"({c['mapped']} mapped, {len(c['dropped'])} dropped)")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


class KeyMapping:
    """Consume a source state dict key by key into a target dict; ``finish`` enforces strictness.

    ``source_name`` (e.g. the file path) appears in every error so the user knows which file is at fault."""

    def __init__(self, source: Mapping[str, torch.Tensor], source_name: str) -> None:
        self.source = dict(source)
        self.source_name = source_name
        self.remaining = set(self.source)
        self.target: dict[str, torch.Tensor] = {}
        self.dropped: dict[str, str] = {}
        self.mapped = 0

    def has(self, key: str) -> bool:
        return key in self.source

    def keys_with_prefix(self, prefix: str) -> list[str]:
        return sorted(k for k in self.remaining if k.startswith(prefix))

    def take(self, key: str) -> torch.Tensor:
        """Consume one source key and return its tensor (an error names a missing key and the file)."""
        if key not in self.source:
            raise ValueError(f"{self.source_name}: required key '{key}' is missing (is this the right file and "
                             f"format?)")
        if key not in self.remaining:
            raise RuntimeError(f"{self.source_name}: key '{key}' consumed twice (importer bug)")
        self.remaining.discard(key)
        return self.source[key]

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.target:
            raise RuntimeError(f"target key '{key}' written twice (importer bug)")
        self.target[key] = value
        self.mapped += 1

    def move(self, src: str, dst: str) -> None:
        """Rename one key."""
        self.put(dst, self.take(src))

    def move_prefix(self, src_prefix: str, dst_prefix: str, rename: Any = None) -> int:
        """Rename every remaining key under ``src_prefix``; ``rename(rest) -> rest'`` rewrites the remainder."""
        keys = self.keys_with_prefix(src_prefix)
        for key in keys:
            rest = key[len(src_prefix):]
            self.put(dst_prefix + (rename(rest) if rename else rest), self.take(key))
        return len(keys)

    def drop(self, key: str, reason: str) -> None:
        """Mark a source key as intentionally unused."""
        self.take(key)
        self.dropped[key] = reason

    def drop_matching(self, predicate: Any, reason: str) -> int:
        keys = sorted(k for k in self.remaining if predicate(k))
        for key in keys:
            self.drop(key, reason)
        return len(keys)

    def finish(self, expected: Mapping[str, tuple[int, ...]] | None, component: str,
               report: MappingReport | None = None) -> dict[str, torch.Tensor]:
        """Raise if a source key was neither used nor dropped, or (with ``expected``) if a target key is missing,
        unexpected or of the wrong shape. Records the component in ``report``; returns the target dict."""
        if self.remaining:
            left = sorted(self.remaining)
            raise ValueError(f"{self.source_name}: {len(left)} key(s) not understood by the {component} mapping, "
                             f"e.g. {left[:5]}; the checkpoint is not in the expected format")
        if expected is not None:
            missing = sorted(set(expected) - set(self.target))
            extra = sorted(set(self.target) - set(expected))
            if missing or extra:
                raise ValueError(f"{self.source_name} → {component}: missing target keys {missing[:5]} "
                                 f"({len(missing)}), unexpected {extra[:5]} ({len(extra)})")
            wrong = [(k, tuple(v.shape), expected[k]) for k, v in self.target.items()
                     if tuple(v.shape) != tuple(expected[k])]
            if wrong:
                k, got, want = wrong[0]
                raise ValueError(f"{self.source_name} → {component}: {len(wrong)} shape mismatch(es), e.g. '{k}' "
                                 f"is {got}, the target expects {want}")
        if report is not None:
            report.components[component] = {
                "source": self.source_name, "source_keys": len(self.source), "target_keys": len(self.target),
                "mapped": self.mapped, "dropped": dict(sorted(self.dropped.items())),
            }
        logger.info("%s: %d keys mapped, %d dropped", component, self.mapped, len(self.dropped))
        return self.target
