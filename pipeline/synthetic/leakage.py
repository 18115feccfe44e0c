"""Leakage guard: drop source images that (nearly) match an evaluation image, by perceptual hash.

Evaluation sets: Reason-Edit directories (category folders of ``*.png`` inputs; ``*_mask.jpg`` ignored)
and MagicBrush parquet files (``source_img`` / ``input_img`` image structs). pHash (imagehash, 64 bits)
survives re-encoding and resizing, which a byte hash would not.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.records import Reject
from pipeline.synthetic.scene import ImageRecord
from pipeline.synthetic.stages import FilterStage

log = logging.getLogger(__name__)
_PARQUET_IMAGE_COLUMNS = ("source_img", "input_img")


@dataclass(frozen=True)
class EvalHashes:
    bits: np.ndarray  # (N, 64) bool
    names: tuple[str, ...]  # where each hash came from

    def nearest(self, bits: np.ndarray) -> tuple[int, str]:
        """Hamming distance to the closest evaluation image and its name; (65, '') when there is none."""
        if not len(self.names):
            return 65, ""
        dist = (self.bits != bits[None, :]).sum(1)
        i = int(dist.argmin())
        return int(dist[i]), self.names[i]


def image_phash(image) -> np.ndarray:
    """(64,) bool pHash of a PIL image."""
    import imagehash

    from PIL import ImageOps

    return np.asarray(imagehash.phash(ImageOps.exif_transpose(image).convert("RGB")).hash, dtype=bool).reshape(-1)


def _hash_bytes(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return image_phash(im)


def _reason_edit_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png") if not p.stem.endswith("_mask"))


def _parquet_images(path: Path) -> Iterator[tuple[str, bytes]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = [c for c in _PARQUET_IMAGE_COLUMNS if c in parquet.schema_arrow.names]
    if not columns:
        raise ValueError(f"{path}: no image column; expected one of {list(_PARQUET_IMAGE_COLUMNS)} (MagicBrush layout)")
    row = 0
    for batch in parquet.iter_batches(columns=columns, batch_size=256):
        for record in batch.to_pylist():
            for col in columns:
                value = record.get(col)
                data = value.get("bytes") if isinstance(value, dict) else value
                if data:
                    yield f"{path.name}:{row}:{col}", data
            row += 1


@functools.lru_cache(maxsize=4)
def load_eval_hashes(paths: tuple[str, ...]) -> EvalHashes:
    """Hash every image of the evaluation sets (directories: Reason-Edit layout; *.parquet: MagicBrush)."""
    from PIL import Image

    bits, names = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = _reason_edit_images(path)
            if not files:
                raise ValueError(f"eval set {path}: no *.png images (expected Reason-Edit category folders)")
            for f in files:
                with Image.open(f) as im:
                    bits.append(image_phash(im))
                names.append(str(f.relative_to(path)))
        elif path.suffix == ".parquet" and path.exists():
            for name, data in _parquet_images(path):
                bits.append(_hash_bytes(data))
                names.append(name)
        else:
            raise FileNotFoundError(f"eval set {path}: expected a Reason-Edit directory or a MagicBrush .parquet file")
    log.info("leakage guard: %d evaluation images hashed from %d sets", len(names), len(paths))
    return EvalHashes(np.array(bits, dtype=bool).reshape(-1, 64), tuple(names))


class LeakageGuard(FilterStage):
    """Pass records whose image is farther than ``max_distance`` bits from every evaluation image."""

    name = "leakage_guard"

    def __init__(self, hashes: EvalHashes, max_distance: int):
        self.hashes, self.max_distance = hashes, max_distance

    def check(self, record: ImageRecord) -> Reject | None:
        from PIL import Image

        if not self.hashes.names:
            return None
        if not record.path.exists():
            return Reject(record.location, "image_missing", f"{record.path} not found")
        try:
            with Image.open(record.path) as im:
                bits = image_phash(im)
        except OSError as err:
            return Reject(record.location, "image_unreadable", f"{record.path}: {err}")
        dist, name = self.hashes.nearest(bits)
        if dist <= self.max_distance:
            return Reject(record.location, "eval_overlap", f"pHash within {dist} bits of evaluation image {name}")
        return None
