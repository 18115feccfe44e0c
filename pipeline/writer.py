"""Atomic, byte-reproducible webdataset shard writing.

Writers that go straight to the final file name (``webdataset.ShardWriter``) leave a truncated shard
after a crash, which readers then trust. Here members go to a temporary ``NAME.tar.<pid>-<random>.tmp``
(unique, so two processes never share one), with a fixed mtime, owner and mode and members sorted by
extension, so equal input gives equal bytes; the file is fsync'ed and renamed, and only then is
``NAME.stats.json`` written. That stats file is the completion marker and records the shard's
fingerprint (what shaped its bytes): a rerun skips a shard whose marker has the same fingerprint and
rewrites every other one (pipeline/convert.py decides, under the dataset lock, whether it may).

The same rule holds on object storage (`pipeline.storage`): the shard is uploaded as the temporary object,
copied server-side to its final key (a final-named object is always complete) and the temporary deleted,
and only then is the marker object written. Before each final-key copy and marker write the run's bucket lock
lease is checked (`pipeline.locking.check_lease`): a run that lost it publishes nothing more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import secrets
import tarfile
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.locking import check_lease
from pipeline.records import Reject, Sample
from pipeline.schema import SchemaError, validate_sample
from pipeline.storage import as_path, fsync_dir, is_remote, replace

log = logging.getLogger(__name__)

TAR_MTIME = 0  # fixed so that shards are byte-reproducible
TAR_OWNER = "smartedit"
STATS_SUFFIX = ".stats.json"


@dataclass
class ShardStats:
    """What one finished shard holds; written as ``NAME.stats.json`` after the shard is in place."""

    url: str  # shard file name, relative to the dataset directory
    nsamples: int
    filesize: int
    md5sum: str
    sha256: str
    n_in: int  # records offered to the shard: n_in == nsamples + n_rejected
    n_rejected: int
    kinds: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific counters (e.g. per-stage yields)
    fingerprint: str = ""  # sha256 of `build`: everything that shaped this shard's bytes
    build: dict[str, Any] = field(default_factory=dict)  # source spec and options, record range, code hash

    @classmethod
    def load(cls, path: Path) -> "ShardStats":
        return cls(**json.loads(as_path(path).read_text()))


def stats_path(shard_path: Path) -> Path:
    return shard_path.with_name(shard_path.name.removesuffix(".tar") + STATS_SUFFIX)


def temporary_path(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process or thread can pick (pid + random token)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete ``*.tmp`` files left by killed runs (call only with the directory's lock held)."""
    directory = as_path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for tmp in directory.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    if removed:
        log.info("%s: removed %d temporary file(s) of an interrupted run", directory, len(removed))
    return removed


