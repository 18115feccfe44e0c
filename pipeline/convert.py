"""Convert any source into shards: plan fixed shard boundaries, write each shard, then the manifest.

A reader lists its records cheaply and in a deterministic order; shard ``i`` always holds records
``[i * shard_size, (i + 1) * shard_size)``, so a conversion killed at any point and run again
rewrites exactly the unfinished shards and produces the same bytes. One shard is the unit of work
for a process pool or a Prefect task, never one sample.

The driver is written once and has three steps, which the CLI (`convert`) and the Prefect flows
(flows/convert.py, one task per shard) both call:

1. `prepare_conversion`: take the dataset directory's lock, check the whole-file inputs (a corrupt
   annotation file stops the run here, before any shard is written), plan the shards and their
   fingerprints, and reconcile them with what is on disk (the rerun rule below);
2. `convert_shard` for every planned shard (any process; skipped when already complete);
3. `finish_conversion`: the manifest, with the input fingerprint that scheduled retraining compares.

Rerun rule: every shard's completion marker records a fingerprint of everything that shapes its bytes
(the reader's spec and options, the shard's record range, and the code of the reader and the
writer). A rerun keeps a finished shard only when its fingerprint is the planned one; otherwise, and
for tars no longer in the plan, it refuses with one line naming what changed, unless ``overwrite``,
which rebuilds those shards and removes the stale tars. Old shards are never kept under new settings.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.fingerprint import code_fingerprint, tree_fingerprint
from pipeline.locking import DatasetLock, held_leases, worker_initializer
from pipeline.manifest import finalize_dataset
from pipeline.provenance import Provenance, spec_hash
from pipeline.records import Reject, Sample
from pipeline.sources.base import SourceError
from pipeline.sources.images import RejectError
from pipeline.storage import as_path, is_remote
from pipeline.writer import ShardStats, remove_stale_temporaries, stats_path, write_shard

log = logging.getLogger(__name__)


class SourceReader(Protocol):
    """What a converter for one dataset provides (see pipeline/sources/).

    Must be picklable (shards run in worker processes). ``records()`` is cheap and deterministic;
    ``read()`` does the heavy work for one record and returns a Sample or a Reject. An exception
    from ``read()`` is caught by the driver and quarantined as ``read_error``. ``check_inputs()``
    loads every whole-file input (annotation files, image directories) and raises `SourceError` when
    one is unusable: that stops the run before any shard is written.
    """

    source: str
    split: str
    root: Path

    def spec(self) -> dict[str, Any]: ...

    def check_inputs(self) -> None: ...

    def records(self) -> Sequence[Any]: ...

    def location(self, index: int, record: Any) -> str: ...

    def read(self, index: int, record: Any) -> Sample | Reject: ...


class ConversionRefused(ValueError):
    """A rerun would mix shards built with other settings; the message names what changed and --overwrite."""


class OutputError(ValueError):
    """The output path cannot be written (a file, read-only, full disk); nothing final-named was left behind."""


@dataclass(frozen=True)
class ShardPlan:
    name: str  # shard file name
    start: int
    stop: int
    fingerprint: str = ""  # sha256 of `build` below
    build: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # what shapes the bytes


@dataclass
class ConversionPlan:
    """One dataset's planned shards (returned by `prepare_conversion`, consumed by `finish_conversion`)."""

    dataset_dir: Path
    name: str
    source: str
    spec: dict[str, Any]
    shards: list[ShardPlan]
    input_root: str
    rebuilt: list[str] = field(default_factory=list)  # shards whose old fingerprint differed (overwrite)
    removed: list[str] = field(default_factory=list)  # stale tars removed (overwrite)


