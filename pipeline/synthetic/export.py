"""Reading edit-pair shards back, and the export in SmartEdit's released JSON layout:
``{"0000": {"origin_img_path", "target_img_path", "instruction": [...]}}`` with the images beside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.shards import iter_samples
from pipeline.storage import as_path, is_remote


def read_samples(path: Path | str, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any], dict[str, bytes]]]:
    """(key, json meta, members) per sample, in shard order; members are raw bytes keyed by extension.

    ``path``: a .tar shard, a dataset directory / shardindex.json (its shards in index order), or a folder of
    shards — read through the shard contract (`pipeline.shards.iter_samples`).
    """
    for count, raw in enumerate(iter_samples(path)):
        if limit is not None and count >= limit:
            return
        files = {k: v for k, v in raw.items() if not k.startswith("__")}
        yield raw["__key__"], json.loads(files.pop("json", b"{}")), files


def _member(files: dict[str, bytes], prefix: str) -> tuple[str, bytes] | None:
    for ext, data in sorted(files.items()):
        if ext.startswith(prefix + "."):
            return ext.split(".", 1)[1], data
    return None


def export_smartedit_json(dataset: Path | str, out_dir: Path | str, json_name: str = "synthetic_edit.json") -> Path:
    """Write ``out_dir/images/<key>_{src,tgt}.<ext>`` and ``out_dir/<json_name>``; paths in the JSON are
    relative to it. Returns the JSON path. ``out_dir`` may be on a bucket (one object per image; on a bucket an
    object exists only once its upload completed). The JSON is written last and atomically, so once it exists
    every image it names does."""
    from pipeline.writer import atomic_write_text

    out_dir = as_path(out_dir)
    if not is_remote(out_dir):
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    for i, (key, meta, files) in enumerate(read_samples(dataset)):
        src, tgt = _member(files, "src"), _member(files, "tgt")
        if src is None or tgt is None:
            raise ValueError(f"{dataset}: sample {key!r} is not an edit pair (needs src.* and tgt.* members)")
        paths = []
        for role, (ext, data) in (("src", src), ("tgt", tgt)):
            rel = f"images/{key}_{role}.{ext}"
            (out_dir / rel).write_bytes(data)
            paths.append(rel)
        entries[f"{i:04d}"] = {"origin_img_path": paths[0], "target_img_path": paths[1],
                               "instruction": meta.get("instructions") or [meta.get("instruction", "")]}
    path = out_dir / json_name
    atomic_write_text(path, json.dumps(entries, indent=1, ensure_ascii=False))
    return path
