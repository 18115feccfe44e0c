"""`build-synthetic`: Reason-Edit-style synthetic edit pairs (pipeline/synthetic/) as a Prefect flow.

Thin: a plan task (cheap scene analysis and target selection, written once to ``plan.json``), one task
per output shard (skipped when its completion marker exists, so a rerun resumes), and a finalise task
(manifest with yields, SmartEdit JSON export, contact sheet, data card). Shard tasks that run models on
a GPU hold a slot of the global concurrency limit ``gpu``, acquired with ``strict=True`` (flows/common.py
``gpu_slot``); the limit is created when missing, because Prefect 3.8 would otherwise only warn and run unguarded.

    prefect deployment run build-synthetic/build-synthetic \
        -p input=/data/samples -p output=/data/shards/synthetic -p config='{"scenarios": {"left_right": 50}}'

``config`` is the `SyntheticConfig` itself (a pydantic model: Prefect validates it and shows its fields), so the
flow declares none of its fields again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.common import RunnerKind, artifact_key, gpu_slot, is_io_error, make_task_runner, publish_manifests
from pipeline.synthetic.config import SyntheticConfig


@task(task_run_name="plan")
def plan_task(config_json: str, inputs_json: str, output: str) -> int:
    from pipeline.synthetic.build import BuildInputs, plan_build, shard_plans
    from pipeline.synthetic.config import SyntheticConfig

    cfg = SyntheticConfig.model_validate_json(config_json)
    plan = plan_build(cfg, BuildInputs.model_validate_json(inputs_json), output)
    return len(shard_plans(plan, cfg))


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=is_io_error, task_run_name="shard-{shard_index}")
def shard_task(config_json: str, output: str, shard_index: int) -> dict[str, Any]:
    from pipeline.synthetic.build import build_shard
    from pipeline.synthetic.config import SyntheticConfig

    cfg = SyntheticConfig.model_validate_json(config_json)
    with gpu_slot(cfg.device):
        return build_shard(cfg, output, shard_index)


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
    """Plan, write one shard per task, finalise. ``input``, ``images``, ``splits``, ``scenes``: where the scenes
    come from (`pipeline.synthetic.build.BuildInputs`: a sample-data directory, a COCO instances JSON + its
    images, or converted referring shards; a scenes.json with mirror regions). ``config``: the build's
    `SyntheticConfig` (scenarios, models, thresholds, ...; a mapping of its fields); ``preset``: start from
    `SyntheticConfig.preset` with the fields given in ``config`` on top. ``announce``: emit `shards.built` (starts
    the `train` deployment's trigger); pass False when a calling flow trains itself. Returns paths and counts."""
    from pipeline.synthetic.build import BuildInputs

    logger = get_run_logger()
    cfg = config or SyntheticConfig()
    if preset is not None:
        cfg = SyntheticConfig.preset(preset, **cfg.model_dump(exclude_unset=True))
    inputs = BuildInputs(input=input, images=images, splits=splits or [], scenes=scenes)
    config_json, inputs_json = cfg.model_dump_json(), inputs.model_dump_json()
    Path(output).mkdir(parents=True, exist_ok=True)

    n_shards = plan_task(config_json, inputs_json, output)
    inner = shards_flow.with_options(task_runner=make_task_runner(runner, workers))
    inner(config_json=config_json, output=output, n_shards=n_shards)
    result = finalize_task(config_json, output)
    _publish(result)
    from pipeline.manifest import load_manifest

    manifest = Path(result["manifest"])
    publish_manifests("build-synthetic", [load_manifest(manifest)], [manifest], output, announce=announce)
    logger.info("build-synthetic: %d pairs kept, %d dropped, in %s", result["kept"], result["rejected"], output)
    return {k: v for k, v in result.items() if k != "yields"}


@flow(name="build-synthetic-shards")
def shards_flow(config_json: str, output: str, n_shards: int) -> list[dict[str, Any]]:
    futures = [shard_task.submit(config_json, output, i) for i in range(n_shards)]
    return [f.result() for f in futures]


def _publish(result: dict[str, Any]) -> None:
    rows = [{"stage": r["stage"], "in": r["in"], "out": r["out"],
             "yield": "" if r["yield"] is None else f"{100 * r['yield']:.1f} %"} for r in result["yields"]]
    create_table_artifact(key=artifact_key("build-synthetic", "yields"), table=rows,
                          description="synthetic build: items in and out of each stage")
    create_markdown_artifact(key=artifact_key("build-synthetic", "data-card"),
                             markdown=Path(result["data_card"]).read_text(), description="synthetic build data card")
    if result.get("contact_sheet"):
        create_link_artifact(key=artifact_key("build-synthetic", "contact-sheet"),
                             link=Path(result["contact_sheet"]).resolve().as_uri(), link_text="contact sheet",
                             description="source | mask | target | instruction for the first pairs")
