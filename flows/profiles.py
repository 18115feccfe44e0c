"""Named deployment profiles: data_specs/profiles/<name>.yaml (`demo`, `production`).

One file per environment holds what the scheduled retraining uses (sources, outputs, gate, …) and, under
``train:``, what the `train` deployment's event trigger trains. ``${VAR}`` is filled from the run's
environment (``SMARTEDIT_ROOT`` defaults to this checkout); an unset variable is one error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from data_specs import spec_path

PROFILES = spec_path("profiles")
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def profile_path(name: str) -> Path:
    """A profile's file: a name in data_specs/profiles, or a path to a YAML file."""
    return Path(name) if name.endswith((".yaml", ".yml")) else PROFILES / f"{name}.yaml"


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def fill_env(value: Any, where: str) -> Any:
    """``value`` with every ``${VAR}`` replaced from the environment; an unset one raises naming ``where``."""
    env = {"SMARTEDIT_ROOT": str(Path(__file__).resolve().parents[1]), **os.environ}
    if isinstance(value, str):
        missing = [v for v in _ENV_VAR.findall(value) if v not in env]
        if missing:
            raise ValueError(f"{where}: ${{{missing[0]}}} is not set in the run's environment: {value!r} needs "
                             f"environment variable(s) {missing}; set them on the worker or in the work pool's job "
                             f"variables (env), see the profile's header")
        return _ENV_VAR.sub(lambda m: env[m.group(1)], value)
    if isinstance(value, dict):
        return {k: fill_env(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_env(v, where) for v in value]
    return value


def read_profile(path: Path) -> dict[str, Any]:
    """The profile file's raw mapping (no ``${VAR}`` filled)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a profile is a mapping of parameters, got {type(raw).__name__}")
    return raw
