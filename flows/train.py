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
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task

from flows.common import artifact_key, gpu_slot, markdown, recipe_progress
from flows.profiles import fill_env, known_profiles, profile_path, read_profile
from model.train import expand_manifests

# Named training profiles (demo, production): the defaults an event-triggered run trains with, chosen when the
# deployment is made (prefect.yaml passes `profile: "{{ $SMARTEDIT_PROFILE }}"`), so the trigger itself names
# no preset and a production deployment cannot train the tiny demo model on an event.
_FLOW_FIELDS = ("preset", "stage", "steps", "resume", "init_from", "allow_missing_sources", "model", "overrides")


def load_train_profile(name: str) -> dict[str, Any]:
    """The ``train:`` section of data_specs/profiles/<name>.yaml (or a YAML path): `train` parameters plus
    ``allowed_presets``, with ``${VAR}`` filled from the environment. Errors name the profile and the fix."""
    if "{{" in name:
        raise ValueError(f"train: profile {name!r} was never filled in: deploy with SMARTEDIT_PROFILE set "
                         f"(demo or production; `python -m flows.stack start` sets demo)")
    path = profile_path(name)
    if not path.is_file():
        raise ValueError(f"train: profile {name!r}: no {path}; known profiles: {known_profiles()}")
    raw = read_profile(path).get("train")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: no `train:` section; it holds what the `train` trigger trains ({sorted(_FLOW_FIELDS)} "
                         f"and allowed_presets)")
    unknown = sorted(set(raw) - {*_FLOW_FIELDS, "allowed_presets"})
    if unknown:
        raise ValueError(f"{path}: train: unknown fields {unknown}; it holds {sorted(_FLOW_FIELDS)} and allowed_presets")
    return fill_env(raw, str(path))


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


# How long node 0 waits for every node to join the rendezvous (torchrun's own default, written out: pods of an
# Indexed Job may start minutes apart while images pull); SMARTEDIT_RDZV_JOIN_TIMEOUT overrides it.
RDZV_JOIN_TIMEOUT_S = 600


