"""An exclusive lock per dataset directory, and pool workers that die with their parent.

Two conversions into one output would interleave their shards (and once shared one temporary file):
the second must fail at once, saying who holds the directory. ``fcntl.flock`` on ``.lock`` in the
dataset directory does that: the kernel drops the lock when the holder dies (even by kill -9), so a
stale lock file never blocks a rerun. The holder's pid is written into the file for the message.
(`filelock` wraps the same call but neither records nor reports the holder.)

A ``ProcessPoolExecutor`` worker outlives a parent killed with SIGKILL and keeps writing; on Linux
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill it when the parent goes, elsewhere a
watcher thread polls the parent's pid.

On a bucket there is no flock and no kernel to notice a dead holder, so the lock is a *lease*: the object
``<dataset>/.lock`` holds JSON (host, pid, a random token, acquired time, ttl seconds), created with a
conditional PUT (``If-None-Match: *``). The holder rewrites it every ttl/3 from a daemon thread with
``If-Match: <ETag of its own last write>``; when that fails (another run took an expired lease over) or no
renewal succeeded for 2/3 of a ttl, the lease is lost and `check_lease` (called by the writer before every
final-key copy and marker write) refuses to publish anything more. Processes that publish for the holder without
renewing (pool workers: `worker_initializer`; Prefect tasks: `adopted_leases`) check by reading the lock object:
still the holder's token, renewed less than 2/3 of a ttl ago by the server's clock. A contender that finds the
object judges its age by the server's clock only (its ``Last-Modified`` against the ``Date`` of the same
response; hosts' clocks are never compared): a live lease is refused naming the holder and when it expires; an
expired one (a run killed with -9; expired = older than its ttl plus a second, the headers' resolution) is taken
over with ``If-Match: <the stale ETag>``, so of two contenders racing for it exactly one wins (S3 applies
conditional writes to one key one at a time). Release deletes the object only while it is still ours
(``If-Match``). TTL: ``SMARTEDIT_LOCK_TTL`` seconds, default 60. Hand-written because fsspec/s3fs offer
exclusive create but no lease, renewal or conditional overwrite; the S3 calls themselves go through s3fs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from pipeline.storage import as_path, conditional_write_refused, is_remote

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_PR_SET_PDEATHSIG = 1


class DatasetLockedError(RuntimeError):
    """Another live process holds the dataset directory's lock."""


class LeaseLostError(DatasetLockedError):
    """This run's lease on a bucket dataset was lost (taken over or expired): it must publish nothing more."""


LOCK_TTL_ENV = "SMARTEDIT_LOCK_TTL"
DEFAULT_LOCK_TTL = 60.0
# Last-Modified and Date have whole-second resolution: a lease counts as expired only this much past its ttl.
_CLOCK_GRANULARITY = 1.0
# A holder publishes only while its last renewal is younger than this part of the ttl (renewals come every third):
# the last third, plus the clock granularity, is left for a publish already in flight before a contender may take over.
_SAFE_FRACTION = 2 / 3
_takeover_hook: Callable[[], None] | None = None  # test seam: runs between reading a stale lease and taking it over


def lock_ttl() -> float:
    """The bucket lease's time to live in seconds: ``$SMARTEDIT_LOCK_TTL`` or 60."""
    raw = os.environ.get(LOCK_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = math.nan
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"{LOCK_TTL_ENV}={raw!r}: not a positive number of seconds; "
                         f"set it to the bucket lock's lease time, e.g. {LOCK_TTL_ENV}=60, or unset it")
    return ttl


def _unsupported(err: BaseException) -> bool:
    """True when the server rejected a conditional header it does not implement."""
    response = getattr(err.__cause__, "response", None) or {}
    code = (response.get("Error") or {}).get("Code", "")
    return code in ("NotImplemented", "InvalidArgument", "InvalidRequest") or \
        (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") == 501


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _LockObject:
    """The lease object's S3 calls (through s3fs): bucket and key of ``<dataset>/.lock``."""

    def __init__(self, path):
        self.path = path
        self.fs = path.fs
        self.bucket, self.key, _ = self.fs.split_path(path.path)

    def create(self, body: bytes) -> str:
        """Exclusive create; FileExistsError when the object exists (s3fs maps 412 to it; a 409 or a 412 other
        stores send without its Condition element come as OSError). Returns the new ETag."""
        try:
            return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*")["ETag"]
        except FileExistsError:
            raise
        except OSError as err:
            if conditional_write_refused(err):
                raise FileExistsError(str(self.path)) from err
            raise

    def overwrite(self, body: bytes, etag: str) -> str:
        """Overwrite only while the object's ETag is ``etag``; the new ETag."""
        return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, IfMatch=etag)["ETag"]

    def read(self) -> tuple[dict[str, Any], str, datetime, datetime]:
        """(the lease, its ETag, its Last-Modified, the server's time now); FileNotFoundError when absent."""
        from fsspec.asyn import sync

        response, raw = sync(self.fs.loop, self._get)
        date = (response.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else response["LastModified"]
        try:
            lease = json.loads(raw)
            if not isinstance(lease, dict):
                raise ValueError
        except ValueError:  # a lock written before leases (one line: host, pid, time)
            lease = {"holder": raw.decode("utf-8", "replace").strip() or "unknown"}
        return lease, response["ETag"], response["LastModified"], now

    async def _get(self) -> tuple[dict[str, Any], bytes]:
        response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
        async with response["Body"] as body:
            return response, await body.read()

    def delete(self, etag: str) -> None:
        """Delete only while the object's ETag is ``etag`` (a server without conditional deletes: check, delete)."""
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=etag)
        except OSError as err:
            if not _unsupported(err):
                raise
            _, current, _, _ = self.read()  # no If-Match on DELETE here: a small window remains
            if current != etag:
                raise
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


