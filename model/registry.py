"""The champion registry of scheduled retraining: one small JSON file, safe with concurrent writers.

Layout::

    {"champion": entry | null,   the model in use
     "anchor":   entry | null,   the first champion: every candidate is also compared with it (model.evaluation.gate)
     "history":  [entry + {"decision": ..., "decided": ...}, ...]}

An entry holds the model reference (``pipeline``: a directory or a built-in baseline), its ``checkpoint``, the
evaluation ``settings`` (comparability record), the per-item results ``items`` (key, seed, group, every metric),
group means ``metrics``, and provenance (manifest hashes, flow run id).

Writes take an exclusive ``fcntl`` lock on ``<registry>.lock`` for the whole read-modify-write, write a uniquely
named temporary file in the same directory, fsync it, rename it over the registry and fsync the directory, so two
writers can neither interleave nor leave a truncated file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

EMPTY: dict[str, Any] = {"champion": None, "anchor": None, "history": []}


def _no_nan(value: Any) -> Any:
    """JSON has no NaN: a NaN metric is stored as null (the decision already says it was NaN)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


class ChampionRegistry:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return json.loads(json.dumps(EMPTY))
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: registry is not valid JSON ({err}); restore it from a backup or move it "
                             "aside to start without a champion") from err
        if not isinstance(data, dict) or "champion" not in data or "history" not in data:
            raise ValueError(f"{self.path}: not a champion registry (needs 'champion' and 'history'); move it aside")
        data.setdefault("anchor", data["champion"])
        return data

    @property
    def champion(self) -> dict[str, Any] | None:
        return self.load()["champion"]

    @property
    def anchor(self) -> dict[str, Any] | None:
        return self.load()["anchor"]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        text = json.dumps(_no_nan(data), indent=1, sort_keys=True, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply ``change`` to the registry under the lock and write it atomically; returns the new registry."""
        with self._locked():
            data = self.load()
            change(data)
            self._write(data)
            return data

    def record(self, candidate: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
        """Append the decision to the history; a promoted candidate becomes champion (and anchor if none)."""
        entry = {**candidate, "decision": decision, "decided": datetime.now(timezone.utc).isoformat(timespec="seconds")}

        def change(data: dict[str, Any]) -> None:
            data["history"].append(entry)
            if decision.get("promote"):
                champion = {k: v for k, v in entry.items() if k != "decision"}
                data["champion"] = champion
                if data.get("anchor") is None:
                    data["anchor"] = champion

        return self.update(change)

    def refresh(self, role: str, evaluation: dict[str, Any]) -> dict[str, Any]:
        """Replace the stored evaluation (settings, items, metrics) of the champion or the anchor after it was
        re-evaluated under new settings."""
        if role not in ("champion", "anchor"):
            raise ValueError(f"refresh: role {role!r}; expected 'champion' or 'anchor'")

        def change(data: dict[str, Any]) -> None:
            if data.get(role) is not None:
                data[role] = {**data[role], **evaluation}

        return self.update(change)
