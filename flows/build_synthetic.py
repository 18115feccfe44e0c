"""`build-synthetic`: Reason-Edit-style synthetic edit pairs (pipeline/synthetic/) as a Prefect flow.

Thin: a plan task (cheap scene analysis and target selection, written once to ``plan.json``), one task
per output shard (skipped when its completion marker exists, so a rerun resumes), and a finalise task
(manifest with yields, SmartEdit JSON export, contact sheet, data card). Shard tasks that run models on
a GPU hold a slot of the global concurrency limit ``gpu``, acquired with ``strict=True`` (flows/common.py
``gpu_slot``); the limit is created when missing, because Prefect 3.8 would otherwise only warn and run unguarded.

    prefect deployment run build-synthetic/build-synthetic \
        -p input=/data/samples -p output=/data/shards/synthetic -p config='{"scenarios": {"left_right": 50}}'

``output`` may be a bucket URL (``s3://bucket/synthetic``): every file goes there with the writer's atomic rule.
The flow holds the output's dataset lock (pipeline/locking.py) from planning to the manifest, so a second build into
the same output fails at once naming the holder; the shard tasks run inside it (as the convert flows do).

``config`` is the `SyntheticConfig` itself (a pydantic model: Prefect validates it and shows its fields), so the
flow declares none of its fields again.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from flows.common import (RunnerKind, artifact_key, gpu_slot, image_artifact, is_io_error, keep_if_unchanged,
                          make_task_runner, manifest_snapshot, publish_manifests)
from pipeline.storage import as_path
from pipeline.synthetic.config import SyntheticConfig


@task(task_run_name="plan")
def plan_task(config_json: str, inputs_json: str, output: str) -> int:
    from pipeline.synthetic.build import BuildInputs, plan_build, shard_plans
    from pipeline.synthetic.config import SyntheticConfig

    cfg = SyntheticConfig.model_validate_json(config_json)
    plan = plan_build(cfg, BuildInputs.model_validate_json(inputs_json), output)
    return len(shard_plans(plan, cfg))


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=is_io_error, task_run_name="shard-{shard_index}")
def shard_task(config_json: str, output: str, shard_index: int,
               leases: list[list[Any]] | None = None) -> dict[str, Any]:
    """One shard; ``leases``: the flow run's bucket lock lease, checked before publishing (pipeline/locking.py)."""
    from pipeline.locking import adopted_leases
    from pipeline.synthetic.build import build_shard
    from pipeline.synthetic.config import SyntheticConfig

    from pipeline.synthetic.build import plan_path, shard_plans
    from pipeline.writer import stats_path

    cfg = SyntheticConfig.model_validate_json(config_json)
    import json

    name = shard_plans(json.loads(plan_path(output).read_text()), cfg)[shard_index].name
    resumed = stats_path(as_path(output) / name).exists() and (as_path(output) / name).exists()
    with gpu_slot(cfg.device), adopted_leases(leases or ()):
        result = build_shard(cfg, output, shard_index)
    get_run_logger().info("%s: %s (%d pairs kept, %d dropped)", name, "resumed: already complete" if resumed else "built",
                          result["nsamples"], result["rejected"])
    return {**result, "resumed": resumed}


@task(task_run_name="finalize")
def finalize_task(config_json: str, output: str) -> dict[str, Any]:
    from pipeline.synthetic.build import finalize_build
    from pipeline.synthetic.config import SyntheticConfig

    return finalize_build(SyntheticConfig.model_validate_json(config_json), output)


