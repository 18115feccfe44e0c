"""An exclusive lock per dataset directory, and pool workers that die with their parent.

Two conversions into one output would interleave their shards (and once shared one temporary file):
the second must fail at once, saying who holds the directory. ``fcntl.flock`` on ``.lock`` in the
dataset directory does that: the kernel drops the lock when the holder dies (even by kill -9), so a
stale lock file never blocks a rerun. The holder's pid is written into the file for the message.
(`filelock` wraps the same call but neither records nor reports the holder.)

A ``ProcessPoolExecutor`` worker outlives a parent killed with SIGKILL and keeps writing; on Linux
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill it when the parent goes, elsewhere a
watcher thread polls the parent's pid.

On a bucket there is no flock: the lock is the object ``<dataset>/.lock``, created with an exclusive
(conditional, ``If-None-Match: *``) PUT that fails when it exists, and deleted on release. A holder killed
with -9 leaves it behind; the error names the holder (host, pid, time) and says to delete the object once
that run is known dead.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.storage import as_path, is_remote

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_PR_SET_PDEATHSIG = 1


class DatasetLockedError(RuntimeError):
    """Another live process holds the dataset directory's lock."""


class DatasetLock:
    """``with DatasetLock(dataset_dir):`` — exclusive, non-blocking; `DatasetLockedError` names the holder's pid."""

    def __init__(self, dataset_dir: Path | str):
        self.dataset_dir = as_path(dataset_dir)
        self.path = self.dataset_dir / LOCK_NAME
        self._fd: int | None = None
        self._held_remote = False

    def _acquire_remote(self) -> "DatasetLock":
        holder = f"{socket.gethostname()} pid {os.getpid()} since {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
        try:
            with self.path.fs.open(self.path.path, "xb") as f:  # exclusive create: a conditional PUT
                f.write(holder.encode())
        except FileExistsError:
            try:
                other = self.path.read_text().strip() or "unknown"
            except FileNotFoundError:
                other = "a run that just finished"
            raise DatasetLockedError(
                f"{self.dataset_dir}: another conversion ({other}) is writing this dataset; wait for it to finish "
                f"or write to another --out (if that run is dead, delete {self.path})") from None
        self._held_remote = True
        return self

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
        if self._held_remote:
            self.path.unlink(missing_ok=True)
            self._held_remote = False
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


def worker_initializer(parent_pid: int) -> None:
    """Pool initializer: make this worker die when ``parent_pid`` does (see the module docstring)."""
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
