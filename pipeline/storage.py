"""Local paths and object-storage URLs behind one path type.

Shards, manifests and markers may live on a bucket (``s3://bucket/shards/magicbrush-train``, ``gs://...``)
as well as on a local disk (a path, or ``file://``). `as_path` returns a `pathlib.Path` for local locations
and a `upath.UPath` (universal-pathlib: the pathlib API over fsspec filesystems) for URLs, so the writer, the
manifest code and the readers use one set of calls. What a bucket lacks is handled here: no rename (a
server-side copy of the finished temporary object, then its deletion), no fsync (an object exists only once its
upload completed), no flock (`pipeline.locking` keeps a lease object renewed with conditional PUTs).

Credentials never appear in paths, manifests or code: fsspec's backends read them from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3`` for S3-compatible servers, or the
cloud's default chain), which a work pool fills from a Kubernetes Secret or a Prefect Secret block.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_LOCAL_SCHEMES = {"", "file", "local"}


def is_url(location: Any) -> bool:
    """True for object-storage locations (``s3://``, ``gs://``, ...); False for local paths and ``file://``."""
    if is_remote(location):
        return True
    if not isinstance(location, str) or "://" not in location:
        return False
    return urlparse(location).scheme not in _LOCAL_SCHEMES


def is_remote(path: Any) -> bool:
    """True for a `UPath` on a non-local filesystem."""
    protocol = getattr(path, "protocol", None)
    return protocol is not None and not isinstance(path, Path) and protocol not in _LOCAL_SCHEMES


def as_path(location: Any):
    """`pathlib.Path` for local paths and ``file://`` URLs, `upath.UPath` for object-storage URLs."""
    if is_remote(location) or isinstance(location, Path):
        return location
    location = os.fspath(location)
    if location.startswith("file://"):
        return Path(urlparse(location).path)
    if is_url(location):
        try:
            from upath import UPath
        except ImportError as err:  # the `s3` extra
            raise ImportError(f"{location}: object-storage paths need universal-pathlib and s3fs / gcsfs; "
                              "pip install 'smartedit-pipeline[s3]'") from err
        return UPath(location)
    return Path(location)


def replace(src, dst) -> None:
    """Move the finished temporary ``src`` onto ``dst``: a rename locally; on a bucket a server-side copy (the
    final-named object appears complete, in one step) followed by deleting the temporary."""
    if is_remote(dst):
        src.fs.mv(src.path, dst.path)
    else:
        os.replace(src, dst)


def fsync_dir(path) -> None:
    """fsync a local directory after a rename (object stores have nothing to sync)."""
    if is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def conditional_write_refused(err: BaseException) -> bool:
    """True when an s3fs error is the server refusing a conditional write: 412 Precondition Failed (the object
    changed, or exists for ``If-None-Match: *``) or 409 (a concurrent conditional write to the same key)."""
    cause = err.__cause__ if err.__cause__ is not None else err
    response = getattr(cause, "response", None) or {}
    code = (response.get("Error") or {}).get("Code", "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
