"""Convert any source into shards: plan fixed shard boundaries, write each shard, then the manifest.

A reader lists its records cheaply and in a deterministic order; shard ``i`` always holds records
``[i * shard_size, (i + 1) * shard_size)``, so a conversion killed at any point and run again
rewrites exactly the unfinished shards and produces the same bytes. One shard is the unit of work
for a process pool or a Prefect task, never one sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.manifest import finalize_dataset
from pipeline.provenance import Provenance
from pipeline.records import Reject, Sample
from pipeline.writer import ShardStats, write_shard

log = logging.getLogger(__name__)


class SourceReader(Protocol):
    """What a converter for one dataset provides (see pipeline/sources/).

    Must be picklable (shards run in worker processes). ``records()`` is cheap and deterministic;
    ``read()`` does the heavy work for one record and returns a Sample or a Reject. An exception
    from ``read()`` is caught by the driver and quarantined as ``read_error``.
    """

    source: str
    split: str

    def spec(self) -> dict[str, Any]: ...

    def records(self) -> Sequence[Any]: ...

    def location(self, index: int, record: Any) -> str: ...

    def read(self, index: int, record: Any) -> Sample | Reject: ...


@dataclass(frozen=True)
class ShardPlan:
    name: str  # shard file name
    start: int
    stop: int


def plan_shards(prefix: str, n_records: int, shard_size: int) -> list[ShardPlan]:
    """Fixed boundaries: shard i covers records [i*shard_size, (i+1)*shard_size). Always at least one shard."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    n_shards = max(1, -(-n_records // shard_size))
    return [
        ShardPlan(f"{prefix}-{i:06d}.tar", i * shard_size, min(n_records, (i + 1) * shard_size))
        for i in range(n_shards)
    ]


def _safe_reads(reader: SourceReader, records: Sequence[Any], plan: ShardPlan) -> Iterator[Sample | Reject]:
    for index in range(plan.start, plan.stop):
        record = records[index]
        try:
            yield reader.read(index, record)
        except Exception as err:  # bad input never stops a conversion: quarantine it with its cause
            log.debug("read failed at %s", reader.location(index, record), exc_info=True)
            yield Reject(reader.location(index, record), "read_error", f"{type(err).__name__}: {err}")


def convert_shard(reader: SourceReader, plan: ShardPlan, dataset_dir: Path | str) -> ShardStats:
    """Write one planned shard (skipped when already complete)."""
    records = reader.records()
    return write_shard(Path(dataset_dir) / plan.name, _safe_reads(reader, records, plan))


def dataset_prefix(reader: SourceReader) -> str:
    return f"{reader.source}-{reader.split}".replace("+", "plus")


def convert(
    reader: SourceReader,
    dataset_dir: Path | str,
    *,
    shard_size: int = 1000,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Convert every record of ``reader`` into ``dataset_dir``; return the manifest (shardindex.json)."""
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_shards(dataset_prefix(reader), len(reader.records()), shard_size)
    done = 0
    if workers <= 1:
        for plan in plans:
            convert_shard(reader, plan, dataset_dir)
            done += 1
            if progress:
                progress(done, len(plans))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(convert_shard, [reader] * len(plans), plans, [dataset_dir] * len(plans)):
                done += 1
                if progress:
                    progress(done, len(plans))
    return finalize_dataset(
        dataset_dir,
        name=dataset_prefix(reader),
        shard_names=[p.name for p in plans],
        provenance=Provenance.now(reader.source, reader.spec()),
    )
