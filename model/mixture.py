"""The SmartEdit training mixture: which dataset each training sample is drawn from.

The spec (data_specs/mixture.yaml) is a tree of `chain` nodes ("15 % synthetic, else 10 % ReasonSeg,
else ...") and `weighted` nodes (by a fixed ratio or by dataset size); sizes come from the manifests'
``nsamples``. `build_mixture` flattens the tree into one probability per leaf.

Why a small sampler and not ``wds.RandomMix`` over resampled streams: RandomMix keeps its position
inside Python generator state, so a resumed run cannot continue the same stream. Here draw ``i`` of
rank ``r`` is a pure function of ``(seed, r, i)`` (a counter-keyed ``numpy`` SeedSequence): the
whole stream position is one integer, resume is exact, different ranks draw different samples, and
the result does not depend on how many DataLoader workers split the draw indices between them
(which is why the worker id is deliberately *not* part of the key). Samples are then read by index
with ``wids`` (random access into the tar shards).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data_specs import spec_path
from pipeline.shards import dataset_info, load_manifest

log = logging.getLogger(__name__)

DEFAULT_SPEC = spec_path("mixture.yaml")
DEFAULT_SPLITS = spec_path("splits.yaml")


class MixtureNode(BaseModel):
    """One node of the mixture tree: a leaf (``sources``) or an inner node (``select`` + ``children``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    p: float | None = Field(None, ge=0.0, le=1.0, description="chain child: probability given no earlier child was taken")
    weight: Union[float, Literal["size"], None] = Field(None, description="weighted child: a ratio, or `size`")
    sources: list[str] | None = None
    select: Literal["chain", "weighted"] | None = None
    children: list["MixtureNode"] | None = None

    @model_validator(mode="after")
    def _shape(self) -> "MixtureNode":
        if (self.sources is None) == (self.children is None):
            raise ValueError(f"node {self.name!r}: give exactly one of `sources` (a leaf) or `children` (an inner node)")
        if self.children is not None:
            if self.select is None:
                raise ValueError(f"node {self.name!r}: an inner node needs `select: chain` or `select: weighted`")
            if not self.children:
                raise ValueError(f"node {self.name!r}: `children` is empty")
            names = [c.name for c in self.children]
            if len(set(names)) != len(names):
                raise ValueError(f"node {self.name!r}: duplicate child names {names}")
            if self.select == "chain":
                *head, last = self.children
                for c in head:
                    if c.p is None:
                        raise ValueError(f"node {self.name!r}: chain child {c.name!r} needs `p` (only the last child takes the rest)")
                if last.p is not None:
                    raise ValueError(f"node {self.name!r}: the last chain child {last.name!r} takes the rest; remove its `p`")
            else:
                kinds = {"size" if c.weight == "size" else "ratio" if c.weight is not None else "missing" for c in self.children}
                if "missing" in kinds:
                    raise ValueError(f"node {self.name!r}: every weighted child needs `weight` (a number or `size`)")
                if len(kinds) > 1:
                    raise ValueError(f"node {self.name!r}: children mix numeric weights and `size`; use one kind per node")
        elif self.sources is not None and not self.sources:
            raise ValueError(f"node {self.name!r}: `sources` is empty")
        return self

    def leaves(self) -> list["MixtureNode"]:
        return [self] if self.children is None else [leaf for c in self.children for leaf in c.leaves()]


class MixtureSpec(BaseModel):
    """data_specs/mixture.yaml: a name, a base seed and the tree."""

    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int = 0
    root: MixtureNode

    @model_validator(mode="after")
    def _unique_leaves(self) -> "MixtureSpec":
        names = [leaf.name for leaf in self.root.leaves()]
        if len(set(names)) != len(names):
            raise ValueError(f"leaf names must be unique, got {names}")
        sources = [s for leaf in self.root.leaves() for s in leaf.sources or []]
        if len(set(sources)) != len(sources):
            raise ValueError(f"a source may feed one leaf only, got {sources}")
        return self


def load_mixture_spec(path: Path | str = DEFAULT_SPEC) -> MixtureSpec:
    """Read and validate a mixture spec; errors name the file and the offending field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: mixture spec not found (the default is {DEFAULT_SPEC})") from err
    try:
        return MixtureSpec.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"{path}: invalid mixture spec:\n{err}") from err


class SplitRules(BaseModel):
    """data_specs/splits.yaml: the splits of each source that may train (``"*"``: any, or no split recorded)."""

    model_config = ConfigDict(extra="forbid")

    training: dict[str, list[str]]

    def verdict(self, source: str, split: str | None) -> str | None:
        """None when a dataset of ``source``/``split`` may train, else the reason it is held out."""
        allowed = self.training.get(source)
        if allowed is None:
            return f"no split rule for source {source!r} in data_specs/splits.yaml"
        # No recorded split: not a converter's manifest (those always record provenance.spec.split);
        # hand-made or synthetic datasets are training data by construction.
        if "*" in allowed or split is None:
            return None
        if split not in allowed:
            return f"split {split!r} is held out ({source} trains on {allowed})"
        return None


def load_split_rules(path: Path | str = DEFAULT_SPLITS) -> SplitRules:
    """Read and validate the split rules; errors name the file."""
    path = Path(path)
    try:
        return SplitRules.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: split rules not found (the default is {DEFAULT_SPLITS})") from err
    except ValidationError as err:
        raise ValueError(f"{path}: invalid split rules (expected `training: {{source: [splits]}}`):\n{err}") from err


@dataclass(frozen=True)
class DatasetRef:
    """One dataset (one shardindex.json): where it is, which source and split it holds, how many samples."""

    index_path: str
    name: str
    source: str
    nsamples: int
    split: str | None = None


def read_dataset_ref(path: Path | str) -> DatasetRef:
    """Metadata of one manifest (no shard is opened). Accepts the dataset dir or its shardindex.json."""
    info = dataset_info(path)  # the one manifest reader (pipeline/shards.py): checks the file, names its faults
    # the split the converter recorded (provenance.spec.split); None for synthetic or hand-made datasets
    split = ((load_manifest(info.index_path).get("provenance") or {}).get("spec") or {}).get("split")
    return DatasetRef(info.index_path, info.name, info.source, info.nsamples, str(split) if split is not None else None)


@dataclass
class SplitSelection:
    """The manifests that may train and those held out, each held-out one with its reason."""

    used: list[DatasetRef]
    excluded: list[tuple[DatasetRef, str]]

    def rows(self) -> list[dict[str, object]]:
        """One row per manifest for an artifact table: used or excluded, and why."""
        rows = [{"dataset": r.name, "source": r.source, "split": r.split or "-", "samples": r.nsamples,
                 "training": "used", "why": "training split" if r.split else "no split recorded (synthetic or hand-made): trains",
                 "manifest": r.index_path} for r in self.used]
        rows += [{"dataset": r.name, "source": r.source, "split": r.split or "-", "samples": r.nsamples,
                  "training": "excluded", "why": why, "manifest": r.index_path} for r, why in self.excluded]
        return rows


def select_training(manifests: list[Path | str] | list[DatasetRef],
                    rules: SplitRules | None = None) -> SplitSelection:
    """Split ``manifests`` by ``rules`` (default data_specs/splits.yaml) into training and held-out datasets."""
    rules = rules or load_split_rules()
    refs = [m if isinstance(m, DatasetRef) else read_dataset_ref(m) for m in manifests]
    used, excluded = [], []
    for ref in refs:
        why = rules.verdict(ref.source, ref.split)
        if why is None:
            used.append(ref)
        else:
            excluded.append((ref, why))
    return SplitSelection(used, excluded)


@dataclass
class Leaf:
    """A leaf of the flattened mixture: its probability and the datasets it draws from (∝ nsamples)."""

    name: str
    prob: float
    datasets: list[DatasetRef] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(d.nsamples for d in self.datasets)


@dataclass
class Mixture:
    """The flattened mixture: leaves with probabilities summing to 1, and the datasets they read."""

    name: str
    seed: int
    leaves: list[Leaf]

    @property
    def datasets(self) -> list[DatasetRef]:
        return [d for leaf in self.leaves for d in leaf.datasets]

    def describe(self) -> list[dict[str, object]]:
        return [{"leaf": leaf.name, "prob": round(leaf.prob, 6), "samples": leaf.size,
                 "datasets": ", ".join(d.name for d in leaf.datasets)} for leaf in self.leaves]


def build_mixture(spec: MixtureSpec, manifests: list[Path | str], *, allow_missing: bool = False,
                  splits: SplitRules | None = None) -> Mixture:
    """Flatten ``spec`` over the given manifests.

    Only training splits take part: a manifest whose split ``splits`` (default data_specs/splits.yaml)
    holds out (val, test, dev, ...) is dropped with a warning naming it, so an evaluation split can
    never reach a training batch whatever the caller passes. A manifest without a recorded split is
    kept when its source allows ``"*"``.

    Each manifest joins the leaf that lists its ``provenance.source``. A leaf with no (or only empty)
    manifests is an error unless ``allow_missing``; then it is dropped and its siblings renormalised
    (a chain child's ``p`` becomes 0). Manifests that no leaf lists are ignored with a warning.
    """
    selection = select_training(manifests, splits)
    for ref, why in selection.excluded:
        log.warning("mixture %s: %s excluded from training: %s", spec.name, ref.index_path, why)
    refs = selection.used
    by_source: dict[str, list[DatasetRef]] = {}
    for ref in refs:
        by_source.setdefault(ref.source, []).append(ref)
    known = {s for leaf in spec.root.leaves() for s in leaf.sources or []}
    for source in sorted(set(by_source) - known):
        log.warning("mixture %s: manifests of source %r are not in the spec and are ignored: %s",
                    spec.name, source, [r.index_path for r in by_source[source]])

    leaf_data = {leaf.name: [r for s in leaf.sources or [] for r in by_source.get(s, []) if r.nsamples > 0]
                 for leaf in spec.root.leaves()}
    missing = [name for name, data in leaf_data.items() if not data]
    if missing and not allow_missing:
        raise ValueError(f"mixture {spec.name}: no samples for leaves {missing}; pass manifests of their sources "
                         f"or allow_missing=True to drop them and renormalise")
    for name in missing:
        log.warning("mixture %s: leaf %r has no data and is dropped", spec.name, name)

    def size(node: MixtureNode) -> int:
        return sum(r.nsamples for leaf in node.leaves() for r in leaf_data[leaf.name])

    def flatten(node: MixtureNode, mass: float, out: dict[str, float]) -> None:
        if node.children is None:
            out[node.name] = out.get(node.name, 0.0) + mass
            return
        live = [c for c in node.children if size(c) > 0]
        if node.select == "chain":
            remaining = mass
            for i, child in enumerate(live):
                last = i == len(live) - 1
                share = remaining if last else remaining * float(child.p if child.p is not None else 1.0)
                flatten(child, share, out)
                remaining -= share
        else:
            weights = np.array([size(c) if c.weight == "size" else float(c.weight) for c in live], dtype=np.float64)
            if weights.sum() <= 0:
                raise ValueError(f"mixture {spec.name}: node {node.name!r} has zero total weight")
            for child, w in zip(live, weights / weights.sum()):
                flatten(child, mass * float(w), out)

    if size(spec.root) == 0:
        raise ValueError(f"mixture {spec.name}: none of the manifests {[str(m) for m in manifests]} feeds any leaf")
    probs: dict[str, float] = {}
    flatten(spec.root, 1.0, probs)
    leaves = [Leaf(leaf.name, probs[leaf.name], leaf_data[leaf.name]) for leaf in spec.root.leaves() if leaf.name in probs]
    return Mixture(spec.name, spec.seed, leaves)


def uniform_mixture(manifests: list[Path | str], *, name: str = "uniform", seed: int = 0) -> Mixture:
    """Every manifest in one leaf, drawn ∝ size (stage 1: caption text)."""
    refs = [r for r in (read_dataset_ref(m) for m in manifests) if r.nsamples > 0]
    if not refs:
        raise ValueError(f"no samples in manifests {[str(m) for m in manifests]}")
    return Mixture(name, seed, [Leaf(name, 1.0, refs)])


@dataclass(frozen=True)
class Draw:
    """One draw: which dataset (index into ``Mixture.datasets``), which sample in it, and a seed for rendering."""

    draw_index: int
    leaf: str
    dataset: int
    sample: int
    render_seed: int


class MixtureSampler:
    """Per-rank, counter-keyed draws: ``draw(i)`` depends only on (mixture seed, seed offset, rank, i)."""

    def __init__(self, mixture: Mixture, *, rank: int = 0, seed: int | None = None):
        self.mixture = mixture
        self.rank = rank
        self.seed = mixture.seed if seed is None else seed
        self._leaf_p = np.array([leaf.prob for leaf in mixture.leaves], dtype=np.float64)
        self._leaf_p /= self._leaf_p.sum()
        offsets = np.cumsum([0] + [len(leaf.datasets) for leaf in mixture.leaves])
        self._leaf_offset = offsets[:-1]
        self._data_p = []
        for leaf in mixture.leaves:
            sizes = np.array([d.nsamples for d in leaf.datasets], dtype=np.float64)
            self._data_p.append(sizes / sizes.sum())

    def draw(self, draw_index: int) -> Draw:
        """Draw ``draw_index`` of this rank."""
        key = [self.seed, self.rank, draw_index]
        rng = np.random.default_rng(key)
        li = int(rng.choice(len(self._leaf_p), p=self._leaf_p))
        leaf = self.mixture.leaves[li]
        di = int(rng.choice(len(leaf.datasets), p=self._data_p[li]))
        sample = int(rng.integers(leaf.datasets[di].nsamples))
        return Draw(draw_index, leaf.name, int(self._leaf_offset[li]) + di, sample, int(rng.integers(2**62)))
