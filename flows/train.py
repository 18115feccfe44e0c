"""`train`: run a SmartEdit training stage (model/train_stage1.py, model/train_stage2.py) or MGIE (model/mgie/train.py)
as a Prefect flow.

Thin: one task runs the recipe and returns a small summary dict; the flow publishes a markdown artifact
(losses, steps, checkpoint, pipeline dir). On a GPU the task holds one slot of the `gpu` global concurrency
limit for the whole run. Prefect 3.8.8 *skips* acquisition with only a warning when the limit does not exist
(non-strict mode), so the task creates the limit if it is missing (one slot per visible GPU) and then acquires
with ``strict=True``: a GPU run never trains unguarded. CPU runs (tests, demo) take no slot.

    prefect deployment run train/train -p preset=tiny -p stage=2 -p steps=4 \
        -p manifests='["/data/shards/magicbrush-train/shardindex.json"]' -p output_dir=/data/runs/tiny
    prefect deployment run train/train -p model=mgie -p preset=tiny -p manifests='["/data/shards/magicbrush"]'
    smartedit train --preset tiny --stage 1 --steps 4 --manifests shards/cc12m/shardindex.json --output-dir runs/s1
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task

from flows.common import artifact_key, gpu_slot, markdown, recipe_progress
from model.train import expand_manifests


def _summary(result) -> dict[str, Any]:
    return {
        "run_dir": result.run_dir, "stage": result.stage, "steps": result.steps, "start_step": result.start_step,
        "final": {k: float(v) for k, v in result.final.items()}, "checkpoint": result.checkpoint,
        "pipeline_dir": result.pipeline_dir, "tensorboard_dir": result.tensorboard_dir,
    }


MODELS = ("smartedit", "mgie")


def split_model(model: str | dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """The flow's ``model`` parameter → (which model, model-config overrides): "smartedit" or "mgie" names the
    model; a mapping is SmartEdit's model-config overrides (as before MGIE existed)."""
    if model is None or isinstance(model, dict):
        return "smartedit", model
    if model not in MODELS:
        raise ValueError(f"train: parameter 'model' is {model!r}; choose one of {list(MODELS)} (or pass model-config "
                         f"overrides as a mapping)")
    return model, None


@task(task_run_name="train-{model_name}-stage{stage}", cache_policy=None)
def run_recipe(config: dict[str, Any], stage: int, model_name: str = "smartedit") -> dict[str, Any]:
    """Run one stage (MGIE: its only one) in this process; return the run's summary (paths and final losses)."""
    import torch

    from model.train import run
    from model.train_config import TrainConfig

    if model_name == "mgie":
        from model.mgie.train_config import MGIETrainConfig as TrainConfig  # noqa: F811 - MGIE's own fields
    cfg = TrainConfig.from_dict({**config, "stage": stage})
    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    get_run_logger().info("training on %s%s", device, " (holding a `gpu` concurrency slot)" if device == "cuda" else "")
    with gpu_slot(device), recipe_progress(f"model.train_stage{stage}", cfg.steps, f"stage-{stage} training steps"):
        result = run(cfg)
    return _summary(result)


