"""Scene analysis: per image, its objects (mask, box, area, centroid, dominant colour, category) and mirrors.

Input is COCO instance annotations (official `instances_<split>.json` + image folder). COCO has no mirror
category, so mirror regions come from configured category names and from a ground-truth `scenes.json`
(the sample data's: per image `mirrors: [{bbox}]`). An object whose box lies inside a mirror region is
a reflection (`in_mirror`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.colour_naming import ColourTable
from pipeline.synthetic.stages import Stage

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # COCO x, y, w, h in pixels


@dataclass(frozen=True)
class CocoSplit:
    """One annotation file and the folder holding its images."""

    annotations: Path
    images: Path
    split: str


@dataclass(frozen=True)
class ImageRecord:
    split: str
    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    annotations: Path  # the file it came from (to find the index again in a worker)

    @property
    def location(self) -> str:
        return f"{self.split}/{self.file_name}"


@dataclass
class SceneObject:
    ann_id: int
    category: str
    category_id: int
    bbox: Box
    area: int  # mask pixels
    centroid: tuple[float, float]  # mask centre of mass (x, y)
    colour: str | None  # dominant colour name, None when no name has colour_min_share of the pixels
    colour_share: float
    in_mirror: bool
    crowd: bool


@dataclass
class Scene:
    record: ImageRecord
    objects: list[SceneObject]
    mirrors: list[Box] = field(default_factory=list)

    def by_category(self, *, include_reflections: bool = False) -> dict[str, list[SceneObject]]:
        groups: dict[str, list[SceneObject]] = {}
        for obj in self.objects:
            if obj.in_mirror and not include_reflections:
                continue
            groups.setdefault(obj.category, []).append(obj)
        return dict(sorted(groups.items()))

    def crowded(self) -> set[str]:
        """Categories with a crowd annotation: their instances cannot be counted or ordered reliably."""
        return {o.category for o in self.objects if o.crowd}


def resolve_inputs(input_path: str | Path, images: str | Path | None = None,
                   splits: Iterable[str] | None = None) -> tuple[list[CocoSplit], Path | None]:
    """Sample-data directory (``coco/annotations/instances_*.json`` + ``scenes.json``) or one COCO JSON.

    Returns the splits and the ground-truth scenes.json when there is one.
    """
    path = Path(input_path)
    wanted = set(splits or ())
    scenes = None
    if path.is_dir():
        ann_dir = path / "coco" / "annotations" if (path / "coco").is_dir() else path / "annotations"
        files = sorted(ann_dir.glob("instances_*.json"))
        if not files:
            raise FileNotFoundError(
                f"{path}: no coco/annotations/instances_*.json or annotations/instances_*.json; "
                "pass a sample-data directory or a COCO annotation JSON with --images"
            )
        root = Path(images) if images else ann_dir.parent
        out = [CocoSplit(f, root / f.stem.removeprefix("instances_"), f.stem.removeprefix("instances_")) for f in files]
        if (path / "scenes.json").exists():
            scenes = path / "scenes.json"
    elif path.is_file():
        split = path.stem.removeprefix("instances_")
        image_dir = Path(images) if images else path.parent.parent / split
        out = [CocoSplit(path, image_dir, split)]
    else:
        raise FileNotFoundError(f"{path}: input not found; expected a sample-data directory or a COCO annotation JSON")
    if wanted:
        out = [s for s in out if s.split in wanted]
        if not out:
            raise ValueError(f"{path}: none of the splits {sorted(wanted)} found")
    for s in out:
        if not s.images.is_dir():
            raise FileNotFoundError(f"{s.annotations}: image folder {s.images} not found; pass it with --images")
    return out, scenes


class CocoIndex:
    """One annotation file, indexed by image; decodes masks on demand (polygons, RLE) with pycocotools."""

    def __init__(self, split: CocoSplit, mirror_categories: Iterable[str] = ("mirror",), scenes: Path | None = None):
        self.split = split
        doc = json.loads(Path(split.annotations).read_text())
        for fld in ("images", "annotations", "categories"):
            if fld not in doc:
                raise ValueError(f"{split.annotations}: missing field {fld!r}; is this a COCO instances file?")
        self.categories = {c["id"]: c["name"] for c in doc["categories"]}
        self.mirror_categories = set(mirror_categories)
        self.images = {im["id"]: im for im in doc["images"]}
        self.anns: dict[int, list[dict[str, Any]]] = {}
        for ann in doc["annotations"]:
            self.anns.setdefault(ann["image_id"], []).append(ann)
        self.by_ann_id = {a["id"]: a for a in doc["annotations"]}
        self.gt_mirrors: dict[str, list[Box]] = {}
        if scenes is not None:
            gt = json.loads(Path(scenes).read_text())
            items = gt.values() if isinstance(gt, dict) else gt
            for scene in items:
                boxes = [tuple(m["bbox"]) for m in scene.get("mirrors") or ()]
                if boxes:
                    self.gt_mirrors[scene["file_name"]] = boxes

    def records(self) -> list[ImageRecord]:
        return [
            ImageRecord(self.split.split, im["id"], im["file_name"], self.split.images / im["file_name"],
                        int(im["width"]), int(im["height"]), self.split.annotations)
            for _, im in sorted(self.images.items())
        ]

    def mask(self, ann: dict[str, Any]) -> np.ndarray:
        """(H, W) bool mask of one annotation (polygon parts unioned)."""
        from pycocotools import mask as mask_utils

        image = self.images[ann["image_id"]]
        h, w = int(image["height"]), int(image["width"])
        segm = ann.get("segmentation")
        if isinstance(segm, list):
            rles = mask_utils.frPyObjects(segm, h, w)
            rle = mask_utils.merge(rles)
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, h, w)
        elif isinstance(segm, dict):
            rle = dict(segm)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise ValueError(f"{self.split.annotations}: annotation {ann.get('id')} has no usable 'segmentation'")
        return mask_utils.decode(rle).astype(bool)


@functools.lru_cache(maxsize=8)
def load_index(annotations: str, images: str, split: str, mirror_categories: tuple[str, ...],
               scenes: str | None) -> CocoIndex:
    """One parsed index per process and annotation file (shard workers reuse it)."""
    return CocoIndex(CocoSplit(Path(annotations), Path(images), split), mirror_categories,
                     Path(scenes) if scenes else None)


def box_inside(inner: Box, outer: Box, tol: float = 1.0) -> bool:
    x, y, w, h = inner
    X, Y, W, H = outer
    return x >= X - tol and y >= Y - tol and x + w <= X + W + tol and y + h <= Y + H + tol


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 in the displayed orientation (EXIF Orientation applied; grayscale/CMYK → RGB).

    The sample data's COCO files give width/height and geometry in the displayed orientation, as
    detectron2-style loaders read COCO; `SceneAnalysis` checks the size against the annotation, so an
    annotation file made on the stored grid of a rotated JPEG fails loudly (size_mismatch) instead of
    producing misplaced masks.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


class SceneAnalysis(Stage):
    """ImageRecord → Scene (objects with masks measured and colours named), or a Reject.

    indexes: annotation file path (str) → its CocoIndex. An annotation of an unknown category is a
    Reject of its own while the scene goes on, so one record may give several items.
    """

    name = "scene_analysis"
    fan_out = True

    def __init__(self, indexes: dict[str, CocoIndex], colours: ColourTable, colour_min_share: float,
                 stuff_root: str | None = None):
        self.indexes, self.colours, self.colour_min_share = indexes, colours, colour_min_share
        self.stuff_root = stuff_root  # COCO-Stuff: mirror-stuff regions are mirrors (pipeline/synthetic/mirror_stuff.py)

    def process(self, record: ImageRecord) -> Iterator[Scene | Reject]:
        index = self.indexes[str(record.annotations)]
        if not record.path.exists():
            yield Reject(record.location, "image_missing", f"{record.path} not found")
            return
        try:
            rgb = read_rgb(record.path)
        except OSError as err:
            yield Reject(record.location, "image_unreadable", f"{record.path}: {err}")
            return
        if rgb.shape[:2] != (record.height, record.width):
            yield Reject(record.location, "size_mismatch",
                         f"{record.path} is {rgb.shape[1]}x{rgb.shape[0]}, annotations say {record.width}x{record.height}")
            return
        # A grayscale photo (COCO has some) shows no hue: naming colours there would call yellow "white".
        achromatic = int(np.ptp(rgb.astype(np.int16), axis=-1).max()) <= 2
        mirrors = list(index.gt_mirrors.get(record.file_name, ()))
        if self.stuff_root:
            from pipeline.synthetic.mirror_stuff import mirror_boxes

            mirrors += mirror_boxes(self.stuff_root, record.split, record.file_name) or []
        objects = []
        for ann in sorted(index.anns.get(record.image_id, ()), key=lambda a: a["id"]):
            category = index.categories.get(ann["category_id"])
            if category is None:
                yield Reject(f"{record.location}#{ann['id']}", "unknown_category",
                             f"category_id {ann['category_id']} is not in {record.annotations} categories")
                continue
            if category in index.mirror_categories:
                mirrors.append(tuple(float(v) for v in ann["bbox"]))
                continue
            mask = index.mask(ann)
            area = int(mask.sum())
            if area == 0:
                continue  # degenerate polygon: nothing to edit or to count
            ys, xs = np.nonzero(mask)
            name, share = (None, 0.0) if achromatic else self.colours.name_pixels(rgb[mask])
            objects.append(SceneObject(
                ann_id=int(ann["id"]), category=category, category_id=int(ann["category_id"]),
                bbox=tuple(float(v) for v in ann["bbox"]), area=area,
                centroid=(float(xs.mean()), float(ys.mean())),
                colour=name if name and share >= self.colour_min_share else None, colour_share=round(share, 4),
                in_mirror=False, crowd=bool(ann.get("iscrowd", 0)),
            ))
        for obj in objects:
            obj.in_mirror = any(box_inside(obj.bbox, m) for m in mirrors)
        if not objects:
            yield Reject(record.location, "no_objects", "no annotated objects with a non-empty mask")
            return
        yield Scene(record, objects, mirrors)
