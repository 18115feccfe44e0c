"""`convert-segmentation`, `convert-vqa`, `convert-edit`: official dataset layouts → webdataset shards.

Thin: the readers (pipeline/sources/) and the driver (pipeline/convert.py) do the work. Here, one
task per output shard (never per sample) returns a small stats dict; the flow finalises each
dataset's manifest, publishes a table artifact and a progress artifact, and emits one `shards.built` event.

    prefect deployment run convert-segmentation/convert-segmentation \
        -p sources='[{"source": "refcoco", "root": "/data/refer"}]' -p output=/data/shards
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.common import (LIGHT_TASK, ProgressThrottle, RunnerKind, is_io_error, keep_if_unchanged, make_task_runner,
                          manifest_snapshot, publish_manifests)
from pipeline.storage import as_path
from pipeline.vocabulary import SOURCE_GROUPS

if TYPE_CHECKING:
    from pipeline.convert import ShardPlan

SEGMENTATION = SOURCE_GROUPS["segmentation"]
VQA = SOURCE_GROUPS["vqa"]
EDIT = SOURCE_GROUPS["edit"]


class SourceParams(BaseModel):
    """One source to convert: its name, its root in the official layout, splits (all when empty), options."""

    source: str
    root: str
    splits: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


@functools.lru_cache(maxsize=16)
def _reader(source: str, root: str, split: str, options_json: str):
    """One reader per process and source split: records() parses annotations once, not once per shard."""
    from pipeline.sources import get_reader

    return get_reader(source, root, split, **json.loads(options_json))


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=is_io_error, task_run_name="{source}-{split}-shard-{shard_index}",
      **LIGHT_TASK)
def convert_shard_task(source: str, root: str, split: str, options_json: str, shard_index: int, plan: ShardPlan,
                       dataset_dir: str, leases: list[list[Any]] | None = None) -> dict[str, Any]:
    """The library's `convert_shard` for one shard of the plan the flow prepared under the dataset lock.

    Small parameters only: the shard's plan (name, record range, fingerprint) and what names the reader; the
    reader itself is built once per worker process (`_reader`), never pickled into each task. ``leases``: the
    flow run's bucket lock leases, checked before publishing (pipeline/locking.py)."""
    from pipeline.convert import convert_shard
    from pipeline.locking import adopted_leases
    from pipeline.writer import stats_path

    reader = _reader(source, root, split, options_json)
    path = as_path(dataset_dir) / plan.name
    resumed = stats_path(path).exists() and path.exists()
    started = time.perf_counter()
    with adopted_leases(leases or ()):
        stats = convert_shard(reader, plan, dataset_dir)
    seconds = time.perf_counter() - started
    # "in N s": the work inside the task, which bench/cluster_runners.py sets against the task run's span
    get_run_logger().info("%s: %s (%d kept, %d rejected) in %.3f s", plan.name,
                          "resumed: already complete" if resumed else "built", stats.nsamples, stats.n_rejected, seconds)
    return {"shard": stats.url, "nsamples": stats.nsamples, "rejected": stats.n_rejected, "resumed": resumed,
            "seconds": seconds}


def _splits(params: SourceParams) -> list[str]:
    from pipeline.sources import available_splits

    return params.splits or list(available_splits(params.source, params.root, **params.options))


@flow(name="convert-sources", log_prints=False)
def convert_sources(sources: list[SourceParams], output: str, shard_size: int = 1000, allowed: tuple[str, ...] = (),
                    flow_name: str = "convert", announce: bool = True, overwrite: bool = False) -> list[str]:
    """Convert every split of every source; returns the written manifests' paths.

    The driver is the library's (pipeline/convert.py): `prepare_conversion` under each dataset's lock
    (held by this flow run until its manifest is written), one `convert_shard` task per shard, then
    `finish_conversion`, so a flow and `smartedit convert` write the same manifest.
    """
    from pipeline.convert import finish_conversion, make_output_dir, prepare_conversion
    from pipeline.locking import DatasetLock, held_leases
    from pipeline.manifest import INDEX_NAME

    logger = get_run_logger()
    with contextlib.ExitStack() as locks:
        jobs = []
        for params in sources:
            params = SourceParams.model_validate(params)
            if allowed and params.source not in allowed:
                raise ValueError(f"source {params.source!r} does not belong to {flow_name}; expected one of {list(allowed)}")
            options_json = json.dumps(params.options, sort_keys=True)
            for split in _splits(params):
                reader = _reader(params.source, params.root, split, options_json)
                dataset_dir = as_path(output) / reader.dataset_name / split  # local, file:// or s3://
                make_output_dir(dataset_dir)
                locks.enter_context(DatasetLock(dataset_dir))
                plan = prepare_conversion(reader, dataset_dir, shard_size=shard_size, overwrite=overwrite)
                jobs.append((params, split, options_json, plan))

        leases = [list(lease) for lease in held_leases()]  # tasks in other processes check them before publishing
        total = sum(len(j[3].shards) for j in jobs)
        progress = ProgressThrottle(f"{flow_name}: shards written of {total}", total)
        futures = [
            [convert_shard_task.submit(params.source, params.root, split, options_json, i, shard, str(plan.dataset_dir),
                                       leases)
             for i, shard in enumerate(plan.shards)]
            for params, split, options_json, plan in jobs
        ]
        manifests, paths, unchanged, done = [], [], [], 0
        for (_, _, _, plan), shard_futures in zip(jobs, futures):
            resumed = 0
            for future in shard_futures:
                resumed += bool(future.result()["resumed"])
                done += 1
                if progress.update(done):
                    logger.info("%s: shards %d/%d", flow_name, done, total)
            before = manifest_snapshot(plan.dataset_dir / INDEX_NAME)
            index = finish_conversion(plan)
            # nothing rebuilt and the same data: keep the provenance, announce nothing (flows/common.py)
            same = resumed == len(plan.shards) and keep_if_unchanged(plan.dataset_dir / INDEX_NAME, before)
            logger.info("%s: %d kept, %d rejected; shards %d built, %d resumed%s", index["name"], index["counts"]["kept"],
                        index["counts"]["rejected"], len(plan.shards) - resumed, resumed,
                        "; manifest unchanged" if same else "")
            manifests.append(index)
            paths.append(plan.dataset_dir / INDEX_NAME)
            unchanged.append(same)
    publish_manifests(flow_name, manifests, paths, output, announce, unchanged)
    return [str(p) for p in paths]