def _describe(lease: dict[str, Any]) -> str:
    if "holder" in lease:
        return str(lease["holder"])
    return f"host {lease.get('host', '?')} pid {lease.get('pid', '?')}, since {lease.get('acquired', '?')}"


class Lease:
    """This process's lease on a bucket dataset: renewed from a daemon thread; `check` raises once it is lost.

    In a process that did not take it (a pool worker), `check` reads the lock object instead: still our token,
    and not expired by the server's clock."""

    def __init__(self, lock_path, dataset: str, token: str, ttl: float, etag: str = "", owner_pid: int = -1):
        self.lock_path, self.dataset, self.token, self.ttl = lock_path, dataset, token, ttl
        self.etag, self.owner_pid = etag, owner_pid
        self.lost: str | None = None
        self._body: dict[str, Any] = {}
        self._renewed_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, body: dict[str, Any]) -> None:
        self._body = body
        self._renewed_at = time.monotonic()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.lock_path}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        obj = _LockObject(self.lock_path)
        wait = self.ttl / 3
        while not self._stop.wait(wait) and self.lost is None:
            sent = time.monotonic()
            self._body["renewals"] = self._body.get("renewals", 0) + 1  # a new ETag every time
            try:
                self.etag = obj.overwrite(json.dumps(self._body).encode(), self.etag)
                self._renewed_at, wait = sent, self.ttl / 3
            except Exception as err:  # noqa: BLE001 - any failure: retry soon, until the lease is unsafe
                if conditional_write_refused(err) or isinstance(err, FileNotFoundError):
                    self._lose("another run took it over after it expired" if conditional_write_refused(err)
                               else "its lock object was deleted")
                    return
                log.warning("%s: renewing the lock lease failed (%s); retrying", self.lock_path, err)
                wait = self.ttl / 10
                if self._unsafe():
                    self._lose(f"no renewal succeeded for {_SAFE_FRACTION * self.ttl:.3g} s, 2/3 of its ttl ({err})")
                    return

    def _unsafe(self) -> bool:
        return time.monotonic() - self._renewed_at >= _SAFE_FRACTION * self.ttl

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            log.error("%s: lost this run's lock lease: %s; publishing nothing more", self.lock_path, why)

    def stop_renewing(self) -> None:
        """Stop the renewal thread (release; tests use it to let a lease expire under a live holder)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def check(self, target: str) -> None:
        if os.getpid() == self.owner_pid:
            if self.lost is None and self._unsafe():
                self._lose(f"not renewed for {_SAFE_FRACTION * self.ttl:.3g} s, 2/3 of its ttl")
        elif self.lost is None:
            try:  # a pool worker: the renewing thread is the parent's, so ask the lock object
                lease, _, modified, now = _LockObject(as_path(str(self.lock_path))).read()
            except FileNotFoundError:
                lease, modified, now = {}, None, None
            if lease.get("token") != self.token:
                self.lost = f"the lock is now held by {_describe(lease)}" if lease else "its lock object is gone"
            elif (now - modified).total_seconds() >= _SAFE_FRACTION * self.ttl + _CLOCK_GRANULARITY:
                self.lost = f"not renewed since {_iso(modified)} (server time), ttl {self.ttl:g} s"
        if self.lost is not None:
            raise LeaseLostError(f"{target}: not published: this run lost its lock lease on {self.dataset} "
                                 f"({self.lost}); another run may be writing it now: rerun once that one is done")


_LEASES: dict[str, Lease] = {}  # dataset URL -> the lease this process (or its parent) holds on it


def check_lease(target) -> None:
    """Call before publishing ``target`` (a final key or a marker): raise `LeaseLostError` when it lies in a bucket
    dataset whose lease this run held and lost. Paths outside every held lease (local ones) pass."""
    if not _LEASES:
        return
    name = str(target)
    for dataset, lease in list(_LEASES.items()):
        if name == dataset or name.startswith(dataset.rstrip("/") + "/"):
            lease.check(name)


def held_leases() -> tuple[tuple[str, str, float], ...]:
    """(dataset, token, ttl) of the leases held here: for `worker_initializer` and `adopted_leases` in the processes
    (pool workers, Prefect task runners, other machines) that publish into those datasets."""
    return tuple((dataset, lease.token, lease.ttl) for dataset, lease in _LEASES.items())


_ADOPTED: dict[str, int] = {}  # dataset -> how many `adopted_leases` blocks in this process use its entry


@contextmanager
def adopted_leases(leases: Iterable[Sequence[Any]]):
    """Within the block, check ``leases`` (another process's `held_leases`) before publishing: for a task that runs
    in a process which does not hold the lock itself (it asks the lock object, `Lease.check`)."""
    added = []
    for dataset, token, ttl in leases:
        if dataset in _LEASES and dataset not in _ADOPTED:
            continue  # this process holds it (a thread runner): its own renewals decide
        if dataset not in _ADOPTED:
            _LEASES[dataset] = Lease(as_path(dataset) / LOCK_NAME, dataset, token, float(ttl))
        _ADOPTED[dataset] = _ADOPTED.get(dataset, 0) + 1
        added.append(dataset)
    try:
        yield
    finally:
        for dataset in added:
            _ADOPTED[dataset] -= 1
            if not _ADOPTED[dataset]:
                del _ADOPTED[dataset]
                _LEASES.pop(dataset, None)


class DatasetLock:
    """``with DatasetLock(dataset_dir):`` — exclusive, non-blocking; `DatasetLockedError` names the holder's pid.

    On a bucket the lock is a lease (module docstring); ``lease`` is it while held."""

    def __init__(self, dataset_dir: Path | str):
        self.dataset_dir = as_path(dataset_dir)
        self.path = self.dataset_dir / LOCK_NAME
        self._fd: int | None = None
        self.lease: Lease | None = None

    def _acquire_remote(self) -> "DatasetLock":
        ttl = lock_ttl()
        obj = _LockObject(self.path)
        body = {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(16),
                "acquired": _iso(datetime.now(timezone.utc)), "ttl": ttl}
        data = json.dumps(body).encode()
        for _ in range(3):  # the object may vanish or change between the calls below: look again
            try:
                etag = obj.create(data)
                break
            except FileExistsError:
                pass
            try:
                other, stale_etag, modified, now = obj.read()
            except FileNotFoundError:
                continue  # released meanwhile
            try:
                other_ttl = float(other.get("ttl") or ttl)
            except (TypeError, ValueError):  # not ours to trust: judge it by this run's ttl
                other_ttl = ttl
            expires = modified + timedelta(seconds=other_ttl)
            if (now - modified).total_seconds() <= other_ttl + _CLOCK_GRANULARITY:
                raise DatasetLockedError(
                    f"{self.dataset_dir}: another run ({_describe(other)}) holds its lock lease {self.path}, which "
                    f"expires at {_iso(expires)} (server time) unless that run renews it; wait for it to finish "
                    "or write to another --out")
            if _takeover_hook is not None:
                _takeover_hook()
            try:
                etag = obj.overwrite(data, stale_etag)
            except FileNotFoundError:
                continue
            except OSError as err:
                if not conditional_write_refused(err):
                    raise
                continue  # another contender took it over first: the next look names it
            log.warning("%s: took over the lock lease of %s, expired at %s (server time)",
                        self.dataset_dir, _describe(other), _iso(expires))
            break
        else:
            raise DatasetLockedError(f"{self.dataset_dir}: its lock {self.path} keeps changing hands; "
                                     "another run is starting there: wait for it or write to another --out")
        self.lease = Lease(self.path, str(self.dataset_dir), body["token"], ttl, etag, os.getpid())
        self.lease.start(body)
        _LEASES[str(self.dataset_dir)] = self.lease
        return self

    def _release_remote(self) -> None:
        lease, self.lease = self.lease, None
        if _LEASES.get(str(self.dataset_dir)) is lease:
            del _LEASES[str(self.dataset_dir)]
        lease.stop_renewing()
        try:  # conditional: if another run took it over, the object is its lock now
            _LockObject(self.path).delete(lease.etag)
        except FileNotFoundError:
            pass
        except Exception as err:  # noqa: BLE001 - a release never hides the run's own outcome
            if conditional_write_refused(err):
                log.warning("%s: the lock lease was taken over before release; left to its new holder", self.path)
            else:
                log.warning("%s: could not delete the lock lease (%s); it expires %g s after its last renewal",
                            self.path, err, lease.ttl)

    def acquire(self) -> "DatasetLock":
        if is_remote(self.dataset_dir):
            return self._acquire_remote()
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DatasetLockedError(
                    f"{self.dataset_dir}: another conversion (pid {holder}) is writing this dataset; "
                    "wait for it to finish or write to another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self.lease is not None:
            self._release_remote()
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DatasetLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def worker_initializer(parent_pid: int, leases: tuple[tuple[str, str, float], ...] = ()) -> None:
    """Pool initializer: make this worker die when ``parent_pid`` does (see the module docstring), and have it check
    the parent's bucket ``leases`` (`held_leases`) before publishing (a forked worker inherits them anyway)."""
    for dataset, token, ttl in leases:
        _LEASES[dataset] = Lease(as_path(dataset) / LOCK_NAME, dataset, token, ttl, owner_pid=parent_pid)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl failed")
        except (OSError, AttributeError):
            threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
