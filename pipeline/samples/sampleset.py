"""`SampleSet`: where `make_samples` wrote each dataset, and how many records each holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Roots under out_dir, in the official layouts (converters look here).
LAYOUT: dict[str, str] = {
    "coco": "coco",
    "cocostuff": "cocostuff",
    "refer": "refer",
    "grefcoco": "refer/grefcoco",
    "llava": "llava",
    "reasonseg": "ReasonSeg",
    "instructpix2pix_folder": "instructpix2pix/folder",
    "instructpix2pix_parquet": "instructpix2pix/parquet",
    "magicbrush": "magicbrush",
    "reason_edit": "reason_edit",
    # The refer datasets' instances.json file names resolve in this directory.
    "refer_images": "coco/train2017",
}


@dataclass
class SampleSet:
    """The generated sample datasets.

    root: out_dir. Each path field is the root of one dataset's official layout.
    counts: {source: {split: number of records}}; a record is what a converter turns into one
      sample: an image (coco, cocostuff), a ref (refer, grefcoco), a conversation (llava), an item
      (reasonseg, reason_edit), a seed / row (instructpix2pix), a turn (magicbrush).
    sentences: {refer source: {split: number of sentences}} (converters may emit one sample per sentence).
    quirks: which files carry real-world quirks (EXIF orientation, grayscale, CMYK, cp1252 json, ...).
    """

    root: Path
    coco: Path
    cocostuff: Path
    refer: Path
    grefcoco: Path
    llava: Path
    reasonseg: Path
    instructpix2pix_folder: Path
    instructpix2pix_parquet: Path
    magicbrush: Path
    reason_edit: Path
    refer_images: Path
    scenes_json: Path
    samples_json: Path
    seed: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    sentences: dict[str, dict[str, int]] = field(default_factory=dict)
    quirks: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def at(cls, root: Path, **kwargs: Any) -> "SampleSet":
        root = Path(root)
        return cls(root=root, scenes_json=root / "scenes.json", samples_json=root / "samples.json",
                   **{name: root / rel for name, rel in LAYOUT.items()}, **kwargs)
