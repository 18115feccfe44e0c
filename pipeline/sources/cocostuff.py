"""COCO-Stuff 164k label maps (kind ``seg_labelmap``).

Label maps (8-bit PNG, value v = class id v+1 of ``labels.txt``, 255 = unlabeled) are found in any
of the layouts users have (`MAP_LAYOUTS`, tried in order; an error lists them all when none matches):
``<root>/stuffthingmaps_trainval2017/<split>/`` (the zip extracted into its own folder, also under
``annotations/``), ``<root>/<split>/`` (the official ``stuffthingmaps_trainval2017.zip`` extracted in
place: it holds ``train2017/`` and ``val2017/`` directly), LISA's ``<root>/cocostuff/<split>/`` beside
``<root>/coco/<split>/*.jpg``, and mmseg's ``<root>/annotations/<split>/`` beside ``<root>/images/<split>/``
(mmseg's converted ``*_labelTrainIds.png`` copies are not label maps of this release and are skipped).
Images: the COCO image directory ``<images>/<split>/<id>.jpg``. The label PNG is passed through
unchanged unless the LISA dash remap is asked for (then it is re-encoded and the json says so).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Sample
from pipeline.sources.base import BaseReader, SourceError, process_cached
from pipeline.sources.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RejectError, decode_labelmap, encode_gray_png, histogram, read_image, read_regular_file, resolve_inside
from pipeline.vocabulary import COCOSTUFF_CLASS_NAMES, COCOSTUFF_UNLABELED

UNLABELED = COCOSTUFF_UNLABELED
MAPS_DIRNAME = "stuffthingmaps_trainval2017"

# labels.txt of the official release in label-value order; used when the root has no labels.txt.
# Thing ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91 never occur in the maps.
BUILTIN_LABELS: tuple[str, ...] = COCOSTUFF_CLASS_NAMES
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


# (layout as the error message shows it, path below root); the first existing directory holding label maps wins.
MAP_LAYOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("<root>/stuffthingmaps_trainval2017/{split}", (MAPS_DIRNAME, "{split}")),
    ("<root>/annotations/stuffthingmaps_trainval2017/{split}", ("annotations", MAPS_DIRNAME, "{split}")),
    ("<root>/dataset/annotations/stuffthingmaps_trainval2017/{split}", ("dataset", "annotations", MAPS_DIRNAME, "{split}")),
    ("<root>/{split} (official zip extracted in place)", ("{split}",)),
    ("<root>/cocostuff/{split} (LISA)", ("cocostuff", "{split}")),
    ("<root>/annotations/{split} (mmseg)", ("annotations", "{split}")),
)
_TRAIN_IDS_SUFFIX = "_labelTrainIds.png"  # mmseg's remapped copies (0-170), not this release's values


def _is_label_map_name(name: str) -> bool:
    return name.endswith(".png") and not name.endswith(_TRAIN_IDS_SUFFIX)


def find_maps_dir(root: Path, split: str) -> Path | None:
    """The label-map directory of ``split`` under ``root`` in the first of `MAP_LAYOUTS` that holds label maps."""
    for _, parts in MAP_LAYOUTS:
        candidate = root.joinpath(*(p.format(split=split) for p in parts))
        if candidate.is_dir():
            with os.scandir(candidate) as entries:
                if any(_is_label_map_name(e.name) for e in entries):
                    return candidate
    return None


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
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        super().__init__(root, split, max_pixels=max_pixels, max_bytes=max_bytes)
        self.images = Path(images).resolve() if images else self._default_images()
        self.labels = Path(labels).resolve() if labels else None
        self.lisa_dash_remap = bool(lisa_dash_remap)

    def _default_images(self) -> Path:
        # sample data / LISA (root = cocostuff/ beside coco/), mmseg (images/), LISA with root = its dataset dir
        for candidate in (self.root.parent / "coco", self.root / "images", self.root / "dataset" / "images", self.root / "coco"):
            if (candidate / self.split).is_dir():
                return candidate.resolve()
        return (self.root.parent / "coco").resolve()

    def options(self) -> dict[str, Any]:
        return {**super().options(), "images": str(self.images), "labels": str(self.labels or ""),
                "lisa_dash_remap": self.lisa_dash_remap}

    def image_dirs(self) -> list[Path]:
        return [self.images / self.split]

    @functools.cached_property
    def maps_dir(self) -> Path:
        found = find_maps_dir(self.root, self.split)
        if found is None:
            raise SourceError(f"{self.root}: no COCO-Stuff label maps for split {self.split!r}; layouts tried: "
                              + "; ".join(layout.format(split=self.split) for layout, _ in MAP_LAYOUTS))
        return found

    def check_inputs(self) -> None:
        super().check_inputs()
        try:
            self.class_names()
        except (OSError, ValueError) as err:
            raise SourceError(str(err)) from None

    def class_names(self) -> dict[int, str]:
        path = self.labels or self.root / "labels.txt"
        if path.exists():
            return process_cached(("labels", str(path)), lambda: parse_labels(path.read_text(encoding="utf-8"), str(path)))
        return dict(enumerate(BUILTIN_LABELS))

    def _list_records(self) -> list[str]:
        return sorted(name for name in os.listdir(self.maps_dir) if _is_label_map_name(name))

    def location(self, index: int, record: str) -> str:
        return str(self.maps_dir / record)

    def _read(self, index: int, record: str) -> Sample:
        stem = record[: -len(".png")]
        map_path = resolve_inside(self.root, self.maps_dir.relative_to(self.root) / record)
        image = read_image(self.images, Path(self.split) / f"{stem}.jpg", max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        data = read_regular_file(map_path, max_bytes=self.max_bytes)
        labels = decode_labelmap(data, str(map_path), max_pixels=self.max_pixels)
        if (labels.shape[1], labels.shape[0]) != image.size:
            raise RejectError(
                "size_mismatch",
                f"{map_path}: label map is {labels.shape[1]}x{labels.shape[0]}, image {image.width}x{image.height}",
            )
        names = self.class_names()
        extra: dict[str, Any] = {}
        counts = histogram(labels)  # the classes present
        if self.lisa_dash_remap:
            remap = dash_values(names)
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
    def layouts_hint(cls, root: Path | str) -> str:
        return "; layouts tried: " + "; ".join(layout.format(split="<split>") for layout, _ in MAP_LAYOUTS)

    @classmethod
    def available_splits(cls, root: Path | str, **options: Any) -> list[str]:
        return [split for split in cls.source_spec().splits() if find_maps_dir(Path(root), split) is not None]
