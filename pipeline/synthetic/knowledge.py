"""World knowledge for the reasoning scenario and for compatible replacements (data_specs/knowledge.yaml)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.schema import SPECS_DIR

KNOWLEDGE_PATH = SPECS_DIR / "knowledge.yaml"
SWAPS_PATH = SPECS_DIR / "replace_swaps.yaml"


@dataclass(frozen=True)
class Kind:
    noun: str  # generic noun in instructions: "the left animal"
    replacements: tuple[str, ...]  # objects beyond COCO categories a member may become


@dataclass(frozen=True)
class Knowledge:
    categories: dict[str, tuple[str, ...]]  # category → world-knowledge descriptions
    kind_of: dict[str, str]  # category → kind name
    kinds: dict[str, Kind]
    confusable: dict[str, frozenset[str]] = None  # category → other categories its descriptions may also fit
    questions: dict[str, tuple[str, ...]] = None  # category → Reason-Edit-style questions it answers

    def fits(self, category: str) -> frozenset[str]:
        """Categories a knowledge description of ``category`` may refer to (itself included)."""
        return (self.confusable or {}).get(category, frozenset()) | {category}

    def descriptions(self, category: str) -> tuple[str, ...]:
        if category not in self.categories:
            raise ValueError(f"category {category!r} has no entry in {KNOWLEDGE_PATH}; add descriptions for it")
        return self.categories[category]

    def noun(self, category: str) -> str:
        return self.kinds[self.kind_of[category]].noun

    def replacements(self, category: str) -> list[str]:
        """Objects of the same kind the category may be replaced by: other COCO categories, then the extras."""
        kind = self.kind_of.get(category)
        if kind is None:
            raise ValueError(f"category {category!r} has no kind in {KNOWLEDGE_PATH}")
        same = sorted(c for c, k in self.kind_of.items() if k == kind and c != category)
        return same + [r for r in self.kinds[kind].replacements if r != category]


@functools.cache
def load_knowledge(path: Path = KNOWLEDGE_PATH) -> Knowledge:
    doc = yaml.safe_load(Path(path).read_text())
    kinds = {}
    for name, spec in (doc.get("kinds") or {}).items():
        if not spec.get("noun"):
            raise ValueError(f"{path}: kinds.{name} needs a 'noun'")
        kinds[name] = Kind(spec["noun"], tuple(spec.get("replacements") or ()))
    categories, kind_of = {}, {}
    for name, spec in (doc.get("categories") or {}).items():
        descriptions = tuple(spec.get("descriptions") or ())
        if len(descriptions) < 2:
            raise ValueError(f"{path}: categories.{name}.descriptions needs at least two entries, has {len(descriptions)}")
        if spec.get("kind") not in kinds:
            raise ValueError(f"{path}: categories.{name}.kind is {spec.get('kind')!r}; expected one of {sorted(kinds)}")
        categories[name] = descriptions
        kind_of[name] = spec["kind"]
    confusable: dict[str, set[str]] = {}
    for i, group in enumerate(doc.get("confusable") or ()):
        unknown = [c for c in group if c not in categories]
        if unknown:
            raise ValueError(f"{path}: confusable[{i}] names unknown categories {unknown}")
        for c in group:
            confusable.setdefault(c, set()).update(g for g in group if g != c)
    questions = {}
    for name, items in (doc.get("questions") or {}).items():
        if name not in categories:
            raise ValueError(f"{path}: questions.{name}: unknown category; add it under categories first")
        if not items or not all(isinstance(q, str) and q.rstrip().endswith("?") for q in items):
            raise ValueError(f"{path}: questions.{name} must be a list of questions ending with '?'")
        questions[name] = tuple(items)
    return Knowledge(categories, kind_of, kinds, {c: frozenset(v) for c, v in confusable.items()}, questions)


@functools.cache
def load_swaps(path: Path = SWAPS_PATH) -> dict[str, tuple[str, ...]]:
    """COCO category → plausible objects of other categories to replace it with (data_specs/replace_swaps.yaml)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    knowledge = load_knowledge()
    swaps = {}
    for name, items in (doc.get("swaps") or {}).items():
        if name not in knowledge.categories:
            raise ValueError(f"{path}: swaps.{name}: not a category of {KNOWLEDGE_PATH}; use the COCO category name")
        if not items or name in items:
            raise ValueError(f"{path}: swaps.{name} must list other objects, got {items!r}")
        swaps[name] = tuple(items)
    return swaps
