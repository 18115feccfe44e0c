"""COCO-Stuff 164k label maps (kind ``seg_labelmap``).

Layout: ``<root>/stuffthingmaps_trainval2017/{train2017,val2017}/<12-digit id>.png`` (8-bit label
maps, value v = class id v+1 of ``labels.txt``, 255 = unlabeled), ``<root>/labels.txt``, images in
the COCO image directory ``<images>/<split>/<id>.jpg``. The label PNG is passed through unchanged
unless the LISA dash remap is asked for (then it is re-encoded and the json says so).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Sample
from pipeline.sources.base import BaseReader, process_cached
from pipeline.sources.images import DEFAULT_MAX_PIXELS, RejectError, decode_pil, encode_gray_png, read_image, resolve_inside

UNLABELED = 255
MAPS_DIRNAME = "stuffthingmaps_trainval2017"

# labels.txt of the official release (id: name, id = label value + 1, 0 = unlabeled); used when the
# root has no labels.txt. Thing ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91 never occur in the maps.
BUILTIN_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)
_LABEL_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def parse_labels(text: str, name: str = "labels.txt") -> dict[int, str]:
    """``labels.txt`` ("<id>: <name>" per line, 0 = unlabeled) → {label value (id − 1): name}."""
    names: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LABEL_LINE.match(line)
        if not m:
            raise ValueError(f"{name}:{lineno}: expected '<id>: <name>', got {line!r}")
        class_id, label = int(m.group(1)), m.group(2)
        if class_id == 0:
            continue  # "unlabeled" is value 255 in the maps, not value -1
        names[class_id - 1] = label
    return names


def dash_values(names: dict[int, str]) -> list[int]:
    """Label values whose class name contains '-' (LISA maps them to 255)."""
    return sorted(v for v, n in names.items() if "-" in n)


class CocoStuffReader(BaseReader):
    """One sample per label map of a split.

    images: COCO image directory holding ``<split>/<id>.jpg`` (default: ``<root>/../coco``, the
      sample-data layout, else ``<root>/images``).
    labels: labels.txt path (default ``<root>/labels.txt``, else the built-in table).
    lisa_dash_remap: map every class whose name contains '-' to 255, as LISA does (re-encodes the PNG).
    """

    source = "cocostuff"

    def __init__(
        self,
        root: Path | str,
        split: str,
        *,
        images: Path | str | None = None,
        labels: Path | str | None = None,
        lisa_dash_remap: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(root, split, max_pixels=max_pixels)
        self.images = Path(images).resolve() if images else self._default_images()
        self.labels = Path(labels).resolve() if labels else None
        self.lisa_dash_remap = bool(lisa_dash_remap)

    def _default_images(self) -> Path:
        for candidate in (self.root.parent / "coco", self.root / "images", self.root / "dataset" / "images"):
            if (candidate / self.split).is_dir():
                return candidate.resolve()
        return (self.root.parent / "coco").resolve()

    def options(self) -> dict[str, Any]:
        return {**super().options(), "images": str(self.images), "labels": str(self.labels or ""),
                "lisa_dash_remap": self.lisa_dash_remap}

    @functools.cached_property
    def maps_dir(self) -> Path:
        for candidate in (self.root / MAPS_DIRNAME, self.root / "annotations" / MAPS_DIRNAME, self.root / "dataset" / "annotations" / MAPS_DIRNAME):
            if candidate.is_dir():
                return candidate / self.split
        return self.root / MAPS_DIRNAME / self.split

    def class_names(self) -> dict[int, str]:
        path = self.labels or self.root / "labels.txt"
        if path.exists():
            return process_cached(("labels", str(path)), lambda: parse_labels(path.read_text(encoding="utf-8"), str(path)))
        return dict(enumerate(BUILTIN_LABELS))

    def _list_records(self) -> list[str]:
        maps = self.maps_dir
        if not maps.is_dir():
            raise FileNotFoundError(f"{maps}: no label-map directory; expected {self.root}/{MAPS_DIRNAME}/{self.split}/*.png")
        return sorted(p.name for p in maps.iterdir() if p.suffix == ".png")

    def location(self, index: int, record: str) -> str:
        return str(self.maps_dir / record)

    def _read(self, index: int, record: str) -> Sample:
        stem = record[: -len(".png")]
        map_path = resolve_inside(self.root, self.maps_dir.relative_to(self.root) / record)
        image = read_image(self.images, Path(self.split) / f"{stem}.jpg", max_pixels=self.max_pixels)
        data = map_path.read_bytes()
        label_img = decode_pil(data, str(map_path), max_pixels=self.max_pixels, modes=("L", "P"))
        if label_img.size != image.size:
            raise RejectError(
                "size_mismatch",
                f"{map_path}: label map is {label_img.width}x{label_img.height}, image {image.width}x{image.height}",
            )
        names = self.class_names()
        extra: dict[str, Any] = {}
        # PIL's C histogram of the stored values: the classes present without a numpy copy of the map
        counts = label_img.histogram()[:256]
        if self.lisa_dash_remap:
            remap = dash_values(names)
            labels = np.asarray(label_img)
            labels = np.where(np.isin(labels, remap), np.uint8(UNLABELED), labels)
            data = encode_gray_png(labels)
            counts = np.bincount(labels.ravel(), minlength=256).tolist()
            extra = {"lisa_dash_remap": True, "remapped_values": remap, "seg_reencoded": True}
        present = [v for v, c in enumerate(counts) if c and v != UNLABELED]
        unknown = [v for v in present if v not in names]
        if unknown:
            raise RejectError("unknown_class", f"{map_path}: label values {unknown} are not in the class table")
        meta = self.meta(
            "seg_labelmap", record, image_id=stem,
            classes=[{"id": v, "name": names[v]} for v in present], **self.image_fields(image), **extra,
        )
        return Sample(self.key(index, stem), meta, {image.ext: image.data, "seg.png": data})

    @classmethod
    def available_splits(cls, root: Path | str, **options: Any) -> list[str]:
        root = Path(root)
        out = []
        for split in cls.source_spec().splits():
            if any((base / MAPS_DIRNAME / split).is_dir() for base in (root, root / "annotations", root / "dataset" / "annotations")):
                out.append(split)
        return out
