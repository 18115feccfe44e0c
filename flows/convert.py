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
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, Field

from flows.common import RunnerKind, is_io_error, make_task_runner, publish_manifests
from pipeline.vocabulary import SOURCE_GROUPS

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


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=is_io_error, task_run_name="{source}-{split}-shard-{shard_index}")
def convert_shard_task(source: str, root: str, split: str, options_json: str, shard_index: int, shard_size: int,
                       dataset_dir: str) -> dict[str, Any]:
    """The library's `convert_shard` for one planned shard (the plan is recomputed here: it is deterministic)."""
    from pipeline.convert import convert_shard, shard_plans

    reader = _reader(source, root, split, options_json)
    stats = convert_shard(reader, shard_plans(reader, shard_size)[shard_index], dataset_dir)
    return {"shard": stats.url, "nsamples": stats.nsamples, "rejected": stats.n_rejected}


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
    from pipeline.locking import DatasetLock
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
                dataset_dir = Path(output) / reader.dataset_name / split
                make_output_dir(dataset_dir)
                locks.enter_context(DatasetLock(dataset_dir))
                plan = prepare_conversion(reader, dataset_dir, shard_size=shard_size, overwrite=overwrite)
                jobs.append((params, split, options_json, plan))

        total = sum(len(j[3].shards) for j in jobs)
        progress = create_progress_artifact(progress=0.0, description=f"{flow_name}: shards written of {total}")
        futures = [
            [convert_shard_task.submit(params.source, params.root, split, options_json, i, shard_size, str(plan.dataset_dir))
             for i in range(len(plan.shards))]
            for params, split, options_json, plan in jobs
        ]
        manifests, paths, done = [], [], 0
        for (_, _, _, plan), shard_futures in zip(jobs, futures):
            for future in shard_futures:
                future.result()
                done += 1
                update_progress_artifact(progress, progress=100.0 * done / max(total, 1))
            index = finish_conversion(plan)
            logger.info("%s: %d kept, %d rejected", index["name"], index["counts"]["kept"], index["counts"]["rejected"])
            manifests.append(index)
            paths.append(plan.dataset_dir / INDEX_NAME)
    publish_manifests(flow_name, manifests, paths, output, announce)
    return [str(p) for p in paths]


def _run(flow_name: str, allowed: tuple[str, ...], sources, output, shard_size, workers, runner, dask_address, announce,
         overwrite=False):
    inner = convert_sources.with_options(name=f"{flow_name}-shards", task_runner=make_task_runner(runner, workers, dask_address))
    return inner(sources=sources, output=output, shard_size=shard_size, allowed=allowed, flow_name=flow_name,
                 announce=announce, overwrite=overwrite)


@flow(name="convert-segmentation")
def convert_segmentation(sources: list[SourceParams], output: str, shard_size: int = 1000, workers: int = 2, announce: bool = True,
                         runner: RunnerKind = "process", dask_address: str | None = None, overwrite: bool = False) -> list[str]:
    """COCO-Stuff, RefCOCO/+/g, gRefCOCO and ReasonSeg → shards (one dataset per source and split)."""
    return _run("convert-segmentation", SEGMENTATION, sources, output, shard_size, workers, runner, dask_address, announce, overwrite)


@flow(name="convert-vqa")
def convert_vqa(sources: list[SourceParams], output: str, shard_size: int = 1000, workers: int = 2, announce: bool = True,
                runner: RunnerKind = "process", dask_address: str | None = None, overwrite: bool = False) -> list[str]:
    """LLaVA-Instruct-150k → shards."""
    return _run("convert-vqa", VQA, sources, output, shard_size, workers, runner, dask_address, announce, overwrite)


@flow(name="convert-edit")
def convert_edit(sources: list[SourceParams], output: str, shard_size: int = 1000, workers: int = 2, announce: bool = True,
                 runner: RunnerKind = "process", dask_address: str | None = None, overwrite: bool = False) -> list[str]:
    """InstructPix2Pix (folder or parquet) and MagicBrush → edit-pair shards."""
    return _run("convert-edit", EDIT, sources, output, shard_size, workers, runner, dask_address, announce, overwrite)
