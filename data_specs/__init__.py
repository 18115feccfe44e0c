"""The declarative specs shipped with the package: sample schemas, sources, mixture, templates, tables.

One accessor for every reader of these files, so the same code finds them in a checkout, an editable
install and a regular (wheel) install, where they live in site-packages beside this module:

    from data_specs import spec_path
    spec_path("schemas.yaml"), spec_path("sources", "refcoco.yaml")
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["SPECS_DIR", "spec_path"]

# importlib.resources rather than __file__ arithmetic in each module: it is what package data is for,
# and it names one directory however the package was installed.
SPECS_DIR: Path = Path(str(resources.files(__name__)))


def spec_path(*parts: str) -> Path:
    """Path of a spec file below data_specs/ (``spec_path("sources", "refcoco.yaml")``); it need not exist."""
    return SPECS_DIR.joinpath(*parts)