def select_manifests(manifests: list[str], stage: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Stage 2 trains on training splits only (data_specs/splits.yaml); returns the manifests that train
    and one row per manifest (used / excluded and why) for the run's artifact."""
    if stage != 2:
        return manifests, []
    from model.mixture import select_training

    selection = select_training(manifests)
    rows = selection.rows()
    if not selection.used:
        raise ValueError(f"train: none of the {len(manifests)} manifests is a training split "
                         f"({'; '.join(f'{r.name}: {why}' for r, why in selection.excluded)}); "
                         "pass training-split manifests or add the source's rule to data_specs/splits.yaml")
    return [r.index_path for r in selection.used], rows


def _datasets_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    lines = [f"| {r['dataset']} | {r['split']} | {r['samples']} | {r['training']} | {r['why']} |" for r in rows]
    return ("\n## Datasets\n\n| dataset | split | samples | training | why |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def _markdown(summary: dict[str, Any], config: dict[str, Any], model_name: str = "smartedit") -> str:
    rows = "\n".join(f"| {k} | {v:.5g} |" for k, v in summary["final"].items())
    title = "MGIE" if model_name == "mgie" else f"SmartEdit stage {summary['stage']}"
    return (
        f"# {title} — preset `{config['preset']}`\n\n"
        f"Steps {summary['start_step']} → **{summary['steps']}**\n\n"
        f"| final | value |\n|---|---|\n{rows}\n\n"
        f"- checkpoint: `{summary['checkpoint']}`\n- pipeline: `{summary['pipeline_dir']}`\n"
        f"- TensorBoard: `tensorboard --logdir {summary['tensorboard_dir']}`\n"
        f"- manifests: {', '.join(f'`{m}`' for m in config['manifests'])}\n"
    )


def train_config(
    preset: str = "tiny",
    stage: int = 2,
    manifests: list[str] | str | None = None,
    overrides: dict[str, Any] | None = None,
    model_name: str = "smartedit",
    **fields: Any,
):
    """The flow's TrainConfig: the (stage, preset) preset with the parameters given (not None) on top. Every
    TrainConfig field is reachable, by name or through ``overrides``; defaults are the preset's, never the flow's.
    ``model_name="mgie"``: an MGIETrainConfig (one stage; presets tiny, mgie-7b; its extra fields via overrides)."""
    from model.train_config import TrainConfig, get_train_preset

    if model_name == "mgie":
        from model.mgie.train_config import MGIETrainConfig as TrainConfig  # noqa: F811 - MGIE's own fields
        from model.mgie.train_config import get_mgie_train_preset

        if int(stage) != 2:
            raise ValueError("train: MGIE has a single stage; leave 'stage' at 2")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"train: overrides {unknown} are not TrainConfig fields; known: {sorted(known)}")
    given = {**(overrides or {}), **{k: v for k, v in fields.items() if v is not None}}
    if stage == 1 and given.get("init_from"):
        raise ValueError("train: init_from is a stage-2 parameter (a stage-1 checkpoint to start from)")
    manifests = expand_manifests(manifests)
    if not manifests:
        raise ValueError("train: parameter 'manifests' is empty; pass the shardindex.json paths to train on")
    if model_name == "mgie":
        return get_mgie_train_preset(preset, **given, manifests=manifests)
    return get_train_preset(stage, preset, **given, manifests=manifests)


@flow(name="train", log_prints=False)
def train(
    preset: str = "tiny",
    stage: int = 2,
    manifests: list[str] | str | None = None,
    output_dir: str | None = None,
    steps: int | None = None,
    resume: str | None = None,
    init_from: str | None = None,
    allow_missing_sources: bool | None = None,
    model: Literal["smartedit", "mgie"] | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one stage (`model.train.run`). Parameters are `model.train_config.TrainConfig` fields (see its
    docstrings); None keeps the preset's value (resume: "latest", so a rerun continues from its newest checkpoint;
    "" starts fresh).
    preset: tiny, 7b, 13b, 7b-official, 13b-official; manifests: shardindex.json paths or directories holding
    them (stage 2 trains on their training splits only, data_specs/splits.yaml); overrides: any other TrainConfig
    field. A run that trains zero steps fails. model: "smartedit" (default) or "mgie" (MGIE: one stage, presets tiny
    and mgie-7b, its model overrides as overrides={"model": {...}}), or a mapping of SmartEdit model-config
    overrides. Returns the summary dict."""
    model_name, model_overrides = split_model(model)
    cfg = train_config(preset, stage, manifests, overrides, model_name=model_name, output_dir=output_dir, steps=steps,
                       resume=resume, init_from=init_from, allow_missing_sources=allow_missing_sources,
                       model=model_overrides)
    used, dataset_rows = select_manifests(list(cfg.manifests), stage)
    if used != list(cfg.manifests):
        cfg = dataclasses.replace(cfg, manifests=used)
    for name, path in (("init_from", cfg.init_from if stage == 2 else None),
                       ("resume", cfg.resume if cfg.resume not in (None, "", "latest") else None)):
        if path and not Path(path).exists():  # a missing checkpoint is bad input, not an I/O error to retry
            raise FileNotFoundError(f"train: parameter {name!r} is {path}, which does not exist; pass an existing checkpoint dir")
    # validated before the task: bad parameters fail the flow early
    config = {k: v for k, v in cfg.to_dict().items() if k != "stage"}
    summary = run_recipe(config, stage, model_name)
    key = ("train", "mgie", cfg.preset) if model_name == "mgie" else ("train", f"stage{stage}", cfg.preset)
    title = "MGIE" if model_name == "mgie" else f"SmartEdit stage-{stage}"
    markdown(artifact_key(*key), _markdown(summary, config, model_name) + _datasets_markdown(dataset_rows),
             description=f"{title} training summary: steps, losses, datasets used and excluded")
    if summary["steps"] - summary["start_step"] <= 0:
        # A resumed run already at its final step would otherwise "complete" having done nothing.
        raise RuntimeError(f"train: trained 0 steps: {summary['run_dir']} already holds a checkpoint at step "
                           f"{summary['start_step']} >= steps={cfg.steps}; pass more steps to continue it, or a new output_dir")
    get_run_logger().info("stage %d trained steps %d → %d: %s", stage, summary["start_step"], summary["steps"],
                          json.dumps(summary["final"]))
    return summary
