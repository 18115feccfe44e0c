"""The per-source spec files (data_specs/sources/<source>.yaml), validated by a pydantic model.

A spec says what a source is (kind, licence, citation, homepage), how it lies on disk, which splits
it has, and how many records the real release holds per split, so a conversion of the full data
can be checked against the published counts.

Usage: python -c "from pipeline.sources.spec import load_spec; print(load_spec('refcoco'))"
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_specs import spec_path as _spec_file
from pipeline.schema import load_schemas

SOURCES_SPEC_DIR = _spec_file("sources")


class SourceSpec(BaseModel):
    """One source dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Source name as the CLI and the sample json's `source` field spell it (refcoco+, llava-instruct, ...)."""
    title: str
    kind: str
    """Sample kind written, a key of data_specs/schemas.yaml `kinds`."""
    homepage: str = Field(pattern=r"^https?://")
    licence: str
    citation: str
    """BibTeX of the paper(s) to cite."""
    layout: str
    """The official on-disk layout the reader expects (relative to --root), as text."""
    sample_unit: str
    """What one sample is (one image, one ref with all its sentences, one edit turn, ...)."""
    variants: dict[str, list[str]]
    """Split-scheme variant → split names (refcocog: umd, google; most sources: just `default`)."""
    default_variant: str = "default"
    expected_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Split (or `total`) → {unit: count} in the real release, e.g. {train2017: {images: 118287}}."""
    count_sources: list[str] = Field(default_factory=list)
    """Where the expected counts were checked (URLs, papers)."""
    notes: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> "SourceSpec":
        kinds = load_schemas()
        if self.kind not in kinds:
            raise ValueError(f"kind {self.kind!r} is not in data_specs/schemas.yaml (one of {sorted(kinds)})")
        if self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not a key of variants {sorted(self.variants)}")
        known = {s for splits in self.variants.values() for s in splits} | {"total"}
        known |= {f"{v}/{s}" for v, splits in self.variants.items() for s in splits} | {f"{v}/total" for v in self.variants}
        unknown = set(self.expected_counts) - known
        if unknown:
            raise ValueError(f"expected_counts names unknown splits {sorted(unknown)}; splits are {sorted(known)}")
        for split, counts in self.expected_counts.items():
            bad = {unit: n for unit, n in counts.items() if n < 0}
            if bad:
                raise ValueError(f"expected_counts[{split!r}] has negative counts {bad}")
        return self

    def splits(self, variant: str | None = None) -> list[str]:
        """Split names of ``variant`` (default variant when None)."""
        variant = variant or self.default_variant
        if variant not in self.variants:
            raise ValueError(f"{self.name}: unknown variant {variant!r}; expected one of {sorted(self.variants)}")
        return list(self.variants[variant])


def spec_path(source: str) -> Path:
    return SOURCES_SPEC_DIR / f"{source}.yaml"


@functools.cache
def load_spec(source: str) -> SourceSpec:
    """Load and validate data_specs/sources/<source>.yaml; the file stem must equal its `name`."""
    path = spec_path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no spec for source {source!r} (specs: {sorted(all_spec_names())})")
    spec = SourceSpec.model_validate(yaml.safe_load(path.read_text()))
    if spec.name != source:
        raise ValueError(f"{path}: field 'name' is {spec.name!r}; it must equal the file stem {source!r}")
    return spec


def all_spec_names() -> list[str]:
    return sorted(p.stem for p in SOURCES_SPEC_DIR.glob("*.yaml"))
