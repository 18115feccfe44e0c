"""The champion registry of scheduled retraining: one small JSON file, safe with concurrent writers.

Layout::

    {"champion": entry | null,   the model in use
     "anchor":   entry | null,   the first champion: every candidate is also compared with it (model.evaluation.gate)
     "history":  [entry + {"decision": ..., "decided": ...}, ...]}

An entry holds the model reference (``pipeline``: a directory or a built-in baseline), its ``checkpoint``, the
evaluation ``settings`` (comparability record), the per-item results ``items`` (key, seed, group, every metric),
group means ``metrics``, and provenance (manifest hashes, flow run id).

Writes take an exclusive ``fcntl`` lock on ``<registry>.lock`` for the whole read-modify-write, write a uniquely
named temporary file in the same directory, fsync it, rename it over the registry and fsync the directory, so two
writers can neither interleave nor leave a truncated file.

On a bucket (``s3://bucket/registry/champion.json``) there is no lock or rename: each write is an optimistic
read-modify-write. The object is read with its ETag, changed, and written back with a conditional PUT
(``If-Match: <etag>``, or ``If-None-Match: *`` when creating it); when another writer got there first the server
answers 412 Precondition Failed and the whole read-modify-write is redone (at most ``ATTEMPTS`` times, then one
error naming the URL). A PUT is atomic on S3, so readers never see a partial object. Needs an S3 API
(AWS S3, MinIO, moto, or another server honouring conditional writes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMPTY: dict[str, Any] = {"champion": None, "anchor": None, "history": []}
#: read-modify-write attempts on a bucket before giving up (each lost race costs one more)
ATTEMPTS = 20


def _no_nan(value: Any) -> Any:
    """JSON has no NaN: a NaN metric is stored as null (the decision already says it was NaN)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


class ChampionRegistry:
    def __init__(self, path: Path | str):
        from pipeline.storage import is_url

        self.url = str(path) if is_url(path) else None
        self.path = Path(path) if self.url is None else None  # local: the file and its lock file
        self.lock_path = None if self.path is None else self.path.with_name(self.path.name + ".lock")

    def __str__(self) -> str:
        return self.url or str(self.path)

    def load(self) -> dict[str, Any]:
        if self.url is not None:
            return self._load_remote()[0]
        if not self.path.exists():
            return json.loads(json.dumps(EMPTY))
        return self._parse(self.path.read_text(encoding="utf-8"))

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{self}: registry is not valid JSON ({err}); restore it from a backup or move it "
                             "aside to start without a champion") from err
        if not isinstance(data, dict) or "champion" not in data or "history" not in data:
            raise ValueError(f"{self}: not a champion registry (needs 'champion' and 'history'); move it aside")
        data.setdefault("anchor", data["champion"])
        return data

    @property
    def champion(self) -> dict[str, Any] | None:
        return self.load()["champion"]

    @property
    def anchor(self) -> dict[str, Any] | None:
        return self.load()["anchor"]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        text = _dump(data)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- on a bucket ---------------------------------------------------------------------------------------------
    def _s3(self):
        """(s3fs filesystem, bucket, key). Conditional writes go through s3fs's ``_call_s3`` (botocore's
        put_object with IfMatch / IfNoneMatch): fsspec has no portable compare-and-swap."""
        from pipeline.storage import as_path

        path = as_path(self.url)
        if path.protocol not in ("s3", "s3a"):
            raise ValueError(f"{self.url}: a registry on a bucket needs an S3 API (s3://...) for its conditional "
                             "writes; use an s3:// URL (MinIO, AWS) or a local path")
        bucket, key, _ = path.fs.split_path(path.path)
        return path.fs, bucket, key

    def _load_remote(self) -> tuple[dict[str, Any], str | None]:
        """The registry and its ETag (None: no object yet)."""
        fs, bucket, key = self._s3()
        try:
            response = fs.call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return json.loads(json.dumps(EMPTY)), None
        body = _read_body(fs, response)
        return self._parse(body.decode("utf-8", errors="replace")), response["ETag"]

    def _update_remote(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        import random
        import time

        from pipeline.storage import conditional_write_refused

        fs, bucket, key = self._s3()
        for attempt in range(ATTEMPTS):
            data, etag = self._load_remote()
            change(data)
            body = _dump(data).encode("utf-8")
            condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, ContentType="application/json", **condition)
                return data
            except FileNotFoundError as err:  # NoSuchBucket: s3fs's message names neither the URL nor the fix
                raise FileNotFoundError(f"{self.url}: cannot write the registry ({err}); create the bucket or fix "
                                        "the registry URL") from err
            except OSError as err:
                if not conditional_write_refused(err):
                    raise
                log.info("%s: another writer changed the registry first; re-reading (attempt %d)", self.url, attempt + 2)
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # jitter: the racing writers spread out
        raise RuntimeError(f"{self.url}: registry update lost the race to other writers {ATTEMPTS} times in a row "
                           "(412 Precondition Failed each time); retry the run, or check that nothing rewrites the "
                           "registry in a loop")

    # -- both -----------------------------------------------------------------------------------------------------
    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply ``change`` to the registry under the lock and write it atomically; returns the new registry
        (on a bucket: a conditional write, redone while other writers win the race)."""
        if self.url is not None:
            return self._update_remote(change)
        with self._locked():
            data = self.load()
            change(data)
            self._write(data)
            return data

    def record(self, candidate: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
        """Append the decision to the history; a promoted candidate becomes champion (and anchor if none)."""
        entry = {**candidate, "decision": decision, "decided": datetime.now(timezone.utc).isoformat(timespec="seconds")}

        def change(data: dict[str, Any]) -> None:
            data["history"].append(entry)
            if decision.get("promote"):
                champion = {k: v for k, v in entry.items() if k != "decision"}
                data["champion"] = champion
                if data.get("anchor") is None:
                    data["anchor"] = champion

        return self.update(change)

    def refresh(self, role: str, evaluation: dict[str, Any]) -> dict[str, Any]:
        """Replace the stored evaluation (settings, items, metrics) of the champion or the anchor after it was
        re-evaluated under new settings."""
        if role not in ("champion", "anchor"):
            raise ValueError(f"refresh: role {role!r}; expected 'champion' or 'anchor'")

        def change(data: dict[str, Any]) -> None:
            if data.get(role) is not None:
                data[role] = {**data[role], **evaluation}

        return self.update(change)


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(_no_nan(data), indent=1, sort_keys=True, allow_nan=False)


def _read_body(fs, response: dict[str, Any]) -> bytes:
    """The body of an s3fs ``get_object`` response (an aiobotocore stream, read on s3fs's event loop)."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with response["Body"] as stream:
            return await stream.read()

    return sync(fs.loop, read)
