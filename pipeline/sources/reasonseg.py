"""LISA ReasonSeg (kind ``reasoning_seg``): one sample per image with its queries, target and ignore masks.

Layout: ``<root>/{train,val,test}/<name>.jpg`` + ``<name>.json`` (labelme-style: ``text`` queries,
``is_sentence``, ``shapes`` of polygons labelled "target", "...ignore..." or "flag"); optionally
``<root>/explanatory/<split>.json`` (LISA's explanations: [{image, query, outputs}]), joined by image
name into the ``explanation`` field. Stems may contain dots and spaces.

Masks follow LISA: polygons are filled largest-area first (a small polygon inside a large one wins),
"flag" shapes are skipped, "ignore" shapes are value 255 and everything else is the target (1).
We write the target as ``mask.png`` (255) and the ignore region as ``ignore.png`` (255).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Sample
from pipeline.sources.base import BaseReader, DuplicateKeyError, SourceError, load_json_file, parse_json, process_cached
from pipeline.sources.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RejectError, encode_mask_png, read_image, read_regular_file, resolve_inside

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TARGET, IGNORE = 1, 255


def fill_polygon(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels (H, W) bool whose centres lie inside the polygon ``points`` (N, 2) in (x, y) pixel coordinates."""
    from skimage.draw import polygon

    mask = np.zeros((height, width), dtype=bool)
    rr, cc = polygon(points[:, 1], points[:, 0], shape=(height, width))
    mask[rr, cc] = True
    return mask


def rasterise_shapes(shapes: list[dict[str, Any]], height: int, width: int, *, tolerance: float = 1.0, where: str = "") -> np.ndarray:
    """LISA's label map (H, W) uint8: 0 background, 1 target, 255 ignore; polygons filled largest-area first."""
    filled: list[tuple[int, int, np.ndarray]] = []
    for i, shape in enumerate(shapes):
        label = str(shape.get("label", ""))
        if label == "flag":
            continue
        if shape.get("shape_type", "polygon") != "polygon":
            raise RejectError("annotation_invalid", f"{where}: shape {i} has shape_type {shape.get('shape_type')!r}; only polygons are supported")
        try:
            pts = np.asarray(shape.get("points") or [], dtype=np.float64)
        except (TypeError, ValueError):
            raise RejectError("polygon_invalid", f"{where}: shape {i} ({label!r}) has points that are not numbers") from None
        if pts.ndim != 2 or pts.shape[0] < 3 or pts.shape[1] != 2:
            raise RejectError("polygon_invalid", f"{where}: shape {i} ({label!r}) is not a polygon of ≥ 3 [x, y] points")
        if not np.isfinite(pts).all():  # NaN passes every bounds comparison and would rasterise to nothing
            raise RejectError("polygon_invalid", f"{where}: shape {i} ({label!r}) has a non-finite coordinate (NaN or inf)")
        if (pts[:, 0].min() < -tolerance or pts[:, 1].min() < -tolerance
                or pts[:, 0].max() > width + tolerance or pts[:, 1].max() > height + tolerance):
            raise RejectError("polygon_out_of_bounds", f"{where}: shape {i} ({label!r}) lies outside the {width}x{height} image")
        region = fill_polygon(pts, height, width)
        filled.append((int(region.sum()), IGNORE if "ignore" in label else TARGET, region))
    labels = np.zeros((height, width), dtype=np.uint8)
    # Stable sort by area, largest first: later (smaller) polygons overwrite, as LISA does.
    for _, value, region in sorted(filled, key=lambda t: -t[0]):
        labels[region] = value
    return labels