@flow(name="build-synthetic")
def build_synthetic(
    input: str,
    output: str,
    images: str | None = None,
    splits: list[str] | None = None,
    scenes: str | None = None,
    config: SyntheticConfig | None = None,
    preset: Literal["tiny", "sd15"] | None = None,
    workers: int = 1,
    runner: RunnerKind = "threads",
    announce: bool = True,
) -> dict[str, Any]:
    """Plan, write one shard per task, finalise (manifest, SmartEdit JSON, contact sheet, data card).

    Args:
        input: A sample-data directory, a COCO instances JSON (with `images`), or converted referring
            shards (a dataset directory or shardindex.json, or a directory of them).
        output: Output dataset directory or bucket URL (s3://bucket/prefix); a rerun resumes its finished shards.
        images: The COCO image directory when `input` is an instances JSON.
        splits: Splits of converted referring shards to build from (default: all given).
        scenes: A scenes.json with mirror regions (mirror scenario).
        config: The build's SyntheticConfig (scenarios, models, thresholds, ...; a mapping of its fields).
        preset: Start from SyntheticConfig.preset (tiny, sd15) with the fields given in `config` on top.
        workers: Parallel shard tasks.
        runner: Task runner: threads, process or dask.
        announce: Emit `shards.built` when the build changed something (starts the `train` trigger);
            False when a calling flow trains itself.
    """
    from pipeline.locking import DatasetLock, held_leases
    from pipeline.manifest import load_manifest
    from pipeline.synthetic.build import BuildInputs, prepare_output, remove_dead_temporaries

    logger = get_run_logger()
    cfg = config or SyntheticConfig()
    if preset is not None:
        cfg = SyntheticConfig.preset(preset, **cfg.model_dump(exclude_unset=True))
    inputs = BuildInputs(input=input, images=images, splits=splits or [], scenes=scenes)
    _check_inputs(input=input, images=images, scenes=scenes, **{name: getattr(cfg, name, None) for name in (
        "sam_checkpoint", "inpaint_dir", "clip_dir", "llm_dir")})  # before anything is created: bad input fails at once
    config_json, inputs_json = cfg.model_dump_json(), inputs.model_dump_json()
    out = prepare_output(output)

    with DatasetLock(out):  # plan, shards and manifest: the tasks below run while this flow run holds it
        remove_dead_temporaries(out)
        n_shards = plan_task(config_json, inputs_json, output)
        inner = shards_flow.with_options(task_runner=make_task_runner(runner, workers))
        shard_results = inner(config_json=config_json, output=output, n_shards=n_shards,
                              leases=[list(lease) for lease in held_leases()])
        resumed = sum(bool(r.get("resumed")) for r in shard_results)
        logger.info("build-synthetic: shards %d built, %d resumed, %d pairs in them", n_shards - resumed, resumed,
                    sum(r["nsamples"] for r in shard_results))
        before = manifest_snapshot(out / "shardindex.json")
        result = finalize_task(config_json, output)
        manifest = as_path(result["manifest"])
        unchanged = resumed == n_shards and keep_if_unchanged(manifest, before)
    _publish(result)
    publish_manifests("build-synthetic", [load_manifest(manifest)], [manifest], output, announce=announce,
                      unchanged=[unchanged])
    logger.info("build-synthetic: %d pairs kept, %d dropped, in %s", result["kept"], result["rejected"], output)
    return {k: v for k, v in result.items() if k != "yields"} | {"resumed_shards": resumed, "unchanged": unchanged}


def _check_inputs(**paths: str | None) -> None:
    """Every path parameter that is given must exist (one line naming the parameter and the fix)."""
    for name, path in paths.items():
        if path and not as_path(path).exists():  # a local path or a bucket URL
            raise FileNotFoundError(f"build-synthetic: parameter {name!r} is {path}, which does not exist; "
                                    "pass an existing path (nothing was created)")


@flow(name="build-synthetic-shards")
def shards_flow(config_json: str, output: str, n_shards: int,
                leases: list[list[Any]] | None = None) -> list[dict[str, Any]]:
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, description=f"build-synthetic: shards done of {n_shards}")
    futures = [shard_task.submit(config_json, output, i, leases) for i in range(n_shards)]
    results, pairs = [], 0
    for done, future in enumerate(futures, 1):
        results.append(future.result())
        pairs += results[-1]["nsamples"]
        update_progress_artifact(progress, progress=100.0 * done / max(n_shards, 1))
        logger.info("build-synthetic: shards %d/%d done, %d pairs in them so far", done, n_shards, pairs)
    return results


def yield_rows(yields: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """The yields table as the build reports it: in, out, dropped and the top drop reasons per stage.

    Only renders what the build's ``yields`` provide (``dropped`` and ``dropped_by_reason``/``reasons``
    when present; otherwise in − out). A fan-out stage (more out than in: one scene → several pairs)
    drops nothing it can count and is marked so; no percentage, which could exceed 100 %."""
    rows = []
    for r in yields:
        n_in, n_out = r.get("in"), r.get("out")
        fan_out = bool(r.get("fan_out")) or (n_in is not None and n_out is not None and n_out > n_in)
        dropped = r.get("dropped")
        if dropped is None and n_in is not None and n_out is not None and not fan_out:
            dropped = n_in - n_out
        reasons = r.get("dropped_by_reason") or r.get("reasons") or {}
        top_reasons = sorted(((k, v) for k, v in reasons.items() if v), key=lambda kv: -kv[1])[:top]
        rows.append({"stage": r["stage"] + (" (fan-out)" if fan_out else ""), "in": n_in, "out": n_out,
                     "dropped": "" if dropped is None else dropped,
                     "top drop reasons": ", ".join(f"{k} {v}" for k, v in top_reasons)})
    return rows


def _publish(result: dict[str, Any]) -> None:
    create_table_artifact(key=artifact_key("build-synthetic", "yields"), table=yield_rows(result["yields"]),
                          description="synthetic build: items in, out and dropped at each stage, top drop reasons")
    create_markdown_artifact(key=artifact_key("build-synthetic", "data-card"),
                             markdown=as_path(result["data_card"]).read_text(), description="synthetic build data card")
    if result.get("contact_sheet"):
        url = image_artifact(artifact_key("build-synthetic", "contact-sheet"), result["contact_sheet"], "Contact sheet",
                             description="source | mask | target | instruction for the first pairs")
        get_run_logger().info("contact sheet: %s", url if not url.startswith("data:") else f"{result['contact_sheet']} (embedded in the artifact)")