class _HashingFile:
    """A write-only file whose md5 and sha256 are computed while it is written, each in its own thread.

    hashlib releases the GIL on large buffers, so both digests overlap the disk writes instead of
    following them (md5 alone runs at about half the speed of a page-cache write on our machines).
    """

    def __init__(self, path: Path):
        # a local file, or an object-storage upload that creates the (temporary) object only on close
        self._remote = is_remote(path)
        self._f = path.open("wb") if self._remote else open(path, "wb")
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._queues: list[queue.SimpleQueue] = [queue.SimpleQueue(), queue.SimpleQueue()]
        self._threads = [
            threading.Thread(target=self._digest, args=(q, h), daemon=True)
            for q, h in zip(self._queues, (self.md5, self.sha256))
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _digest(q: queue.SimpleQueue, h) -> None:
        while (data := q.get()) is not None:
            h.update(data)

    def write(self, data: bytes) -> None:
        for q in self._queues:
            q.put(data)
        self.size += len(data)
        self._f.write(data)

    def _join(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()

    def close_synced(self) -> None:
        self._join()
        self._f.flush()
        if not self._remote:
            os.fsync(self._f.fileno())
        self._f.close()

    def abandon(self) -> None:
        self._join()
        try:
            self._f.close()
        except OSError:  # closing flushes the buffer, which fails again on a full disk; the file is deleted anyway
            pass


class _TarStream:
    """Tar framing with the standard library's `tarfile.TarInfo`, one write per member.

    Why not `webdataset.TarWriter`: importing webdataset imports torch (≈1.7 s per process, paid by
    every CLI call and worker), and it streams each member through 10 KB copies. The bytes written are
    a plain GNU tar that webdataset, wids and `tarfile` read; members are sorted by extension and carry
    a fixed mtime, owner and mode, so equal samples give equal bytes.
    """

    def __init__(self, sink: _HashingFile):
        self._sink = sink
        self._offset = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o444
        info.uname = info.gname = TAR_OWNER
        header = info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")
        pad = -len(data) % tarfile.BLOCKSIZE
        self._sink.write(header)
        self._sink.write(data)  # never copied: the payload goes to the file and both digests as is
        if pad:
            self._sink.write(b"\0" * pad)
        self._offset += len(header) + len(data) + pad

    def write_sample(self, sample: dict[str, bytes]) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if k != "__key__"):
            self.add(f"{key}.{ext}", sample[ext])

    def close(self) -> None:
        end = b"\0" * (2 * tarfile.BLOCKSIZE)
        total = self._offset + len(end)
        self._sink.write(end + b"\0" * (-total % tarfile.RECORDSIZE))


def _encode(sample: Sample) -> dict[str, bytes]:
    obj: dict[str, Any] = {"__key__": sample.key}
    obj.update(sample.files)
    obj["json"] = json.dumps(sample.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return obj


def write_shard(
    path: Path | str,
    items: Iterable[Sample | Reject],
    *,
    validate: bool = True,
    extra: dict[str, Any] | None = None,
    fingerprint: str = "",
    build: dict[str, Any] | None = None,
) -> ShardStats:
    """Write the samples of ``items`` to the shard ``path`` atomically; quarantine the rejects.

    Skips the work and returns the recorded stats when the shard's completion marker exists and records
    ``fingerprint`` (the hash of ``build``, what shapes the bytes); otherwise writes the shard. A sample
    that fails schema validation becomes a reject (reason ``schema``), as does a repeated key
    (``duplicate_key``). Exceptions raised by ``items`` itself propagate: the shard is then left
    unfinished (only its ``.tar.tmp``) and a rerun writes it again.
    """
    path = as_path(path)
    marker = stats_path(path)
    if marker.exists() and path.exists():
        stats = ShardStats.load(marker)
        if stats.fingerprint == fingerprint:
            log.info("shard %s is complete, skipping", path.name)
            return stats
        log.info("shard %s was built with other settings; rewriting it", path.name)
        check_lease(path)  # removing another run's marker is publishing too
    marker.unlink(missing_ok=True)
    if not is_remote(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    sink = _HashingFile(tmp)
    kinds: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    rejects: list[dict[str, str]] = []
    seen: set[str] = set()
    n_in = 0
    try:
        tar = _TarStream(sink)
        for item in items:
            n_in += 1
            if isinstance(item, Sample):
                item = _admit(item, seen, validate)
            if isinstance(item, Reject):
                reasons[item.reason] += 1
                rejects.append(item.to_json())
                continue
            tar.write_sample(_encode(item))
            seen.add(item.key)
            kinds[item.kind] += 1
            sources[str(item.meta.get("source", ""))] += 1
        tar.close()
        sink.close_synced()
        check_lease(path)  # a bucket run whose lock lease was lost publishes nothing more (pipeline/locking.py)
    except BaseException:
        sink.abandon()
        tmp.unlink(missing_ok=True)
        raise
    replace(tmp, path)
    fsync_dir(path.parent)
    stats = ShardStats(
        url=path.name,
        nsamples=len(seen),
        filesize=sink.size,
        md5sum=sink.md5.hexdigest(),
        sha256=sink.sha256.hexdigest(),
        n_in=n_in,
        n_rejected=len(rejects),
        kinds=dict(sorted(kinds.items())),
        sources=dict(sorted(sources.items())),
        rejected_by_reason=dict(sorted(reasons.items())),
        rejects=rejects,
        extra=extra or {},
        fingerprint=fingerprint,
        build=build or {},
    )
    atomic_write_text(marker, json.dumps(asdict(stats), indent=1, sort_keys=True))
    log.info("wrote %s: %d samples, %d rejected", path.name, stats.nsamples, stats.n_rejected)
    return stats


def _admit(sample: Sample, seen: set[str], validate: bool) -> Sample | Reject:
    location = f"{sample.meta.get('source', '?')}:{sample.meta.get('source_id', sample.key)}"
    if sample.key in seen:
        return Reject(location, "duplicate_key", f"key {sample.key!r} already written in this shard")
    if validate:
        try:
            validate_sample(sample)
        except SchemaError as err:
            return Reject(location, "schema", str(err))
    return sample


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a fsync'ed temporary file and a rename (on a bucket: a temporary
    object, then a copy to the final key)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write_text` for bytes (a contact sheet's PNG, ...)."""
    path = as_path(path)
    tmp = temporary_path(path)
    try:
        if is_remote(path):
            tmp.write_bytes(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        check_lease(path)  # see write_shard
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
