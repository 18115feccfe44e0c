"""Small helpers every flow shares: artifacts, the `shards.built` event, task runner choice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

RunnerKind = Literal["process", "threads", "dask", "ray"]


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
                      announce: bool = True) -> None:
    """A table artifact of the datasets written, and (``announce``) one `shards.built` event for the run.

    One event per flow run, not per dataset, so that the `train` deployment's trigger starts one
    training run per batch of new shards. Its payload names the output root and every manifest.
    """
    rows = []
    for index, path in zip(manifests, paths):
        counts = index["counts"]
        rows.append({
            "dataset": index["name"], "shards": len(index["shardlist"]), "kept": counts["kept"],
            "rejected": counts["rejected"],
            "rejects by reason": ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items()),
            "manifest": str(path),
        })
    if rows:
        create_table_artifact(key=artifact_key(flow_name, "manifest"), table=rows, description=f"{flow_name}: datasets written")
    if announce and paths:
        emit_event(
            event="shards.built",
            resource={"prefect.resource.id": f"smartedit.shards.{flow_name}", "smartedit.output": str(output)},
            payload={"output": str(output), "manifests": [str(p) for p in paths],
                     "kept": sum(m["counts"]["kept"] for m in manifests)},
        )


def markdown(key: str, text: str, description: str = "") -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=text, description=description)


def is_io_error(task, task_run, state) -> bool:
    """A task's retry condition: retry only what may pass on a second try (I/O errors), never bad data or bugs."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
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
