"""MagicBrush (kind ``edit_pair``): one sample per edit turn, from the Hugging Face parquet release.

Layout: ``<root>/data/{train,dev}-*.parquet``. Current schema: img_id, turn_index, source_img,
mask_img (white = edit region), instruction, target_img. Older revisions: input_img / output_img and
no mask. Both are read; the revision is detected per file from its column names. Source and target
bytes are passed through as stored; the mask becomes a binarised 8-bit PNG (255 = edit region).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.records import Sample
from pipeline.sources import parquet
from pipeline.sources.base import BaseReader, require_text
from pipeline.sources.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RejectError, decode_binary_mask, encode_mask_png, probe_image

# revision → (source column, target column, mask column or None)
REVISIONS: dict[str, tuple[str, str, str | None]] = {
    "current": ("source_img", "target_img", "mask_img"),
    "legacy": ("input_img", "output_img", None),
}


def detect_revision(columns: list[str], where: str) -> str:
    for name, (src, tgt, _) in REVISIONS.items():
        if src in columns and tgt in columns:
            return name
    raise ValueError(f"{where}: columns {columns} match no known MagicBrush schema (source_img/target_img or input_img/output_img)")


class MagicBrushReader(BaseReader):
    """Splits ``train`` and ``dev``, rows in file order."""

    source = "magicbrush"

    def __init__(self, root: Path | str, split: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__(root, split, max_pixels=max_pixels, max_bytes=max_bytes)

    def _list_records(self) -> list[parquet.ParquetRow]:
        return parquet.list_rows(self.root, self.split)

    def location(self, index: int, record: parquet.ParquetRow) -> str:
        return f"{self.root / record.file}#row={record.file_row}"

    def _read(self, index: int, row: parquet.ParquetRow) -> Sample:
        where = f"{row.file}#row={row.file_row}"
        values = parquet.read_row(self.root, row)
        revision = detect_revision(list(values), where)
        src_col, tgt_col, mask_col = REVISIONS[revision]
        instruction = require_text(values.get("instruction"), f"{where}: instruction")
        src = probe_image(parquet.image_bytes(values.get(src_col), src_col, where), f"{where}:{src_col}", max_pixels=self.max_pixels)
        tgt = probe_image(parquet.image_bytes(values.get(tgt_col), tgt_col, where), f"{where}:{tgt_col}", max_pixels=self.max_pixels)
        files = {f"src.{src.ext}": src.data, f"tgt.{tgt.ext}": tgt.data}
        if mask_col is not None and values.get(mask_col) is not None:
            mask = decode_binary_mask(parquet.image_bytes(values[mask_col], mask_col, where), f"{where}:{mask_col}", max_pixels=self.max_pixels)
            if mask.shape != (src.height, src.width):
                raise RejectError("size_mismatch", f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, source image {src.width}x{src.height}")
            files["mask.png"] = encode_mask_png(mask)
        img_id = values.get("img_id")
        turn = values.get("turn_index")
        meta = self.meta(
            "edit_pair", f"{img_id}/{turn}" if img_id is not None else where, instruction=instruction,
            img_id=str(img_id or ""), turn_index=int(turn) if turn is not None else -1, schema_revision=revision,
            **self.image_fields(src, "src_"), **self.image_fields(tgt, "tgt_"),
        )
        return Sample(self.key(index, img_id or "", turn if turn is not None else ""), meta, files)

    @classmethod
    def available_splits(cls, root: Path | str, **options: Any) -> list[str]:
        return [s for s in parquet.splits_present(Path(root)) if s in cls.source_spec().splits()]
