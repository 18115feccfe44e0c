"""Layers point one way: smartedit_cli → flows → pipeline, model → libraries.

An AST walk over every module (top-level and function-level imports alike, since heavy imports are lazy):
model/ and pipeline/ never import flows/ or the CLI; pipeline/ never imports model/; flows/ never imports
the CLI; product code never imports the sample-data generator (pipeline/samples/).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Product code; bench/ and tests/ may use anything (they run on the sample data).
PACKAGES = ("smartedit_cli", "flows", "pipeline", "model")

# (importing package, imported package) pairs that must not occur.
FORBIDDEN = {
    ("model", "flows"), ("model", "smartedit_cli"),
    ("pipeline", "flows"), ("pipeline", "smartedit_cli"), ("pipeline", "model"),
    ("flows", "smartedit_cli"),
}
SAMPLES = "pipeline.samples"
# Modules whose job is the sample data itself: the generator's own package, its command, and the demo chain.
SAMPLE_USERS = ("pipeline.samples", "smartedit_cli.samples", "flows.demo")
# No exceptions: shard_scenes reads the COCO category table from pipeline/vocabulary.py (issue 9 part 2).
ALLOWED: set[tuple[str, str]] = set()


def _allowed(module: str, name: str) -> bool:
    return any(module == m and (name == n or name.startswith(n + ".")) for m, n in ALLOWED)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]  # `from pipeline import samples`
    return found


def _violations() -> list[str]:
    problems = set()
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            module = _module_name(path)
            for line, name in _imports(path, module):
                target = name.split(".")[0]
                where = f"{path.relative_to(ROOT)}:{line}"
                if (top, target) in FORBIDDEN:
                    problems.add(f"{where} imports {target}: {top}/ must not import {target}/")
                is_samples = name == SAMPLES or name.startswith(SAMPLES + ".")
                if is_samples and not module.startswith(SAMPLE_USERS) and not _allowed(module, name):
                    problems.add(f"{where} imports {SAMPLES}: product code must not import the sample-data generator")
    return sorted(problems)


def test_layers_point_one_way():
    problems = _violations()
    assert not problems, "layering violations:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, forbidden", [
    ("model/x.py", "from flows.train import train"),
    ("pipeline/x.py", "import model.config"),
    ("pipeline/x.py", "from flows import common"),
    ("flows/x.py", "from smartedit_cli.main import main"),
    ("model/x.py", "def f():\n    from pipeline.samples.scenes import Scene\n"),
    ("pipeline/synthetic/x.py", "from ..samples import scenes"),
    ("pipeline/x.py", "from pipeline import samples"),
])
def test_the_walk_catches_each_kind_of_violation(tmp_path, monkeypatch, source, forbidden):
    """The checker itself: a fake tree with one bad import yields exactly one problem naming it."""
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    path = tmp_path / source
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(forbidden + "\n")
    problems = _violations()
    assert len(problems) == 1 and source in problems[0], problems