def _run(flow_name: str, allowed: tuple[str, ...], sources, output, shard_size, workers, runner, dask_address, announce,
         overwrite=False):
    inner = convert_sources.with_options(name=f"{flow_name}-shards", task_runner=make_task_runner(runner, workers, dask_address))
    paths = inner(sources=sources, output=output, shard_size=shard_size, allowed=allowed, flow_name=flow_name,
                  announce=announce, overwrite=overwrite)
    _log_datasets(flow_name, paths)
    return paths


def _log_datasets(flow_name: str, paths: list[str]) -> None:
    """The subflow's key lines again in the parent's log (`prefect flow-run logs <parent>` shows them)."""
    from pipeline.manifest import load_manifest

    logger = get_run_logger()
    for path in paths:
        counts = load_manifest(path)["counts"]
        logger.info("%s: %s: %d kept, %d rejected (%s)", flow_name, "/".join(str(path).split("/")[-3:-1]),
                    counts["kept"], counts["rejected"], path)


@flow(name="convert-segmentation")
def convert_segmentation(sources: list[SourceParams], output: str, shard_size: int = 1000, workers: int = 2, announce: bool = True,
                         runner: RunnerKind = "process", dask_address: str | None = None, overwrite: bool = False,
                         address: str | None = None) -> list[str]:
    """COCO-Stuff, RefCOCO/+/g, gRefCOCO and ReasonSeg → shards (one dataset per source and split).

    Args:
        sources: Sources to convert: [{source, root (official layout), splits (default all), options}].
        output: Output root; each dataset goes to <output>/<dataset>/<split> with its shardindex.json.
        shard_size: Samples per shard (one Prefect task per shard).
        workers: Parallel shard tasks.
        announce: Emit `shards.built` when a dataset changed (starts the `train` trigger); a rerun that
            changed nothing stays silent.
        runner: Task runner: process (default), threads, dask or ray.
        dask_address: An existing Dask scheduler (tcp://host:8786) for the dask runner (same as address).
        overwrite: Rebuild finished shards that were built with other settings (otherwise the run refuses).
        address: An existing cluster for the runner: tcp://scheduler:8786 (dask) or ray://head:10001 (ray);
            without it a local cluster / Ray instance of `workers` is started.
    """
    return _run("convert-segmentation", SEGMENTATION, sources, output, shard_size, workers, runner, address or dask_address, announce, overwrite)


@flow(name="convert-vqa")
def convert_vqa(sources: list[SourceParams], output: str, shard_size: int = 1000, workers: int = 2, announce: bool = True,
                runner: RunnerKind = "process", dask_address: str | None = None, overwrite: bool = False,
                address: str | None = None) -> list[str]:
    """LLaVA-Instruct-150k → shards.

    Args:
        sources: Sources to convert: [{source, root (official layout), splits (default all), options}].
        output: Output root; each dataset goes to <output>/<dataset>/<split> with its shardindex.json.
        shard_size: Samples per shard (one Prefect task per shard).
        workers: Parallel shard tasks.
        announce: Emit `shards.built` when a dataset changed (starts the `train` trigger); a rerun that
            changed nothing stays silent.
        runner: Task runner: process (default), threads, dask or ray.
        dask_address: An existing Dask scheduler (tcp://host:8786) for the dask runner (same as address).
        overwrite: Rebuild finished shards that were built with other settings (otherwise the run refuses).
        address: An existing cluster for the runner: tcp://scheduler:8786 (dask) or ray://head:10001 (ray);
            without it a local cluster / Ray instance of `workers` is started.
    """
    return _run("convert-vqa", VQA, sources, output, shard_size, workers, runner, address or dask_address, announce, overwrite)


@flow(name="convert-edit")
def convert_edit(sources: list[SourceParams], output: str, shard_size: int = 1000, workers: int = 2, announce: bool = True,
                 runner: RunnerKind = "process", dask_address: str | None = None, overwrite: bool = False,
                 address: str | None = None) -> list[str]:
    """InstructPix2Pix (folder or parquet) and MagicBrush → edit-pair shards.

    Args:
        sources: Sources to convert: [{source, root (official layout), splits (default all), options}].
        output: Output root; each dataset goes to <output>/<dataset>/<split> with its shardindex.json.
        shard_size: Samples per shard (one Prefect task per shard).
        workers: Parallel shard tasks.
        announce: Emit `shards.built` when a dataset changed (starts the `train` trigger); a rerun that
            changed nothing stays silent.
        runner: Task runner: process (default), threads, dask or ray.
        dask_address: An existing Dask scheduler (tcp://host:8786) for the dask runner (same as address).
        overwrite: Rebuild finished shards that were built with other settings (otherwise the run refuses).
        address: An existing cluster for the runner: tcp://scheduler:8786 (dask) or ray://head:10001 (ray);
            without it a local cluster / Ray instance of `workers` is started.
    """
    return _run("convert-edit", EDIT, sources, output, shard_size, workers, runner, address or dask_address, announce, overwrite)
