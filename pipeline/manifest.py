"""Writing dataset manifests: a wids-compatible ``shardindex.json`` plus ``rejects.jsonl``.

Names and reading live in `pipeline.shards` (re-exported here for writers).

The index is what `wids.ShardListDataset` opens (``__kind__``, ``wids_version``, ``shardlist`` of
``{url, nsamples, filesize, md5sum}``); readers ignore extra fields, so each shard also carries its
sha256 and the dataset carries its provenance and its counts: records in, kept, rejected by reason.
Counts in = kept + rejected is checked here, at the one place every dataset passes through.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.provenance import Provenance
from pipeline.shards import INDEX_NAME, REJECTS_NAME, WIDS_KIND, find_manifests, index_path, load_manifest
from pipeline.storage import as_path
from pipeline.writer import ShardStats, atomic_write_text, stats_path

__all__ = ["INDEX_NAME", "REJECTS_NAME", "WIDS_KIND", "IncompleteDatasetError", "finalize_dataset", "find_manifests",
           "index_path", "load_manifest"]


class IncompleteDatasetError(RuntimeError):
    """A shard named in the plan has no completion marker: rerun the conversion to finish it."""


def finalize_dataset(
    dataset_dir: Path | str,
    *,
    name: str,
    shard_names: Sequence[str],
    provenance: Provenance,
    extra: dict[str, Any] | None = None,
    fingerprints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Collect the per-shard stats into ``shardindex.json`` and ``rejects.jsonl``; return the index.

    fingerprints: shard name → the fingerprint it must have been built with (a shard finished by a run
    with other settings is an error, never listed under this run's provenance).
    """
    dataset_dir = as_path(dataset_dir)
    stats: list[ShardStats] = []
    for shard in shard_names:
        marker = stats_path(dataset_dir / shard)
        if not marker.exists() or not (dataset_dir / shard).exists():
            raise IncompleteDatasetError(f"{dataset_dir / shard}: shard not finished (no {marker.name}); rerun to complete it")
        s = ShardStats.load(marker)
        if fingerprints is not None and s.fingerprint != fingerprints.get(shard):
            raise IncompleteDatasetError(f"{dataset_dir / shard}: built with other settings (fingerprint "
                                         f"{s.fingerprint[:12] or 'none'}, planned {str(fingerprints.get(shard))[:12]}); "
                                         "rerun with --overwrite")
        stats.append(s)

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

    rejects_text = "".join(line + "\n" for line in lines)
    index = {
        "__kind__": WIDS_KIND,
        "wids_version": 1,
        "name": name,
        "shardlist": [
            {"url": s.url, "nsamples": s.nsamples, "filesize": s.filesize, "md5sum": s.md5sum, "sha256": s.sha256,
             **({"fingerprint": s.fingerprint} if s.fingerprint else {})}
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
        "rejects_sha256": hashlib.sha256(rejects_text.encode("utf-8")).hexdigest(),
    }
    if extra:
        index.update(extra)
    atomic_write_text(dataset_dir / REJECTS_NAME, rejects_text)
    atomic_write_text(dataset_dir / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False))
    return index
