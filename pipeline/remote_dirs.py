"""Directories on a bucket: uploaded whole with a completion marker, downloaded into a local cache.

A training checkpoint or an exported pipeline is a directory of files. Locally it appears complete in one step
(written under ``.tmp``, then renamed); a bucket has no directory rename, so an uploaded directory counts as
complete only once its marker object ``_COMPLETE`` exists, and the marker is written last::

    s3://bucket/runs/x/checkpoints/step-00000004/trainable.safetensors
    s3://bucket/runs/x/checkpoints/step-00000004/...
    s3://bucket/runs/x/checkpoints/step-00000004/_COMPLETE      ← written after every other file

An upload killed half-way leaves files without the marker: readers (``latest`` resume, pipeline loading) skip
it or refuse it by name. The transfers themselves are fsspec's (``fs.put`` / ``fs.get``, recursive); what is
written here is only the marker rule and where the local copies live.

Local copies live under ``$SMARTEDIT_CACHE`` (default ``~/.cache/smartedit``): ``runs/<name>-<hash>`` is the
staging directory a run on a bucket trains into, ``downloads/<name>-<hash>`` holds downloaded checkpoints and
pipelines (``<hash>`` is of the URL, so two URLs never share a copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pipeline.storage import as_path, is_url

log = logging.getLogger(__name__)

MARKER = "_COMPLETE"


def join(location: str, *names: str) -> str:
    """``location/name/...`` for a local path or a URL (``Path`` would fold ``s3://`` into ``s3:/``)."""
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *names])
    return str(Path(location, *names))


def cache_root() -> Path:
    return Path(os.environ.get("SMARTEDIT_CACHE") or Path.home() / ".cache" / "smartedit")


def cache_dir(url: str, kind: str) -> Path:
    """The local directory that stands for ``url`` (kind: "runs" for staging, "downloads" for copies)."""
    url = str(url).rstrip("/")
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_root() / kind / f"{url.rsplit('/', 1)[-1]}-{digest}"


def _fs_path(url: str):
    path = as_path(url)
    return path.fs, path.path


def is_complete(url: str) -> bool:
    """True when the directory at ``url`` holds its completion marker."""
    fs, path = _fs_path(url)
    fs.invalidate_cache(path.rstrip("/"))  # another machine may have uploaded since this process listed it
    return fs.exists(f"{path.rstrip('/')}/{MARKER}")


def upload_dir(local: Path | str, url: str, *, replace: bool = True) -> str:
    """Upload the finished local directory to ``url``: whatever was there is removed first, marker first (a
    directory being replaced is incomplete meanwhile, and keeps no file of the old one), then every file, then
    the marker. ``replace=False`` keeps files other processes uploaded into ``url`` (the caller removed the old
    directory before they did). Returns ``url``."""
    fs, path = _fs_path(url)
    path = path.rstrip("/")
    marker = f"{path}/{MARKER}"
    if replace:
        remove_dir(url)
    elif fs.exists(marker):
        fs.rm(marker)
    # fsspec's recursive put copies the folder's contents into `path` (trailing slash: into, not below)
    fs.put(str(Path(local)) + "/", path + "/", recursive=True)
    # the token makes every upload's marker unique: a cached copy compares markers, and two uploads within one
    # second with the same file count must still differ
    fs.pipe(marker, json.dumps({"uploaded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "files": sum(1 for p in Path(local).rglob("*") if p.is_file()),
                                "token": secrets.token_hex(8)}).encode())
    log.info("uploaded %s to %s", local, url)
    return url


def remove_dir(url: str) -> None:
    """Delete an uploaded directory, its marker first (so it is never seen complete with files missing)."""
    fs, path = _fs_path(url)
    path = path.rstrip("/")
    if fs.exists(f"{path}/{MARKER}"):
        fs.rm(f"{path}/{MARKER}")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def download_dir(url: str, local: Path | str) -> Path:
    """Copy the complete directory at ``url`` to ``local`` (replacing it), through a temporary sibling renamed
    into place. Raises FileNotFoundError naming the URL when it has no marker."""
    if not is_complete(url):
        raise FileNotFoundError(f"{url}: no {MARKER} marker: the directory is missing or its upload did not finish; "
                                "pass a complete checkpoint / pipeline (or re-upload it)")
    fs, path = _fs_path(url)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp"))
    try:
        fs.get(path.rstrip("/") + "/", str(tmp) + "/", recursive=True)
        if local.exists():
            shutil.rmtree(local)
        os.replace(tmp, local)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("downloaded %s to %s", url, local)
    return local


def local_copy(location: str | Path) -> Path:
    """A local directory for ``location``: itself when local; for a URL, its copy under ``downloads/``
    (downloaded when missing, or when the bucket's marker differs from the copy's: the directory was re-uploaded).
    Several processes asking at once (every rank of a node loading ``init_from``) download it once: the check and
    the download hold an exclusive ``fcntl`` lock on ``<copy>.lock``."""
    import fcntl

    if not is_url(location):
        return Path(location)
    url = str(location)
    local = cache_dir(url, "downloads")
    local.parent.mkdir(parents=True, exist_ok=True)
    fs, path = _fs_path(url)
    with open(local.with_name(local.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            remote_marker = fs.cat_file(f"{path.rstrip('/')}/{MARKER}")
        except FileNotFoundError:
            remote_marker = None  # download_dir names the URL
        if remote_marker is None or not (local / MARKER).exists() or (local / MARKER).read_bytes() != remote_marker:
            download_dir(url, local)
    return local