def plan_shards(prefix: str, n_records: int, shard_size: int) -> list[ShardPlan]:
    """Fixed boundaries: shard i covers records [i*shard_size, (i+1)*shard_size). Always at least one shard."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    n_shards = max(1, -(-n_records // shard_size))
    return [
        ShardPlan(f"{prefix}-{i:06d}.tar", i * shard_size, min(n_records, (i + 1) * shard_size))
        for i in range(n_shards)
    ]


def shard_build(reader: SourceReader, plan: ShardPlan, shard_size: int) -> dict[str, Any]:
    """Everything that shapes a shard's bytes: reader spec and options, record range, code of reader and writer."""
    spec = reader.spec()
    return {
        "source": spec.get("source"), "split": spec.get("split"), "variant": spec.get("variant"),
        "options": spec.get("options", {}), "source_spec_hash": spec_hash(spec.get("source_spec", {})),
        "shard_size": shard_size, "records": [plan.start, plan.stop],
        "code": code_fingerprint(getattr(reader, "code_module", type(reader).__module__)),
    }


def _fingerprinted(reader: SourceReader, plans: list[ShardPlan], shard_size: int) -> list[ShardPlan]:
    out = []
    for p in plans:
        build = shard_build(reader, p, shard_size)
        out.append(ShardPlan(p.name, p.start, p.stop, spec_hash(build), build))
    return out


def _safe_reads(reader: SourceReader, records: Sequence[Any], plan: ShardPlan) -> Iterator[Sample | Reject]:
    for index in range(plan.start, plan.stop):
        record = records[index]
        try:
            yield reader.read(index, record)
        except RejectError as err:
            yield Reject(reader.location(index, record), err.reason, err.detail)
        except SourceError:
            raise  # a whole-file problem met late (its file changed under us): stop, do not quarantine
        except Exception as err:  # bad input never stops a conversion: quarantine it with its cause
            log.debug("read failed at %s", reader.location(index, record), exc_info=True)
            yield Reject(reader.location(index, record), "read_error", f"{type(err).__name__}: {err}")


def convert_shard(reader: SourceReader, plan: ShardPlan, dataset_dir: Path | str) -> ShardStats:
    """Write one planned shard (skipped when complete with the same fingerprint; see `prepare_conversion`)."""
    records = reader.records()
    return write_shard(as_path(dataset_dir) / plan.name, _safe_reads(reader, records, plan),
                       fingerprint=plan.fingerprint, build=plan.build)


def dataset_prefix(reader: SourceReader) -> str:
    return f"{reader.source}-{reader.split}".replace("+", "plus")


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'shard_size 4 → 2, options.max_pixels 100 → 50': the fields of a build that differ."""
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            parts += [f"{key}.{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif key == "records":
            continue  # follows from shard_size (or from the source changing size), named through those
        else:
            parts.append(f"{key} {a!r} → {b!r}")
    return ", ".join(parts) or "records per shard (the source's record count changed)"


def shard_plans(reader: SourceReader, shard_size: int) -> list[ShardPlan]:
    """The fingerprinted shard plan of ``reader`` (deterministic: any process computes the same one)."""
    return _fingerprinted(reader, plan_shards(dataset_prefix(reader), len(reader.records()), shard_size), shard_size)


def prepare_conversion(reader: SourceReader, dataset_dir: Path | str, *, shard_size: int = 1000,
                       overwrite: bool = False) -> ConversionPlan:
    """Check inputs, plan shards, apply the rerun rule. Call with the dataset's `DatasetLock` held."""
    dataset_dir = as_path(dataset_dir)
    reader.check_inputs()  # whole-file problems stop here, before any shard is written
    prefix = dataset_prefix(reader)
    plans = shard_plans(reader, shard_size)
    planned = {p.name for p in plans}
    remove_stale_temporaries(dataset_dir)  # we hold the lock: any temporary is a dead run's
    mismatched: list[tuple[ShardPlan, str]] = []
    for p in plans:
        marker = stats_path(dataset_dir / p.name)
        if marker.exists():
            old = ShardStats.load(marker)
            if old.fingerprint != p.fingerprint:
                mismatched.append((p, _changed(old.build or {}, p.build)))
    stale = sorted(f.name for f in dataset_dir.glob("*.tar") if f.name not in planned) if dataset_dir.is_dir() else []
    if (mismatched or stale) and not overwrite:
        if mismatched:
            p, what = mismatched[0]
            raise ConversionRefused(
                f"{dataset_dir}: {len(mismatched)} finished shard(s) (first {p.name}) were built with other settings "
                f"({what}); rerun with --overwrite to rebuild them, or convert into another --out")
        raise ConversionRefused(
            f"{dataset_dir}: {len(stale)} shard(s) not in this plan (first {stale[0]}) are left from a run with other "
            f"settings; rerun with --overwrite to remove them, or convert into another --out")
    for p, _ in mismatched:
        for path in (dataset_dir / p.name, stats_path(dataset_dir / p.name)):
            path.unlink(missing_ok=True)
    for name in stale:
        (dataset_dir / name).unlink(missing_ok=True)
        stats_path(dataset_dir / name).unlink(missing_ok=True)
    if mismatched or stale:
        log.warning("%s: rebuilding %d shard(s) built with other settings, removed %d stale shard(s)",
                    dataset_dir, len(mismatched), len(stale))
    return ConversionPlan(dataset_dir, prefix, reader.source, reader.spec(), plans, str(reader.root),
                          [p.name for p, _ in mismatched], stale)


