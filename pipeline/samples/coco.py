"""COCO 2017 instances: ``coco/{train2017,val2017}/<12-digit id>.jpg`` and ``coco/annotations/instances_*.json``.

The annotation files follow the official schema (info, licenses, images, annotations, categories
with the real 80 categories). Object polygons are the rendered silhouettes; crowds are iscrowd=1
annotations in uncompressed RLE, as COCO writes them. A few images carry the quirks of the real
set: EXIF-rotated storage (width/height and annotations are in the displayed orientation),
a grayscale JPEG and a CMYK JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples.categories import coco_categories_json
from pipeline.samples.quirks import jpeg_bytes, write_bytes, write_json
from pipeline.samples.scenes import RenderedScene, mask_bbox, plan_scene, render, scene_truth

SPLITS = ("train2017", "val2017")
SIZES = ((640, 480), (640, 427), (500, 375), (480, 640), (427, 640), (320, 240), (512, 384))
TRAIN_KINDS = ["multi"] * 6 + ["colours"] * 5 + ["mixed"] * 6 + ["mirror"] * 2 + ["crowd"] * 2 + ["people"] * 3
VAL_KINDS = ["multi"] * 2 + ["colours"] * 2 + ["mixed"] * 2 + ["mirror", "crowd"]
# Which images get a quirk: (split, position in that split) → (EXIF orientation, JPEG mode).
QUIRKS: dict[tuple[str, int], tuple[int | None, str]] = {
    ("train2017", 1): (6, "RGB"),
    ("train2017", 5): (8, "RGB"),
    ("val2017", 2): (3, "RGB"),
    ("train2017", 9): (None, "L"),
    ("train2017", 13): (None, "CMYK"),
}
LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
     "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2, "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
]
INFO = {"description": "COCO 2017 Dataset (SmartEdit synthetic sample)", "url": "http://cocodataset.org",
        "version": "1.0", "year": 2017, "contributor": "COCO Consortium", "date_created": "2017/09/01"}


@dataclass
class CocoImage:
    """A rendered COCO image: id, split, scene and how it is stored (orientation tag, JPEG mode)."""

    image_id: int
    split: str
    rendered: RenderedScene
    orientation: int | None = None
    mode: str = "RGB"
    date_captured: str = "2013-11-14 11:18:45"
    license: int = 1

    @property
    def file_name(self) -> str:
        return f"{self.image_id:012d}.jpg"

    @property
    def scene(self):
        return self.rendered.scene


def build_images(rng: np.random.Generator) -> list[CocoImage]:
    """Plan and render every COCO image; assign image ids and annotation ids (crowds get COCO's 9001… ids)."""
    n_total = len(TRAIN_KINDS) + len(VAL_KINDS)
    ids = sorted(int(i) for i in rng.choice(np.arange(1, 581930), size=n_total, replace=False))
    rng.shuffle(ids)
    next_ann = int(rng.integers(100_000, 900_000))
    images = []
    for split, kinds in (("train2017", TRAIN_KINDS), ("val2017", VAL_KINDS)):
        for pos, kind in enumerate(rng.permutation(kinds)):
            width, height = SIZES[int(rng.integers(len(SIZES)))]
            if kind == "mirror":
                width, height = max(width, height), min(width, height)  # mirrors need a landscape frame
            image_id = ids.pop()
            scene = plan_scene(rng, width, height, str(kind))
            for obj in scene.objects:
                if obj.crowd:
                    obj.ann_id = 900_100_000_000 + image_id
                else:
                    obj.ann_id = next_ann
                    next_ann += int(rng.integers(1, 40))
            orientation, mode = QUIRKS.get((split, pos), (None, "RGB"))
            captured = f"2013-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d} " \
                       f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}:{int(rng.integers(60)):02d}"
            images.append(CocoImage(image_id, split, render(scene), orientation, mode, captured,
                                    int(rng.choice([1, 2, 4]))))
    return images


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's iscrowd segmentation: {"counts": [run lengths, column-major, starting with zeros], "size": [h, w]}.

    pycocotools only writes compressed RLE strings; the official crowd annotations use this list form.
    """
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def image_json(img: CocoImage) -> dict[str, Any]:
    return {
        "license": img.license, "file_name": img.file_name,
        "coco_url": f"http://images.cocodataset.org/{img.split}/{img.file_name}",
        "height": img.scene.height, "width": img.scene.width, "date_captured": img.date_captured,
        "flickr_url": f"http://farm{img.image_id % 9 + 1}.staticflickr.com/{img.image_id}.jpg", "id": img.image_id,
    }


def annotations_json(img: CocoImage) -> list[dict[str, Any]]:
    out = []
    for obj, mask in zip(img.scene.objects, img.rendered.masks):
        seg: Any = uncompressed_rle(mask) if obj.crowd else obj.polygons()
        out.append({"segmentation": seg, "area": float(mask.sum()), "iscrowd": int(obj.crowd),
                    "image_id": img.image_id, "bbox": mask_bbox(mask), "category_id": obj.category_id, "id": obj.ann_id})
    return out


def instances_json(images: list[CocoImage], description: str | None = None) -> dict[str, Any]:
    """A COCO instances document over `images` (all their annotations)."""
    info = dict(INFO, description=description) if description else INFO
    return {
        "info": info, "licenses": LICENSES, "images": [image_json(i) for i in images],
        "annotations": [a for i in images for a in annotations_json(i)], "categories": coco_categories_json(),
    }


def write(root: Path, images: list[CocoImage]) -> dict[str, Any]:
    """Write JPEGs and annotation files under `root` (= out_dir/coco); returns counts and the quirk list."""
    quirks: dict[str, Any] = {"exif_orientation": {}, "grayscale": [], "cmyk": []}
    for img in images:
        rel = f"{img.split}/{img.file_name}"
        mode = None if img.mode == "RGB" else img.mode
        write_bytes(root / rel, jpeg_bytes(img.rendered.image, orientation=img.orientation, mode=mode))
        if img.orientation:
            quirks["exif_orientation"][f"coco/{rel}"] = img.orientation
        if img.mode == "L":
            quirks["grayscale"].append(f"coco/{rel}")
        if img.mode == "CMYK":
            quirks["cmyk"].append(f"coco/{rel}")
    counts: dict[str, dict[str, int]] = {"coco": {}, "coco_annotations": {}}
    for split in SPLITS:
        subset = [i for i in images if i.split == split]
        doc = instances_json(subset)
        write_json(root / "annotations" / f"instances_{split}.json", doc)
        counts["coco"][split] = len(subset)
        counts["coco_annotations"][split] = len(doc["annotations"])
    return {"counts": counts, "quirks": quirks}


def truth(img: CocoImage) -> dict[str, Any]:
    """The scenes.json record of a COCO image."""
    return {"source": "coco", "split": img.split, "file_name": img.file_name, "path": f"coco/{img.split}/{img.file_name}",
            "image_id": img.image_id, "exif_orientation": img.orientation, "image_mode": img.mode,
            **scene_truth(img.rendered)}


def displayed_rgb(img: CocoImage, image) -> "np.ndarray":
    """A rendered PIL image as the COCO file shows it once decoded (grayscale / CMYK quirks applied): (H, W, 3) uint8."""
    if img.mode == "L":
        image = image.convert("L")
    elif img.mode == "CMYK":
        image = image.convert("CMYK")
    return np.asarray(image.convert("RGB"))
