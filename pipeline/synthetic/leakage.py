"""Leakage guard: drop source images that (nearly) match an evaluation image, by perceptual hash and id.

Evaluation sets: Reason-Edit directories (category folders of ``*.png`` inputs; ``*_mask.jpg`` ignored);
MagicBrush test in its released layout (``test/edit_sessions.json`` + ``test/images/<img_id>/
<img_id>-input.png``; the directory holding either) or MagicBrush parquet files (``source_img`` /
``input_img`` image structs, ``img_id``). MagicBrush images are COCO images and ``img_id`` is the COCO
image id, so a COCO record with one of those ids is dropped whatever its pixels (``eval_image_id``).

pHash (imagehash, 64 bits) survives re-encoding and resizing, which a byte hash would not; it does not
survive flips, crops or padding. So every evaluation image is hashed as several variants (mirrored; 5 and
10 % cropped from each side and from all sides), and a candidate is hashed after trimming uniform borders
(padding, letterboxing): a crop, a pad or a flip of an evaluation image is then within a few bits of one
variant.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.scene import ImageRecord
from pipeline.synthetic.stages import FilterStage

log = logging.getLogger(__name__)
_PARQUET_IMAGE_COLUMNS = ("source_img", "input_img")


CROPS = (0.025, 0.05, 0.075, 0.10)  # fractions cropped in the hashed variants


@dataclass(frozen=True)
class EvalHashes:
    bits: np.ndarray  # (N, 64) bool
    names: tuple[str, ...]  # where each hash came from (variant in brackets)
    image_ids: frozenset[int] = frozenset()  # COCO image ids of evaluation images (MagicBrush img_id)

    def nearest(self, bits: np.ndarray) -> tuple[int, str]:
        """Hamming distance to the closest evaluation image and its name; (65, '') when there is none."""
        if not len(self.names):
            return 65, ""
        dist = (self.bits != bits[None, :]).sum(1)
        i = int(dist.argmin())
        return int(dist[i]), self.names[i]


def image_phash(image) -> np.ndarray:
    """(64,) bool pHash of a PIL image (reduced to 256 px first: pHash looks at 32 x 32, and evaluation
    variants and candidates then go through the same resampling)."""
    import imagehash

    from PIL import ImageOps

    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((256, 256))
    return np.asarray(imagehash.phash(image).hash, dtype=bool).reshape(-1)


def trim_borders(image, tolerance: int = 8):
    """The image without uniform borders (padding / letterboxing): rows and columns at the edges whose
    pixels all lie within ``tolerance`` of that edge's corner colour are cut."""
    rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    h, w = rgb.shape[:2]

    def uniform(block: np.ndarray, ref: np.ndarray) -> bool:
        return bool(np.abs(block - ref).max() <= tolerance)

    top, bottom, left, right = 0, h, 0, w
    while top < bottom - 8 and uniform(rgb[top, left:right], rgb[0, 0]):
        top += 1
    while bottom - 1 > top + 8 and uniform(rgb[bottom - 1, left:right], rgb[-1, -1]):
        bottom -= 1
    while left < right - 8 and uniform(rgb[top:bottom, left], rgb[0, 0]):
        left += 1
    while right - 1 > left + 8 and uniform(rgb[top:bottom, right - 1], rgb[-1, -1]):
        right -= 1
    return image if (top, bottom, left, right) == (0, h, 0, w) else image.crop((left, top, right, bottom))


def variant_hashes(image) -> list[tuple[str, np.ndarray]]:
    """pHashes of an evaluation image, its mirror image and its 5 / 10 % crops (all sides, each side, each corner)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((512, 512))  # cropping a smaller copy is faster; image_phash reduces each crop to 256 px
    out = []
    for flipped, im in (("", image), ("mirrored ", ImageOps.mirror(image))):
        out.append((flipped + "whole", image_phash(im)))
        w, h = im.size
        for f in CROPS:
            dx, dy = round(w * f), round(h * f)
            for side, box in (("all sides", (dx, dy, w - dx, h - dy)), ("left", (dx, 0, w, h)), ("right", (0, 0, w - dx, h)),
                              ("top", (0, dy, w, h)), ("bottom", (0, 0, w, h - dy)), ("top left", (dx, dy, w, h)),
                              ("top right", (0, dy, w - dx, h)), ("bottom left", (dx, 0, w, h - dy)),
                              ("bottom right", (0, 0, w - dx, h - dy))):
                out.append((f"{flipped}{int(f * 100)} % cropped {side}", image_phash(im.crop(box))))
    return out


def _open_bytes(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _reason_edit_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png") if not p.stem.endswith("_mask"))


def _magicbrush_sessions(root: Path) -> Iterator[tuple[str, Path, int | None]]:
    """MagicBrush test as released: ``edit_sessions.json`` {img_id: [{input, mask, output, instruction}]} and
    ``images/<img_id>/<file>``; yields (name, input image path, COCO image id) per session's first input."""
    sessions = json.loads((root / "edit_sessions.json").read_text())
    for img_id, turns in sorted(sessions.items()):
        names = {t.get("input") for t in turns if t.get("input")} or {f"{img_id}-input.png"}
        for name in sorted(names):
            path = root / "images" / str(img_id) / name
            if not path.exists():
                raise FileNotFoundError(f"{root / 'edit_sessions.json'}: session {img_id} names {name}, but {path} "
                                        "is missing; extract the whole MagicBrush test archive")
            yield f"{root.name}/{img_id}/{name}", path, int(img_id) if str(img_id).isdigit() else None


