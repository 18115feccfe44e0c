"""Dataset manifests: a wids-compatible ``shardindex.json`` plus ``rejects.jsonl``.

The index is what `wids.ShardListDataset` opens (``__kind__``, ``wids_version``, ``shardlist`` of
``{url, nsamples, filesize, md5sum}``); readers ignore extra fields, so each shard also carries its
sha256 and the dataset carries its provenance and its counts: records in, kept, rejected by reason.
Counts in = kept + rejected is checked here, at the one place every dataset passes through.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.provenance import Provenance
from pipeline.writer import ShardStats, atomic_write_text, stats_path

INDEX_NAME = "shardindex.json"
REJECTS_NAME = "rejects.jsonl"
WIDS_KIND = "wids-shard-index-v1"


class IncompleteDatasetError(RuntimeError):
    """A shard named in the plan has no completion marker: rerun the conversion to finish it."""


def finalize_dataset(
    dataset_dir: Path | str,
    *,
    name: str,
    shard_names: Sequence[str],
    provenance: Provenance,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect the per-shard stats into ``shardindex.json`` and ``rejects.jsonl``; return the index."""
    dataset_dir = Path(dataset_dir)
    stats: list[ShardStats] = []
    for shard in shard_names:
        marker = stats_path(dataset_dir / shard)
        if not marker.exists() or not (dataset_dir / shard).exists():
            raise IncompleteDatasetError(f"{dataset_dir / shard}: shard not finished (no {marker.name}); rerun to complete it")
        stats.append(ShardStats.load(marker))

    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    lines = []
    for s in stats:
        reasons.update(s.rejected_by_reason)
        kinds.update(s.kinds)
        sources.update(s.sources)
        lines.extend(json.dumps({"shard": s.url, **r}, sort_keys=True, ensure_ascii=False) for r in s.rejects)
    n_in = sum(s.n_in for s in stats)
    kept = sum(s.nsamples for s in stats)
    rejected = sum(s.n_rejected for s in stats)
    if n_in != kept + rejected:  # a writer bug, never bad input: fail loudly
        raise AssertionError(f"{dataset_dir}: counts in {n_in} != kept {kept} + rejected {rejected}")

    index = {
        "__kind__": WIDS_KIND,
        "wids_version": 1,
        "name": name,
        "shardlist": [
            {"url": s.url, "nsamples": s.nsamples, "filesize": s.filesize, "md5sum": s.md5sum, "sha256": s.sha256}
            for s in stats
        ],
        "provenance": asdict(provenance),
        "counts": {
            "in": n_in,
            "kept": kept,
            "rejected": rejected,
            "rejected_by_reason": dict(sorted(reasons.items())),
            "kinds": dict(sorted(kinds.items())),
            "sources": dict(sorted(sources.items())),
        },
    }
    if extra:
        index.update(extra)
    atomic_write_text(dataset_dir / REJECTS_NAME, "".join(line + "\n" for line in lines))
    atomic_write_text(dataset_dir / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False))
    return index


def index_path(path: Path | str) -> Path:
    """Accept a dataset directory or its ``shardindex.json``."""
    path = Path(path)
    return path / INDEX_NAME if path.is_dir() else path


def load_manifest(path: Path | str) -> dict[str, Any]:
    """Read a dataset's index; a clear error when it is missing or not ours."""
    path = index_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {INDEX_NAME}; is this a dataset directory written by smartedit?")
    index = json.loads(path.read_text())
    if index.get("__kind__") != WIDS_KIND:
        raise ValueError(f"{path}: field '__kind__' is {index.get('__kind__')!r}, expected {WIDS_KIND!r}")
    return index


def find_manifests(root: Path | str) -> list[Path]:
    """Every ``shardindex.json`` at or below ``root``, sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(root.rglob(INDEX_NAME))