def input_fingerprint(plan: ConversionPlan) -> str:
    """The fingerprint of the input tree (`pipeline.fingerprint.tree_fingerprint` of the source root)."""
    return tree_fingerprint(plan.input_root)


def finish_conversion(plan: ConversionPlan) -> dict[str, Any]:
    """Write the manifest of a prepared conversion whose shards are all written; return it."""
    return finalize_dataset(
        plan.dataset_dir,
        name=plan.name,
        shard_names=[p.name for p in plan.shards],
        fingerprints={p.name: p.fingerprint for p in plan.shards},
        provenance=Provenance.now(plan.source, plan.spec),
        extra={"input_fingerprint": input_fingerprint(plan)},  # so retraining can skip unchanged inputs
    )


def _output_error(dataset_dir: Path, err: OSError) -> OutputError:
    return OutputError(f"{dataset_dir}: cannot write the output ({err.strerror or err}); "
                       "choose an --out that is a writable directory with free space")


_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                            errno.ENOTDIR, errno.EEXIST})


def _is_output_failure(err: OSError, dataset_dir: Path) -> bool:
    filename = str(err.filename or "")
    return err.errno in _OUTPUT_ERRNOS or (bool(filename) and filename.startswith(str(dataset_dir)))


def make_output_dir(dataset_dir: Path) -> None:
    if is_remote(dataset_dir):
        return  # a bucket prefix needs no creating; write errors name the URL when they happen
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(dataset_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as err:
        raise _output_error(dataset_dir, err) from None


def convert(
    reader: SourceReader,
    dataset_dir: Path | str,
    *,
    shard_size: int = 1000,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Convert every record of ``reader`` into ``dataset_dir``; return the manifest (shardindex.json)."""
    dataset_dir = as_path(dataset_dir)
    make_output_dir(dataset_dir)
    with DatasetLock(dataset_dir):
        plan = prepare_conversion(reader, dataset_dir, shard_size=shard_size, overwrite=overwrite)
        done = 0
        try:
            if workers <= 1:
                for shard in plan.shards:
                    convert_shard(reader, shard, dataset_dir)
                    done += 1
                    if progress:
                        progress(done, len(plan.shards))
            else:
                # Workers die with this process (worker_initializer): a killed conversion leaves no orphan writing;
                # they check this run's bucket lease before publishing.
                with ProcessPoolExecutor(max_workers=workers, initializer=worker_initializer,
                                         initargs=(os.getpid(), held_leases())) as pool:
                    n = len(plan.shards)
                    for _ in pool.map(convert_shard, [reader] * n, plan.shards, [dataset_dir] * n):
                        done += 1
                        if progress:
                            progress(done, n)
            return finish_conversion(plan)
        except OSError as err:
            if _is_output_failure(err, dataset_dir):
                raise _output_error(dataset_dir, err) from None
            raise
