"""Mirrors on real photos: COCO never annotates "mirror" as an object, but COCO-Stuff labels mirror regions
(`mirror-stuff`). Each connected region of that label in an image's label map becomes a mirror box; objects
whose box lies inside one are reflections (never ordinary objects) and make the mirror scenario.

Layout read: ``<stuff root>/stuffthingmaps_trainval2017/<split>/<12-digit id>.png`` and
``<stuff root>/labels.txt`` (else the official table), as `pipeline.sources.cocostuff` reads them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pipeline.sources.cocostuff import BUILTIN_LABELS, MAPS_DIRNAME, parse_labels

MIRROR_STUFF = "mirror-stuff"
MIN_REGION = 0.002  # regions under this share of the image are label noise, not mirrors


@functools.cache
def mirror_value(stuff_root: str) -> int:
    """The label value of mirror-stuff (labels.txt id − 1; 132 in the official release)."""
    labels = Path(stuff_root) / "labels.txt"
    names = parse_labels(labels.read_text(), str(labels)) if labels.exists() else dict(enumerate(BUILTIN_LABELS))
    for value, name in names.items():
        if name == MIRROR_STUFF:
            return value
    raise ValueError(f"{labels}: no {MIRROR_STUFF!r} class; is this a COCO-Stuff labels.txt?")


def label_map_path(stuff_root: str | Path, split: str, file_name: str) -> Path:
    return Path(stuff_root) / MAPS_DIRNAME / split / (Path(file_name).stem + ".png")


def mirror_boxes(stuff_root: str | Path, split: str, file_name: str) -> list[tuple[float, float, float, float]] | None:
    """COCO boxes (x, y, w, h) of the image's mirror-stuff regions; None when it has no label map."""
    from PIL import Image
    from scipy.ndimage import find_objects, label

    path = label_map_path(stuff_root, split, file_name)
    if not path.exists():
        return None
    with Image.open(path) as im:
        labels = np.asarray(im)
    regions, _ = label(labels == mirror_value(str(stuff_root)))
    boxes = []
    for i, sl in enumerate(find_objects(regions), start=1):
        if sl is None or (regions[sl] == i).sum() < MIN_REGION * labels.size:
            continue
        ys, xs = sl
        boxes.append((float(xs.start), float(ys.start), float(xs.stop - xs.start), float(ys.stop - ys.start)))
    return boxes
