"""Provenance recorded in every manifest: what spec made the data, with which code, when, in which run."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]


def spec_hash(spec: Any) -> str:
    """sha256 of the spec's canonical JSON: equal specs hash equal, whatever their key order."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when running from a checkout (``+dirty`` with local changes)."""
    try:
        version = metadata.version("smartedit-pipeline")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}{'.dirty' if dirty else ''}"


def current_flow_run_id() -> str | None:
    """The Prefect flow run id when called inside a flow run, else None (never imports Prefect itself)."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


@dataclass
class Provenance:
    """Where a dataset came from. ``spec`` is the source spec or build parameters, stored whole."""

    source: str
    spec: dict[str, Any] = field(default_factory=dict)
    spec_hash: str = ""
    code_version: str = ""
    created: str = ""
    flow_run_id: str | None = None

    @classmethod
    def now(cls, source: str, spec: dict[str, Any]) -> "Provenance":
        return cls(
            source=source,
            spec=spec,
            spec_hash=spec_hash(spec),
            code_version=code_version(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            flow_run_id=current_flow_run_id(),
        )
