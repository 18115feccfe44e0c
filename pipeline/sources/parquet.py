"""Row access to Hugging Face style parquet releases (``<root>/data/<split>-NNNNN-of-NNNNN*.parquet``).

Listing reads only the footers (row counts per row group). Reading decodes one row group at a time
and keeps the last one in this process: shards cover contiguous records, so a shard's reads hit the
cached group instead of decoding a multi-hundred-MB group per row.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.sources.images import RejectError

_SPLIT_OF_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+?)-\d+")


class ParquetRow(NamedTuple):
    """One row's address: file (relative to root), row group, row within the group, row within the file."""

    file: str
    group: int
    row: int
    file_row: int


def parquet_dir(root: Path) -> Path:
    return root / "data" if (root / "data").is_dir() else root


def split_files(root: Path, split: str) -> list[Path]:
    """The split's parquet files, sorted by name."""
    base = parquet_dir(root)
    return sorted(p for p in base.glob("*.parquet") if (m := _SPLIT_OF_FILE.match(p.name)) and m.group("split") == split)


def splits_present(root: Path) -> list[str]:
    base = parquet_dir(root)
    return sorted({m.group("split") for p in base.glob("*.parquet") if (m := _SPLIT_OF_FILE.match(p.name))})


def list_rows(root: Path, split: str) -> list[ParquetRow]:
    import pyarrow.parquet as pq

    files = split_files(root, split)
    if not files:
        raise FileNotFoundError(f"{parquet_dir(root)}: no {split}-*.parquet files")
    rows: list[ParquetRow] = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        rel = str(path.relative_to(root))
        n = 0
        for g in range(meta.num_row_groups):
            for r in range(meta.row_group(g).num_rows):
                rows.append(ParquetRow(rel, g, r, n))
                n += 1
    return rows


def schema_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


@functools.lru_cache(maxsize=1)
def _row_group(path: str, group: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group).to_pylist()


def read_row(root: Path, row: ParquetRow) -> dict[str, Any]:
    return _row_group(str(root / row.file), row.group)[row.row]


def image_bytes(value: Any, column: str, where: str) -> bytes:
    """The bytes of an HF ``Image`` struct column ({bytes, path}) or a plain binary column."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        raise RejectError("image_missing", f"{where}: column {column!r} holds no image bytes")
    if not isinstance(value, (bytes, bytearray)):
        raise RejectError("annotation_invalid", f"{where}: column {column!r} is {type(value).__name__}, expected image bytes")
    return bytes(value)
