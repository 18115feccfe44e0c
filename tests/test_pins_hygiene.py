"""The suite cannot hide a broken project module behind a skip: no `pytest.importorskip` of our own packages."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
OWN = ("pipeline", "model", "flows", "smartedit_cli", "bench")


def test_no_importorskip_of_the_projects_own_modules():
    offenders = []
    for path in sorted(p for p in TESTS.glob("*.py") if p.name != Path(__file__).name):
        for match in re.finditer(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text(encoding="utf-8")):
            if match.group(1).split(".")[0] in OWN:
                offenders.append(f"{path.name}: importorskip({match.group(1)!r})")
    assert offenders == [], "import the project's modules directly so that a broken import fails: " + "; ".join(offenders)
    # the check itself can fire
    assert re.search(r"importorskip\(\s*[\"']([\w.]+)[\"']", 'pytest.importorskip("model.pipeline")')
