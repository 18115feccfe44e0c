"""Small, seeded sample datasets in the official on-disk layouts (no real dataset can be downloaded here).

`make_samples(out_dir, seed)` renders scenes with exact ground truth and writes COCO 2017,
COCO-Stuff, RefCOCO/+/g, gRefCOCO, LLaVA-Instruct-150k, ReasonSeg, InstructPix2Pix (folder and
parquet), MagicBrush (current and legacy parquet) and Reason-Edit under out_dir, plus
``scenes.json`` (per-image ground truth) and ``samples.json`` (layout, record counts, quirks).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.samples.sampleset import LAYOUT, SampleSet

__all__ = ["LAYOUT", "SampleSet", "make_samples"]


def make_samples(out_dir: str | Path, seed: int = 0) -> SampleSet:
    """Write every sample dataset under out_dir; the same seed gives byte-identical files."""
    # Imported here so that `smartedit --help` does not load numpy, PIL, pycocotools and pyarrow.
    from pipeline.samples.make import make_samples as _make

    return _make(out_dir, seed)
