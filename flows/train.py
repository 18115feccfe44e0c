"""`train`: run a SmartEdit training stage (model/train_stage1.py, model/train_stage2.py) as a Prefect flow.

Thin: one task runs the recipe and returns a small summary dict; the flow publishes a markdown artifact
(losses, steps, checkpoint, pipeline dir). On a GPU the task holds one slot of the `gpu` global concurrency
limit for the whole run. Prefect 3.8.8 *skips* acquisition with only a warning when the limit does not exist
(non-strict mode), so the task creates the limit if it is missing (one slot per visible GPU) and then acquires
with ``strict=True``: a GPU run never trains unguarded. CPU runs (tests, demo) take no slot.

    prefect deployment run train/train -p preset=tiny -p stage=2 -p steps=4 \
        -p manifests='["/data/shards/magicbrush-train/shardindex.json"]' -p output_dir=/data/runs/tiny
    prefect deployment run train/train -p model=mgie -p preset=tiny -p manifests='["/data/shards/magicbrush"]'
    python -m flows.train --preset tiny --stage 1 --steps 4 --manifest shards/cc12m/shardindex.json --output-dir runs/s1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task

from flows.common import artifact_key, gpu_slot, markdown

def expand_manifests(manifests: list[str] | str | None) -> list[str]:
    """A path or a list of paths; a directory stands for every shardindex.json below it (how the
    `shards.built` trigger passes the event's output root)."""
    from pipeline.manifest import find_manifests

    paths = [manifests] if isinstance(manifests, str) else list(manifests or [])
    expanded: list[str] = []
    for path in paths:
        found = find_manifests(path) if Path(path).is_dir() else [Path(path)]
        if not found:
            raise ValueError(f"train: {path} holds no shardindex.json; convert or build shards there first")
        expanded += [str(p) for p in found]
    return expanded


def _summary(result) -> dict[str, Any]:
    return {
        "run_dir": result.run_dir, "stage": result.stage, "steps": result.steps, "start_step": result.start_step,
        "final": {k: float(v) for k, v in result.final.items()}, "checkpoint": result.checkpoint,
        "pipeline_dir": result.pipeline_dir, "tensorboard_dir": result.tensorboard_dir,
    }


@task(task_run_name="train-{model}-stage{stage}", cache_policy=None)
def run_recipe(config: dict[str, Any], stage: int, model: str = "smartedit") -> dict[str, Any]:
    """Run one stage (MGIE: its single stage) in this process; return the run's summary (paths and final losses)."""
    import torch

    if model == "mgie":
        from model.mgie.train import train_mgie as recipe
        from model.mgie.train_config import MGIETrainConfig as TrainConfig
    else:
        from model.train_config import TrainConfig

        if stage == 1:
            from model.train_stage1 import train_stage1 as recipe
        else:
            from model.train_stage2 import train_stage2 as recipe
    cfg = TrainConfig.from_dict({**config, "stage": stage})
    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    get_run_logger().info("training on %s%s", device, " (holding a `gpu` concurrency slot)" if device == "cuda" else "")
    with gpu_slot(device):
        result = recipe(cfg)
    return _summary(result)


def _markdown(summary: dict[str, Any], config: dict[str, Any], model: str = "smartedit") -> str:
    rows = "\n".join(f"| {k} | {v:.5g} |" for k, v in summary["final"].items())
    title = "MGIE" if model == "mgie" else f"SmartEdit stage {summary['stage']}"
    return (
        f"# {title} — preset `{config['preset']}`\n\n"
        f"Steps {summary['start_step']} → **{summary['steps']}**\n\n"
        f"| final | value |\n|---|---|\n{rows}\n\n"
        f"- checkpoint: `{summary['checkpoint']}`\n- pipeline: `{summary['pipeline_dir']}`\n"
        f"- TensorBoard: `tensorboard --logdir {summary['tensorboard_dir']}`\n"
        f"- manifests: {', '.join(f'`{m}`' for m in config['manifests'])}\n"
    )


@flow(name="train", log_prints=False)
def train(
    model: Literal["smartedit", "mgie"] = "smartedit",
    preset: str = "tiny",
    stage: int = 2,
    manifests: list[str] | str | None = None,
    output_dir: str = "runs/smartedit",
    steps: int | None = None,
    resume: str | None = "latest",
    init_from: str | None = None,
    allow_missing_sources: bool = False,
    model_overrides: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one stage of ``model`` (smartedit, or mgie: one stage, presets tiny / mgie-7b). preset: training preset (tiny, 7b, 13b, 7b-code, 13b-code); manifests: shardindex.json
    paths or directories holding them (stage 1: captions; stage 2: the mixture's sources); resume: "latest" (default: continue a rerun from
    its newest checkpoint), a checkpoint dir, or null; init_from: stage 2 only, a stage-1 checkpoint; model_overrides:
    model-config overrides (checkpoint dirs); overrides: any other TrainConfig fields. Returns the summary dict."""
    if model not in ("smartedit", "mgie"):
        raise ValueError(f"train: parameter 'model' is {model!r}; choose 'smartedit' or 'mgie'")
    manifests = expand_manifests(manifests)
    if not manifests:
        raise ValueError("train: parameter 'manifests' is empty; pass the shardindex.json paths to train on")
    fields = {"manifests": manifests, "output_dir": output_dir, "resume": resume or None,
              "model": dict(model_overrides or {}), **(overrides or {})}
    if steps is not None:
        fields["steps"] = steps
    if stage == 2:
        fields |= {"init_from": init_from, "allow_missing_sources": allow_missing_sources}
    elif init_from:
        raise ValueError("train: init_from is a stage-2 parameter (a stage-1 checkpoint to start from)")
    if model == "mgie":
        from model.mgie.train_config import get_mgie_train_preset

        if stage != 2:
            raise ValueError("train: MGIE has a single stage; leave 'stage' at 2")
        cfg = get_mgie_train_preset(preset, **fields)
    else:
        from model.train_config import get_train_preset

        cfg = get_train_preset(stage, preset, **fields)  # validate before the task: bad parameters fail the flow early
    config = {k: v for k, v in cfg.to_dict().items() if k != "stage"}
    summary = run_recipe(config, stage, model)
    key_parts = ("train", "mgie", preset) if model == "mgie" else ("train", f"stage{stage}", preset)
    markdown(artifact_key(*key_parts), _markdown(summary, config, model),
             description=f"{'MGIE' if model == 'mgie' else f'SmartEdit stage-{stage}'} training summary")
    get_run_logger().info("stage %d finished at step %d: %s", stage, summary["steps"], json.dumps(summary["final"]))
    return summary


if __name__ == "__main__":
    from model.cli import train_main

    raise SystemExit(train_main())