def torchrun_command(target: list[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "smartedit",
                     join_timeout_s: int = 600) -> list[str]:
    """``python -m torch.distributed.run`` (torchrun) for ``target`` (``["-m", "model.train_stage2", ...]``): a
    standalone rendezvous on one node; across nodes torchrun's *static* rendezvous at ``rdzv_endpoint`` (host:port
    of node 0, which hosts the store) with this node's rank, waiting up to ``join_timeout_s`` for every node to
    join. Static, not c10d: c10d ranks nodes by arrival and ignores ``--node_rank``, so "node 0" (the pod the
    rendezvous host names, the node whose flow run reports the run) would be whichever node came first.
    torchrun exits non-zero when any rank fails, and stops the others."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]
    if nnodes <= 1:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("train: nnodes > 1 needs rdzv_endpoint (host:port of node 0), e.g. from the work pool's "
                             "job variables (SMARTEDIT_RDZV_ENDPOINT)")
        if not 0 <= node_rank < nnodes:
            raise ValueError(f"train: node_rank is {node_rank} but nnodes is {nnodes}; give each node a rank "
                             f"0 … {nnodes - 1} (SMARTEDIT_NODE_RANK or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX)")
        cmd += ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--rdzv_backend", "static",
                "--rdzv_endpoint", rdzv_endpoint, "--rdzv_id", rdzv_id, "--rdzv_conf", f"timeout={int(join_timeout_s)}",
                "--max_restarts", "0"]
    return cmd + target


def stream_command(cmd: list[str], env: dict[str, str], logger, what: str = "torchrun") -> None:
    """Run ``cmd``, logging each line of its output as it comes (the flow run's log shows every rank's lines);
    raise with the exit status and the last lines when it fails."""
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.info("%s", line)
        status = proc.wait()
    if status != 0:
        raise RuntimeError(f"train: {what} exited with status {status} (a rank failed); last lines:\n" + "\n".join(tail))


def _launch_env(key: str, value: Any, default: Any) -> Any:
    # a work pool sets node rank and rendezvous per job (job variables → env); a Kubernetes Indexed Job gives
    # each pod JOB_COMPLETION_INDEX, which is its node rank
    if value is not None:
        return value
    if key == "SMARTEDIT_NODE_RANK" and key not in os.environ and "JOB_COMPLETION_INDEX" in os.environ:
        return int(os.environ["JOB_COMPLETION_INDEX"])
    raw = os.environ.get(key)
    return default if raw is None else type(default)(raw) if default is not None else raw


def launch_topology(nnodes: int | None, node_rank: int | None, rdzv_endpoint: str | None) -> tuple[int, int, str | None]:
    """(nnodes, node_rank, rdzv_endpoint): the parameters given, else the job's environment (SMARTEDIT_NNODES,
    SMARTEDIT_NODE_RANK or JOB_COMPLETION_INDEX, SMARTEDIT_RDZV_ENDPOINT; the Kubernetes work pool sets them from
    its job variables), else one node. An explicit nnodes that differs from the job's SMARTEDIT_NNODES (its pod
    count) is refused: the pods would each train a separate run into the same output dir."""
    env_nnodes = os.environ.get("SMARTEDIT_NNODES")
    if nnodes is not None and env_nnodes is not None and int(env_nnodes) != int(nnodes):
        raise ValueError(f"train: parameter nnodes={nnodes} but this job runs SMARTEDIT_NNODES={env_nnodes} nodes "
                         f"(the work pool's nnodes job variable); leave the parameter unset or pass the same number")
    return (int(_launch_env("SMARTEDIT_NNODES", nnodes, 1)), int(_launch_env("SMARTEDIT_NODE_RANK", node_rank, 0)),
            _launch_env("SMARTEDIT_RDZV_ENDPOINT", rdzv_endpoint, None))


def node_launch(config: dict[str, Any], stage: int, nproc_per_node: int, nnodes: int, node_rank: int,
                rdzv_endpoint: str | None) -> tuple[list[str], dict[str, str], Path, str]:
    """This node's torchrun command for one stage (its launch config written to the run dir), its environment, the
    path where global rank 0 writes the run's result JSON, and how failures name it. The `train` flow (node 0) and
    flows/train_node_agent.py (nodes > 0 of a Kubernetes Indexed Job) launch with it."""
    from model.train_config import TrainConfig

    cfg = TrainConfig.from_dict({**config, "stage": stage})
    run_dir = local_run_dir(cfg.output_dir)  # launch files of a run on a bucket live in its staging dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # per node: on a shared output dir every node writes its own launch config
    config_path = run_dir / f"launch-stage{stage}-node{node_rank}.yaml"
    result_path = run_dir / f"launch-result-node{node_rank}.json"
    cfg.save_yaml(config_path)
    result_path.unlink(missing_ok=True)
    cmd = torchrun_command(["-m", f"model.train_stage{stage}", "--config", str(config_path)], nproc_per_node, nnodes,
                           node_rank, rdzv_endpoint, rdzv_id=f"smartedit-{run_dir.name}",
                           join_timeout_s=int(os.environ.get("SMARTEDIT_RDZV_JOIN_TIMEOUT", RDZV_JOIN_TIMEOUT_S)))
    env = {**os.environ, "SMARTEDIT_RESULT_JSON": str(result_path), "PYTHONUNBUFFERED": "1"}
    what = "torchrun" if nnodes <= 1 else f"torchrun on node {node_rank} of {nnodes}"
    return cmd, env, result_path, what


@task(task_run_name="train-stage{stage}-{nnodes}x{nproc_per_node}", cache_policy=None)
def launch_recipe(config: dict[str, Any], stage: int, nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                  rdzv_endpoint: str | None = None) -> dict[str, Any]:
    """Run one stage as ``torchrun -m model.train_stage{stage}`` over nproc_per_node × nnodes processes, streaming
    their output into this run's log; the summary comes from global rank 0 (node 0)."""
    cmd, env, result_path, what = node_launch(config, stage, nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    logger = get_run_logger()
    logger.info("launching node %d of %d: %s", node_rank, nnodes, " ".join(cmd))
    with gpu_slot("cuda" if _cuda() and not config.get("cpu") else "cpu"):
        stream_command(cmd, env, logger, what)
    if not result_path.exists():  # nodes other than 0 train as well but report nothing
        return {"run_dir": str(Path(config["output_dir"])), "stage": stage, "node_rank": node_rank}
    return _summary(RunResultView(json.loads(result_path.read_text())))


def local_run_dir(output_dir: str) -> Path:
    """The local directory a run writes into: ``output_dir`` itself, or for a bucket URL its staging directory
    (pipeline/remote_dirs.py; the recipe uploads from there)."""
    from pipeline.remote_dirs import cache_dir
    from pipeline.storage import is_url

    return cache_dir(output_dir, "runs") if is_url(output_dir) else Path(output_dir)


def _checkpoint_exists(path: str) -> bool:
    """A local checkpoint dir, or a checkpoint URL whose upload finished (its ``_COMPLETE`` marker is there)."""
    from pipeline.remote_dirs import is_complete
    from pipeline.storage import is_url

    return is_complete(path) if is_url(path) else Path(path).exists()


class RunResultView:
    """`RunResult` fields read back from the launched run's JSON (for `_summary`)."""

    def __init__(self, data: dict[str, Any]):
        self.__dict__.update(data)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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


def resolve_profile(profile: str | None, **given: Any) -> dict[str, Any]:
    """The flow's parameters with the profile's values where the run left them None; preset ``tiny`` and stage 2
    when neither names one. Refuses a preset outside the profile's ``allowed_presets``."""
    allowed = None
    if profile:
        defaults = load_train_profile(profile)
        allowed = defaults.pop("allowed_presets", None)
        given = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    given = {k: given.get(k) for k in _FLOW_FIELDS}
    given["preset"], given["stage"] = given["preset"] or "tiny", int(given["stage"] or 2)
    if allowed is not None and given["preset"] not in allowed:
        raise ValueError(f"train: profile {profile!r} does not train preset {given['preset']!r} (allowed: {allowed}); "
                         f"pass a preset it allows or use another profile")
    return given


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


def resolve_run(preset: str | None = None, stage: int | None = None, manifests: list[str] | str | None = None,
                output_dir: str | None = None, steps: int | None = None, resume: str | None = None,
                init_from: str | None = None, allow_missing_sources: bool | None = None,
                model: str | dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                profile: str | None = None, nproc_per_node: int = 1, nnodes: int | None = None,
                **launch: Any):
    """The `train` flow's parameters → (TrainConfig, its dict without ``stage``, stage, model name, dataset rows),
    validated: bad parameters fail before anything trains. flows/train_node_agent.py resolves a flow run's
    parameters with it, so every node trains the config node 0 trains."""
    given = resolve_profile(profile, preset=preset, stage=stage, steps=steps, resume=resume, init_from=init_from,
                            allow_missing_sources=allow_missing_sources, model=model, overrides=overrides)
    preset, stage, steps, resume = given["preset"], given["stage"], given["steps"], given["resume"]
    init_from, allow_missing_sources = given["init_from"], given["allow_missing_sources"]
    model, overrides = given["model"], given["overrides"]
    model_name, model_overrides = split_model(model)
    if model_name == "mgie" and (nproc_per_node > 1 or (nnodes or 1) > 1):
        raise ValueError("train: nproc_per_node/nnodes launch the SmartEdit recipes (model.train_stageN); "
                         "train MGIE with nproc_per_node=1")
    cfg = train_config(preset, stage, manifests, overrides, model_name=model_name, output_dir=output_dir, steps=steps,
                       resume=resume, init_from=init_from, allow_missing_sources=allow_missing_sources,
                       model=model_overrides)
    used, dataset_rows = select_manifests(list(cfg.manifests), stage)
    if used != list(cfg.manifests):
        cfg = dataclasses.replace(cfg, manifests=used)
    for name, path in (("init_from", cfg.init_from if stage == 2 else None),
                       ("resume", cfg.resume if cfg.resume not in (None, "", "latest") else None)):
        if path and not _checkpoint_exists(path):  # a missing checkpoint is bad input, not an I/O error to retry
            raise FileNotFoundError(f"train: parameter {name!r} is {path}, which does not exist (on a bucket: has no "
                                    "_COMPLETE marker); pass an existing checkpoint dir")
    # validated before the task: bad parameters fail the flow early
    config = {k: v for k, v in cfg.to_dict().items() if k != "stage"}
    return cfg, config, stage, model_name, dataset_rows


@flow(name="train", log_prints=False)
def train(
    preset: str | None = None,
    stage: int | None = None,
    manifests: list[str] | str | None = None,
    output_dir: str | None = None,
    steps: int | None = None,
    resume: str | None = None,
    init_from: str | None = None,
    allow_missing_sources: bool | None = None,
    model: Literal["smartedit", "mgie"] | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    profile: str | None = None,
    nproc_per_node: int = 1,
    nnodes: int | None = None,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
) -> dict[str, Any]:
    """Train one stage (`model.train.run`). Parameters are `model.train_config.TrainConfig` fields (see its
    docstrings); None keeps the preset's value (resume: "latest", so a rerun continues from its newest checkpoint;
    "" starts fresh).
    preset: tiny, 7b, 13b, 7b-official, 13b-official; manifests: shardindex.json paths or directories holding
    them (stage 2 trains on their training splits only, data_specs/splits.yaml); overrides: any other TrainConfig
    field; profile: a profile in data_specs/profiles (demo, production; its train: section) or a YAML path whose values
    fill the parameters left unset (the event trigger passes only this, the manifests and the output dir). Without
    one: preset tiny, stage 2. A run that trains zero steps fails. model: "smartedit" (default) or "mgie" (MGIE: one
    stage, presets tiny and mgie-7b, its model overrides as overrides={"model": {...}}), or a mapping of SmartEdit
    model-config overrides.
    nproc_per_node × nnodes > 1 launches the recipe with torchrun (one process per GPU, or gloo CPU processes),
    streams every rank's output into this run's log and fails when any rank fails; across nodes, this flow run is
    node 0 (or one flow run per node) with the rendezvous host:port of node 0, and on a Kubernetes Indexed Job the
    pods of nodes > 0 run flows/train_node_agent.py for this same flow run (defaults: SMARTEDIT_NNODES,
    SMARTEDIT_NODE_RANK or JOB_COMPLETION_INDEX, SMARTEDIT_RDZV_ENDPOINT; an nnodes that differs from
    SMARTEDIT_NNODES is refused). Returns the summary dict."""
    nnodes, node_rank, rdzv_endpoint = launch_topology(nnodes, node_rank, rdzv_endpoint)
    cfg, config, stage, model_name, dataset_rows = resolve_run(
        preset=preset, stage=stage, manifests=manifests, output_dir=output_dir, steps=steps, resume=resume,
        init_from=init_from, allow_missing_sources=allow_missing_sources, model=model, overrides=overrides,
        profile=profile, nproc_per_node=nproc_per_node, nnodes=nnodes)
    if profile:
        get_run_logger().info("train: preset %r, stage %d from profile %r", cfg.preset, stage, profile)
    if nproc_per_node * nnodes > 1:
        summary = launch_recipe(config, stage, nproc_per_node, nnodes, node_rank, rdzv_endpoint)
        if "steps" not in summary:
            get_run_logger().info("node %d of %d finished; node 0 reports the run", node_rank, nnodes)
            return summary
    else:
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