def _parquet_images(path: Path) -> Iterator[tuple[str, bytes, int | None]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    columns = [c for c in _PARQUET_IMAGE_COLUMNS if c in names]
    if not columns:
        raise ValueError(f"{path}: no image column; expected one of {list(_PARQUET_IMAGE_COLUMNS)} (MagicBrush layout)")
    row = 0
    for batch in parquet.iter_batches(columns=columns + (["img_id"] if "img_id" in names else []), batch_size=256):
        for record in batch.to_pylist():
            img_id = str(record.get("img_id") or "")
            for col in columns:
                value = record.get(col)
                data = value.get("bytes") if isinstance(value, dict) else value
                if data:
                    yield f"{path.name}:{row}:{col}", data, int(img_id) if img_id.isdigit() else None
            row += 1


def _eval_images(path: Path) -> Iterator[tuple[str, Any, int | None]]:
    """(name, PIL image opener result, COCO id) of one evaluation set in any supported layout."""
    from PIL import Image

    if path.is_dir() and not (path / "edit_sessions.json").exists() and (path / "test" / "edit_sessions.json").exists():
        path = path / "test"
    if path.is_dir() and (path / "edit_sessions.json").exists():
        for name, file, img_id in _magicbrush_sessions(path):
            with Image.open(file) as im:
                im.load()
                yield name, im, img_id
    elif path.is_dir() and sorted(path.glob("data/test-*.parquet")):
        for parquet in sorted(path.glob("data/test-*.parquet")):
            for name, data, img_id in _parquet_images(parquet):
                yield name, _open_bytes(data), img_id
    elif path.is_dir():
        files = _reason_edit_images(path)
        if not files:
            raise ValueError(f"eval set {path}: no *.png images (expected Reason-Edit category folders) and no "
                             "MagicBrush edit_sessions.json or data/test-*.parquet")
        for f in files:
            with Image.open(f) as im:
                im.load()
                yield str(f.relative_to(path)), im, None
    elif path.suffix == ".parquet" and path.exists():
        for name, data, img_id in _parquet_images(path):
            yield name, _open_bytes(data), img_id
    else:
        raise FileNotFoundError(f"eval set {path}: expected a Reason-Edit directory, a MagicBrush test directory "
                                "(edit_sessions.json + images/) or a MagicBrush .parquet file")


@functools.lru_cache(maxsize=4)
def load_eval_hashes(paths: tuple[str, ...]) -> EvalHashes:
    """Hash every image of the evaluation sets (all variants) and collect their COCO image ids."""
    bits, names, ids = [], [], set()
    n_images = 0
    for raw in paths:
        for name, image, img_id in _eval_images(Path(raw)):
            n_images += 1
            if img_id is not None:
                ids.add(img_id)
            for variant, h in variant_hashes(image):
                bits.append(h)
                names.append(f"{name} [{variant}]")
    log.info("leakage guard: %d evaluation images (%d hashes, %d COCO ids) from %d sets", n_images, len(names),
             len(ids), len(paths))
    return EvalHashes(np.array(bits, dtype=bool).reshape(-1, 64), tuple(names), frozenset(ids))


class LeakageGuard(FilterStage):
    """Pass records whose image is farther than ``max_distance`` bits from every evaluation image."""

    name = "leakage_guard"

    def __init__(self, hashes: EvalHashes, max_distance: int):
        self.hashes, self.max_distance = hashes, max_distance

    def check(self, record: ImageRecord) -> Reject | None:
        from PIL import Image, ImageOps

        if record.image_id in self.hashes.image_ids:
            return Reject(record.location, "eval_image_id", f"COCO image id {record.image_id} is an evaluation image "
                                                            "(MagicBrush test)")
        if not self.hashes.names:
            return None
        if not record.path.exists():
            return Reject(record.location, "image_missing", f"{record.path} not found")
        try:
            with Image.open(record.path) as im:
                bits = image_phash(trim_borders(ImageOps.exif_transpose(im).convert("RGB")))
        except OSError as err:
            return Reject(record.location, "image_unreadable", f"{record.path}: {err}")
        dist, name = self.hashes.nearest(bits)
        if dist <= self.max_distance:
            return Reject(record.location, "eval_overlap", f"pHash within {dist} bits of evaluation image {name}")
        return None
