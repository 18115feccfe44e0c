"""InstructPix2Pix (kind ``edit_pair``), in either released form.

Folder form: ``<root>/seeds.json`` = [[dir, [seed, ...]], ...], ``<root>/<dir>/prompt.json``
{input, edit, output}, ``<root>/<dir>/<seed>_0.jpg`` (input) and ``<seed>_1.jpg`` (edited).
Parquet form: ``<root>/data/train-*.parquet`` with columns original_prompt, original_image {bytes,
path}, edit_prompt, edited_prompt, edited_image. The form is detected from the root (``form`` option
to force one). Images are stored as given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pipeline.records import Sample
from pipeline.sources import parquet
from pipeline.sources.base import BaseReader, DuplicateKeyError, SourceError, load_json_file, parse_json, process_cached, require_text
from pipeline.sources.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RejectError, probe_image, read_image, read_regular_file, resolve_inside

Form = Literal["auto", "folder", "parquet"]


def detect_form(root: Path) -> str:
    if (root / "seeds.json").exists():
        return "folder"
    if parquet.splits_present(root):
        return "parquet"
    raise FileNotFoundError(f"{root}: neither seeds.json (folder form) nor data/*.parquet (parquet form) found")


class InstructPix2PixReader(BaseReader):
    """One sample per (prompt dir, seed) or per parquet row; split ``train``."""

    source = "instructpix2pix"

    def __init__(self, root: Path | str, split: str = "train", *, form: Form = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__(root, split, max_pixels=max_pixels, max_bytes=max_bytes)
        if form not in ("auto", "folder", "parquet"):
            raise ValueError(f"form must be auto, folder or parquet, got {form!r}")
        self.form = detect_form(self.root) if form == "auto" else form

    def options(self) -> dict[str, Any]:
        return {**super().options(), "form": self.form}

    def _list_records(self) -> list[Any]:
        if self.form == "parquet":
            return parquet.list_rows(self.root, self.split)
        path = self.root / "seeds.json"
        seeds = load_json_file(path, "InstructPix2Pix's seeds.json = [[dir, [seeds]], ...]")
        if not isinstance(seeds, list):
            raise SourceError(f"{path}: top level is {type(seeds).__name__}; expected a list of [dir, [seeds]]")
        records = []
        for i, entry in enumerate(seeds):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
                raise SourceError(f"{path}: entry {i} must be [dir, [seeds]], got {entry!r:.80}")
            records.extend((str(entry[0]), str(seed)) for seed in entry[1])
        return records

    def location(self, index: int, record: Any) -> str:
        if self.form == "parquet":
            return f"{self.root / record.file}#row={record.file_row}"
        return str(self.root / record[0] / f"{record[1]}_0.jpg")

    def _prompts(self, directory: str) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            path = resolve_inside(self.root, Path(directory) / "prompt.json")
            if not path.exists():
                raise RejectError("annotation_missing", f"{path}: missing prompt.json")
            try:
                return parse_json(read_regular_file(path, max_bytes=self.max_bytes))
            except (UnicodeDecodeError, json.JSONDecodeError, DuplicateKeyError) as err:
                raise RejectError("annotation_invalid", f"{path}: not valid JSON ({err})") from None

        return process_cached(("ip2p-prompt", str(self.root), directory), build)

    def _read(self, index: int, record: Any) -> Sample:
        if self.form == "parquet":
            return self._read_parquet(index, record)
        directory, seed = record
        where = f"{directory}/{seed}"
        prompt = self._prompts(directory)
        instruction = require_text(prompt.get("edit"), f"{where}: prompt.json 'edit'")
        src = read_image(self.root, Path(directory) / f"{seed}_0.jpg", max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        tgt = read_image(self.root, Path(directory) / f"{seed}_1.jpg", max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        meta = self.meta(
            "edit_pair", where, instruction=instruction, input_caption=str(prompt.get("input", "")),
            output_caption=str(prompt.get("output", "")), seed=seed,
            **self.image_fields(src, "src_"), **self.image_fields(tgt, "tgt_"),
        )
        files = {f"src.{src.ext}": src.data, f"tgt.{tgt.ext}": tgt.data}
        return Sample(self.key(index, directory, seed), meta, files)

    def _read_parquet(self, index: int, row: parquet.ParquetRow) -> Sample:
        where = f"{row.file}#row={row.file_row}"
        values = parquet.read_row(self.root, row)
        instruction = require_text(values.get("edit_prompt"), f"{where}: edit_prompt")
        src = probe_image(parquet.image_bytes(values.get("original_image"), "original_image", where), f"{where}:original_image", max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        tgt = probe_image(parquet.image_bytes(values.get("edited_image"), "edited_image", where), f"{where}:edited_image", max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        meta = self.meta(
            "edit_pair", where, instruction=instruction, input_caption=str(values.get("original_prompt") or ""),
            output_caption=str(values.get("edited_prompt") or ""),
            **self.image_fields(src, "src_"), **self.image_fields(tgt, "tgt_"),
        )
        return Sample(self.key(index), meta, {f"src.{src.ext}": src.data, f"tgt.{tgt.ext}": tgt.data})

    @classmethod
    def available_splits(cls, root: Path | str, **options: Any) -> list[str]:
        root = Path(root)
        form = options.get("form") or "auto"
        form = detect_form(root) if form == "auto" else form
        return ["train"] if form == "folder" else [s for s in parquet.splits_present(root) if s in cls.source_spec().splits()]
