"""Small helpers every flow shares: artifacts, the `shards.built` event, task runner choice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

RunnerKind = Literal["process", "threads", "dask"]


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def make_task_runner(kind: RunnerKind, workers: int, dask_address: str | None = None):
    """`process`: a local process pool (default). `dask`: Prefect's Dask integration, on an existing
    cluster when ``dask_address`` is given (e.g. ``tcp://scheduler:8786``) or a local one otherwise.
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
    raise ValueError(f"task runner {kind!r}: expected one of process, threads, dask")


def publish_manifests(flow_name: str, manifests: list[dict[str, Any]], paths: list[Path]) -> None:
    """A table artifact of the datasets written, and one `shards.built` event per dataset."""
    rows = []
    for index, path in zip(manifests, paths):
        counts = index["counts"]
        rows.append({
            "dataset": index["name"], "shards": len(index["shardlist"]), "kept": counts["kept"],
            "rejected": counts["rejected"], "rejects by reason": ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items()),
            "manifest": str(path),
        })
        emit_event(
            event="shards.built",
            resource={"prefect.resource.id": f"smartedit.dataset.{index['name']}", "smartedit.flow": flow_name},
            payload={"manifest": str(path), "name": index["name"], "kept": counts["kept"], "rejected": counts["rejected"]},
        )
    if rows:
        create_table_artifact(key=artifact_key(flow_name, "manifest"), table=rows, description=f"{flow_name}: datasets written")


def markdown(key: str, text: str, description: str = "") -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=text, description=description)
