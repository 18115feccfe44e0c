"""Reading edit-pair shards back, and the export in SmartEdit's released JSON layout:
``{"0000": {"origin_img_path", "target_img_path", "instruction": [...]}}`` with the images beside it.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.manifest import INDEX_NAME


def shard_files(path: Path | str) -> list[Path]:
    """A .tar shard, a dataset directory / shardindex.json (its shards in index order), or a folder of shards."""
    path = Path(path)
    if path.is_file() and path.suffix == ".tar":
        return [path]
    index = path if path.is_file() else path / INDEX_NAME
    if index.is_file():
        doc = json.loads(index.read_text())
        return [index.parent / s["url"] for s in doc.get("shardlist", [])]
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if shards:
            return shards
    raise FileNotFoundError(f"{path}: no .tar shard, shardindex.json or folder of .tar shards")


def read_samples(path: Path | str, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any], dict[str, bytes]]]:
    """(key, json meta, members) per sample, in shard order; members are raw bytes keyed by extension."""
    count = 0
    for shard in shard_files(path):
        with tarfile.open(shard) as tar:
            key, files = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                base = Path(member.name).name
                k, _, ext = base.partition(".")
                if key is not None and k != key:
                    yield key, json.loads(files.pop("json", b"{}")), files
                    count += 1
                    if limit is not None and count >= limit:
                        return
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
            if key is not None:
                yield key, json.loads(files.pop("json", b"{}")), files
                count += 1
                if limit is not None and count >= limit:
                    return


def _member(files: dict[str, bytes], prefix: str) -> tuple[str, bytes] | None:
    for ext, data in sorted(files.items()):
        if ext.startswith(prefix + "."):
            return ext.split(".", 1)[1], data
    return None


def export_smartedit_json(dataset: Path | str, out_dir: Path | str, json_name: str = "synthetic_edit.json") -> Path:
    """Write ``out_dir/images/<key>_{src,tgt}.<ext>`` and ``out_dir/<json_name>``; paths in the JSON are
    relative to it. Returns the JSON path."""
    out_dir = Path(out_dir)
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
    path.write_text(json.dumps(entries, indent=1, ensure_ascii=False))
    return path