class ReasonSegReader(BaseReader):
    """One sample per image of a split (sorted by file name).

    explanatory: LISA's explanatory json for this split (default ``<root>/explanatory/<split>.json`` when present).
    """

    source = "reasonseg"

    def __init__(
        self,
        root: Path | str,
        split: str,
        *,
        explanatory: Path | str | None = None,
        polygon_tolerance: float = 1.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        super().__init__(root, split, max_pixels=max_pixels, max_bytes=max_bytes)
        default = self.root / "explanatory" / f"{split}.json"
        self.explanatory = Path(explanatory).resolve() if explanatory else (default if default.exists() else None)
        self.tolerance = float(polygon_tolerance)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "explanatory": str(self.explanatory or ""), "polygon_tolerance": self.tolerance}

    def _list_records(self) -> list[str]:
        """Image files of the split, plus every annotation json without an image (a reject, never a silent drop)."""
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            raise SourceError(f"{split_dir}: no such split directory; expected {self.root}/{{train,val,test}}/")
        names = os.listdir(split_dir)
        images = sorted(n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        stems = {n.rsplit(".", 1)[0] for n in images}
        orphans = sorted(n for n in names if n.endswith(".json") and n[: -len(".json")] not in stems)
        return images + orphans

    def check_inputs(self) -> None:
        super().check_inputs()
        self.explanations()

    def location(self, index: int, record: str) -> str:
        return str(self.root / self.split / record)

    def explanations(self) -> dict[str, str]:
        if self.explanatory is None:
            return {}

        def build() -> dict[str, str]:
            items = load_json_file(self.explanatory, "LISA's explanatory json, a list of {image, query, outputs}")
            if not isinstance(items, list):
                raise SourceError(f"{self.explanatory}: top level is {type(items).__name__}; expected a list of "
                                  "{image, query, outputs}")
            return {str(it["image"]): str(it.get("outputs", "")) for it in items if isinstance(it, dict) and "image" in it}

        return process_cached(("explanatory", str(self.explanatory)), build)

    def _read(self, index: int, record: str) -> Sample:
        stem = record.rsplit(".", 1)[0]
        if record.endswith(".json"):
            raise RejectError("image_missing", f"{self.root / self.split / record}: annotation without an image "
                                               f"({stem}{{{','.join(IMAGE_SUFFIXES)}}} not found)")
        rel_json = Path(self.split) / f"{stem}.json"
        json_path = resolve_inside(self.root, rel_json)
        if not json_path.exists():
            raise RejectError("annotation_missing", f"{json_path}: no annotation json beside {record}")
        raw = read_regular_file(json_path, max_bytes=self.max_bytes)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            try:
                text = raw.decode("cp1252", errors="strict")  # some ReasonSeg files were saved on Windows, as LISA tolerates
            except UnicodeDecodeError:
                raise RejectError("annotation_invalid", f"{json_path}: neither UTF-8 nor cp1252 text") from None
        try:
            ann = parse_json(text)
        except (json.JSONDecodeError, DuplicateKeyError) as err:
            raise RejectError("annotation_invalid", f"{json_path}: not valid JSON ({err})") from None
        if not isinstance(ann, dict):
            raise RejectError("annotation_invalid", f"{json_path}: top level is {type(ann).__name__}, expected an object")
        texts = ann.get("text")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        sentences = [t for t in texts if isinstance(t, str) and t.strip()]
        if not sentences:
            raise RejectError("empty_text", f"{json_path}: field 'text' has no non-empty query")
        image = read_image(self.root, Path(self.split) / record, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        declared = (ann.get("imageWidth"), ann.get("imageHeight"))
        if all(isinstance(v, int) for v in declared) and declared != image.size:
            raise RejectError("size_mismatch", f"{json_path}: declares {declared[0]}x{declared[1]}, image is {image.width}x{image.height}")
        labels = rasterise_shapes(ann.get("shapes") or [], image.height, image.width, tolerance=self.tolerance, where=str(json_path))
        fields: dict[str, Any] = {"is_sentence": bool(ann.get("is_sentence", False)), "image_file": record}
        explanation = self.explanations().get(record)
        if explanation is not None:
            fields["explanation"] = explanation
        meta = self.meta("reasoning_seg", f"{self.split}/{record}", sentences=sentences, **fields, **self.image_fields(image))
        files = {image.ext: image.data, "mask.png": encode_mask_png(labels == TARGET), "ignore.png": encode_mask_png(labels == IGNORE)}
        return Sample(self.key(index, stem), meta, files)

    @classmethod
    def available_splits(cls, root: Path | str, **options: Any) -> list[str]:
        return [s for s in cls.source_spec().splits() if (Path(root) / s).is_dir()]
