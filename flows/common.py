"""Small helpers every flow shares: artifacts, the `shards.built` event, task runner choice."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Literal

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

RunnerKind = Literal["process", "threads", "dask", "ray"]


# Options for many small tasks whose outputs live on disk (one convert task per shard): no Prefect cache key
# (the default policy hashes every task's inputs and looks the key up in the result store) and no result
# persistence. Resume is the library's own (each shard's completion marker and fingerprint), never Prefect's cache.
LIGHT_TASK: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


class ProgressThrottle:
    """A Prefect progress artifact for ``total`` units, updated at most once per ``interval`` seconds and always
    at the last unit. Each update is a blocking API call; once per shard it costs a round trip per task
    (Prefect has no throttle of its own)."""

    def __init__(self, description: str, total: int, interval: float = 1.0):
        from prefect.artifacts import create_progress_artifact

        self.total, self.interval, self._last = max(total, 1), interval, float("-inf")
        self.id = create_progress_artifact(progress=0.0, description=description)

    def update(self, done: int) -> bool:
        """Report ``done`` units; returns whether the artifact was updated (the caller may log the same moment)."""
        import time

        from prefect.artifacts import update_progress_artifact

        now = time.monotonic()
        if done < self.total and now - self._last < self.interval:
            return False
        self._last = now
        update_progress_artifact(self.id, progress=100.0 * min(done, self.total) / self.total)
        return True


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def make_task_runner(kind: RunnerKind, workers: int, dask_address: str | None = None):
    """`process`: a local process pool (default). `dask`: Prefect's Dask integration, on an existing
    cluster when ``dask_address`` is given (e.g. ``tcp://scheduler:8786``) or a local one otherwise.
    `ray`: prefect-ray, on an existing Ray cluster when an address is given (``ray://head:10001``), else a local
    Ray instance with ``workers`` CPUs.
    `threads`: in-process threads (tests, debugging)."""
    if kind == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:  # pragma: no cover - prefect-dask is a declared dependency
            raise ImportError("the dask task runner needs `pip install prefect-dask`") from err
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as err:
            raise ImportError("the ray task runner needs `pip install prefect-ray` (the `cluster` extra)") from err
        if dask_address:  # an existing Ray cluster: ray://head:10001 or auto
            return RayTaskRunner(address=dask_address)
        return RayTaskRunner(init_kwargs={"num_cpus": workers, "include_dashboard": False})
    raise ValueError(f"task runner {kind!r}: expected one of process, threads, dask, ray")


def publish_manifests(flow_name: str, manifests: list[dict[str, Any]], paths: list[Path], output: str,
                      announce: bool = True, unchanged: list[bool] | None = None) -> bool:
    """A table artifact of the datasets written, and (``announce``) one `shards.built` event for the run.

    One event per flow run, not per dataset, so that the `train` deployment's trigger starts one
    training run per batch of new shards. Its payload names the output root and the manifests that
    changed. ``unchanged[i]``: dataset i was already complete and identical (see `keep_if_unchanged`);
    a run where every dataset is unchanged announces nothing. Returns whether it announced.
    """
    from prefect import get_run_logger

    unchanged = list(unchanged) if unchanged is not None else [False] * len(paths)
    rows = []
    for index, path, same in zip(manifests, paths, unchanged):
        counts = index["counts"]
        rows.append({
            "dataset": index["name"], "shards": len(index["shardlist"]), "kept": counts["kept"],
            "rejected": counts["rejected"],
            "rejects by reason": ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items()),
            "status": "unchanged" if same else "written", "manifest": str(path),
        })
    if rows:
        create_table_artifact(key=artifact_key(flow_name, "manifest"), table=rows, description=f"{flow_name}: datasets written")
    changed = [(m, p) for m, p, same in zip(manifests, paths, unchanged) if not same]
    logger = get_run_logger()
    if not announce:
        logger.info("%s: not announcing (announce=False)", flow_name)
        return False
    if not changed:
        logger.info("%s: nothing changed since the last build; no shards.built event (no training is triggered)", flow_name)
        return False
    emit_event(
        event="shards.built",
        resource={"prefect.resource.id": f"smartedit.shards.{flow_name}", "smartedit.output": str(output)},
        payload={"output": str(output), "manifests": [str(p) for _, p in changed],
                 "kept": sum(m["counts"]["kept"] for m, _ in changed)},
    )
    logger.info("%s: announced shards.built for %d changed dataset(s) under %s", flow_name, len(changed), output)
    return True


@contextlib.contextmanager
def recipe_progress(logger_name: str, total: int, description: str):
    """While a training recipe runs: its ``step N ...`` log lines (logger ``logger_name``) update a
    Prefect progress artifact (N / total) and are repeated in the run's log, which the UI and the
    terminal show. The recipe (model/) never imports Prefect, so this listens to its logger."""
    import logging

    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    run_logger = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, description=f"{description} of {total}")

    class _Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not isinstance(record.msg, str) or not record.msg.startswith("step ") or not record.args:
                return
            try:
                step = int(record.args[0])
                update_progress_artifact(progress_id, progress=min(100.0, 100.0 * step / max(total, 1)))
                run_logger.info("%s %d/%d: %s", description, step, total, record.getMessage())
            except Exception:  # noqa: BLE001 - progress reporting never stops training
                pass

    handler, target = _Forward(level=logging.INFO), logging.getLogger(logger_name)
    previous = target.level
    target.addHandler(handler)
    if target.getEffectiveLevel() > logging.INFO:
        target.setLevel(logging.INFO)
    try:
        yield progress_id
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)


def manifest_snapshot(path: Path | str) -> str | None:
    """The manifest's text before a rerun rewrites it (None when there is none yet)."""
    from pipeline.storage import as_path

    path = as_path(path)  # local or a bucket URL
    return path.read_text() if path.exists() else None


_VOLATILE_PROVENANCE = ("created", "flow_run_id", "code_version")


def _comparable(index: dict[str, Any]) -> dict[str, Any]:
    """A manifest without what every write refreshes: when, by which run, with which checkout, and the
    input fingerprint (file mtimes: rewriting identical inputs changes it, the data does not change)."""
    prov = {k: v for k, v in (index.get("provenance") or {}).items() if k not in _VOLATILE_PROVENANCE}
    return {**{k: v for k, v in index.items() if k != "input_fingerprint"}, "provenance": prov}


def keep_if_unchanged(path: Path | str, before: str | None) -> bool:
    """After a rerun rewrote the manifest at ``path``: when its data did not change (same shards, hashes,
    counts, spec), put the earlier provenance back (the run that built the data, when, with which code) so
    the rerun rewrites nothing of it, and return True (nothing new: do not announce). A new input
    fingerprint is kept, so that retraining knows the inputs were seen."""
    import json

    from pipeline.storage import as_path

    path = as_path(path)
    if before is None or not path.exists():
        return False
    old, new = json.loads(before), json.loads(path.read_text())
    if _comparable(old) != _comparable(new):
        return False
    new["provenance"] = {**new.get("provenance", {}),
                         **{k: v for k, v in (old.get("provenance") or {}).items() if k in _VOLATILE_PROVENANCE}}
    text = before if new == old else json.dumps(new, indent=1, ensure_ascii=False)
    from pipeline.writer import atomic_write_text

    atomic_write_text(path, text)
    return True


def markdown(key: str, text: str, description: str = "") -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=text, description=description)


FILES_URL_ENV, FILES_ROOT_ENV = "SMARTEDIT_FILES_URL", "SMARTEDIT_FILES_ROOT"


def image_url(path: Path | str, max_embed_px: int = 1024) -> str:
    """A URL the Prefect UI can load for the picture at ``path``.

    Browsers refuse ``file://`` links from an http page. When the local stack serves its output
    directory read-only over HTTP (``SMARTEDIT_FILES_URL`` for ``SMARTEDIT_FILES_ROOT``, set by
    `flows.stack` for its workers) and the picture lies below it, that URL; otherwise the picture is
    embedded as a ``data:`` URL (downscaled JPEG), which Prefect's markdown renders as it is.
    """
    import base64
    import io
    import os

    from pipeline.storage import as_path, is_remote

    location = as_path(path)
    if is_remote(location):  # on a bucket: embedded (the stack's file server serves local outputs only)
        source: Any = io.BytesIO(location.read_bytes())
        base = root = None
    else:
        path = source = location.resolve()
        base, root = os.environ.get(FILES_URL_ENV), os.environ.get(FILES_ROOT_ENV)
    if base and root:
        try:
            rel = path.relative_to(Path(root).resolve())
        except ValueError:
            rel = None
        if rel is not None:
            from urllib.parse import quote

            return f"{base.rstrip('/')}/{quote(rel.as_posix())}"
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail((max_embed_px, max_embed_px))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_artifact(key: str, path: Path | str, title: str, description: str = "") -> str:
    """A markdown artifact showing the picture at ``path`` in the UI (see `image_url`); returns its URL."""
    url = image_url(path)
    shown = url if not url.startswith("data:") else "embedded"
    create_markdown_artifact(key=artifact_key(key), markdown=f"# {title}\n\n![{title}]({url})\n\nFile: `{path}` ({shown})\n",
                             description=description or title)
    return url


# OSErrors that a second try cannot fix: bad input (a missing checkpoint, a wrong path), not flaky I/O.
PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def is_transient_error(err: BaseException) -> bool:
    """True for errors that may pass on a second try: I/O hiccups (EIO, timeouts, a dropped connection,
    a stale NFS handle), never missing files, bad data or bugs."""
    return isinstance(err, OSError) and not isinstance(err, PERMANENT_OS_ERRORS)


def is_io_error(task, task_run, state) -> bool:
    """A task's retry condition: retry only transient I/O errors (see `is_transient_error`)."""
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - classified, not swallowed: the task still fails
        return is_transient_error(err)
    return False


GPU_LIMIT = "gpu"


def ensure_gpu_limit(slots: int) -> None:
    """Create the `gpu` global concurrency limit when it is missing: Prefect 3.8.8 skips acquiring a
    missing limit with only a warning, so GPU work would otherwise run unguarded."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=max(1, slots)))
        except ObjectAlreadyExists:  # another run created it first
            pass


def gpu_slot(device: str):
    """A context holding one `gpu` slot (strict) when ``device`` is a CUDA device; a no-op on CPU."""
    import contextlib

    if not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    import torch
    from prefect.concurrency.sync import concurrency

    ensure_gpu_limit(torch.cuda.device_count())
    return concurrency(GPU_LIMIT, occupy=1, strict=True)
