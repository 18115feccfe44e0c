"""Source readers: one per dataset, all implementing `pipeline.convert.SourceReader`.

    from pipeline.sources import get_reader, convert_source
    reader = get_reader("refcoco", "/data/refer", "train", images="/data/coco/train2014")
    manifests = convert_source("refcoco", "/data/refer", "/data/shards", workers=2)

Readers are imported on first use, so importing this package stays cheap for the CLI and flows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.storage import as_path
from pipeline.vocabulary import SOURCES as VOCABULARY_SOURCES

# source name → "module:class"; the names are the CLI's SOURCE choices and the json `source` field.
_READERS: dict[str, str] = {
    "cocostuff": "pipeline.sources.cocostuff:CocoStuffReader",
    "refcoco": "pipeline.sources.refcoco:RefCocoReader",
    "refcoco+": "pipeline.sources.refcoco:RefCocoPlusReader",
    "refcocog": "pipeline.sources.refcoco:RefCocoGReader",
    "grefcoco": "pipeline.sources.grefcoco:GRefCocoReader",
    "reasonseg": "pipeline.sources.reasonseg:ReasonSegReader",
    "llava-instruct": "pipeline.sources.llava_instruct:LlavaInstructReader",
    "instructpix2pix": "pipeline.sources.instructpix2pix:InstructPix2PixReader",
    "magicbrush": "pipeline.sources.magicbrush:MagicBrushReader",
}
SOURCES: tuple[str, ...] = VOCABULARY_SOURCES  # one reader per source name of the vocabulary (a test checks)


def reader_class(source: str) -> type:
    if source not in _READERS:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    module, _, name = _READERS[source].partition(":")
    return getattr(importlib.import_module(module), name)


def get_reader(source: str, root: Path | str, split: str, **options: Any):
    """A reader for ``split`` of ``source`` under ``root``; ``options`` are the reader's keyword options
    (images, split_by, max_pixels, lisa_dash_remap, form, ...; see each reader's docstring).
    Options a reader does not take are an error naming the ones it does."""
    cls = reader_class(source)
    try:
        return cls(root, split, **options)
    except TypeError as err:
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "split")]
        raise ValueError(f"{source}: {err}; options accepted: {accepted}") from None


def available_splits(source: str, root: Path | str, **options: Any) -> list[str]:
    """Splits of ``source`` whose files are present under ``root`` (the spec's splits for refer-style sources)."""
    return reader_class(source).available_splits(root, **options)


def convert_source(
    source: str,
    root: Path | str,
    out: Path | str,
    *,
    splits: list[str] | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Convert ``splits`` (all present when None) of ``source`` to ``out/<source>/<split>/``; return {split: manifest}."""
    from pipeline.convert import convert

    splits = splits or available_splits(source, root, **options)
    if not splits:
        hint = reader_class(source).layouts_hint(root) if hasattr(reader_class(source), "layouts_hint") else ""
        raise FileNotFoundError(f"{root}: no split of {source!r} found; check --root against "
                                f"data_specs/sources/{source}.yaml{hint}")
    manifests = {}
    for split in splits:
        reader = get_reader(source, root, split, **options)
        dataset_dir = as_path(out) / reader.dataset_name / split  # local, file:// or s3://
        callback = (lambda done, total, _s=split: progress(_s, done, total)) if progress else None
        manifests[split] = convert(reader, dataset_dir, shard_size=shard_size, workers=workers, overwrite=overwrite,
                                   progress=callback)
    return manifests
