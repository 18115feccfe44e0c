"""`retrain` (deployment `scheduled-retrain`): new shards in, a new model out only if it is not worse.

Chain: convert the sources whose inputs changed (a source whose manifests record the same input
fingerprint is skipped) → build synthetic pairs (resumable: finished shards are kept) → train stage 2
from the current champion → evaluate the candidate on Reason-Edit with the corrected protocol → promote
it only if no gated metric is worse than the champion's beyond its tolerance (model/registry.py). The
champion registry records each decision with the metrics and the manifests' hashes.

    prefect deployment run retrain/scheduled-retrain -p force_convert=true
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from data_specs import spec_path
from flows.common import artifact_key, markdown
from flows.convert import EDIT, SEGMENTATION, VQA, SourceParams

GROUPS = {"segmentation": SEGMENTATION, "vqa": VQA, "edit": EDIT}
PROFILES = spec_path("profiles")
REQUIRED = ("sources", "shards", "runs", "registry", "benchmark")


def load_profile(name: str) -> dict[str, Any]:
    """data_specs/profiles/<name>.yaml (or a path to a YAML file) with ``${VAR}`` filled from the environment
    (``SMARTEDIT_ROOT`` defaults to this checkout). An unset variable is one error naming it."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise FileNotFoundError(f"retrain: profile {name!r}: no {path}; known profiles: {known}")
    env = {"SMARTEDIT_ROOT": str(Path(__file__).resolve().parents[1]), **os.environ}

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            missing = [v for v in re.findall(r"\$\{(\w+)\}", value) if v not in env]
            if missing:
                raise ValueError(f"{path}: {value!r} needs environment variable(s) {missing}; set them on the worker "
                                 f"(see the profile's header)")
            return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], value)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return fill(yaml.safe_load(path.read_text()) or {})


class SyntheticParams(BaseModel):
    """The build-synthetic step: its input (sample-data dir or COCO-format root) and build config fields."""

    input: str
    images: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)


def source_is_current(params: SourceParams, shards: Path) -> bool:
    """True when manifests of this source exist under ``shards`` for every split and all record the
    current input fingerprint of its root."""
    from pipeline.fingerprint import tree_fingerprint
    from pipeline.manifest import find_manifests, load_manifest
    from pipeline.sources import available_splits

    if not shards.exists():
        return False
    fingerprint = tree_fingerprint(params.root)
    splits = set(params.splits or available_splits(params.source, params.root, **params.options))
    found = set()
    for path in find_manifests(shards):
        index = load_manifest(path)
        if index.get("provenance", {}).get("source") == params.source and index.get("input_fingerprint") == fingerprint:
            found.add(path.parent.name)
    return splits <= found


def manifest_hashes(paths: list[str]) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@flow(name="retrain", log_prints=False)
def retrain(
    sources: dict[str, list[SourceParams]] | None = None,
    shards: str | None = None,
    runs: str | None = None,
    registry: str | None = None,
    benchmark: str | None = None,
    synthetic: SyntheticParams | None = None,
    profile: str | None = None,
    preset: str = "tiny",
    steps: int | None = None,
    model: Literal["smartedit", "mgie"] | dict[str, Any] | None = None,
    training_overrides: dict[str, Any] | None = None,
    seeds: list[int] = [0],  # noqa: B006 - a JSON parameter, never mutated
    num_inference_steps: int | None = None,
    tolerances: dict[str, float] | None = None,
    clip_dir: str | None = None,
    lpips_dir: str | None = None,
    device: str = "cpu",
    force_convert: bool = False,
) -> dict[str, Any]:
    """Convert what changed, build synthetic pairs, train stage 2 on training splits, evaluate, gate.

    Args:
        sources: Convert group ("segmentation", "vqa", "edit") → sources, as the convert-* flows take them.
            Groups left out are skipped (logged and listed in the run's artifact).
        shards: Output root of the conversions and the synthetic build; training reads its training splits.
        runs: Where candidates are trained and evaluated (runs/candidate-<run id>).
        registry: The champion registry JSON (created on the first run).
        benchmark: A Reason-Edit directory (evaluation only; never trained on).
        synthetic: The build-synthetic step: input and build config. None skips it (logged, in the artifact).
        profile: A profile in data_specs/profiles (demo, production) or a YAML path: defaults for every
            parameter not given explicitly.
        preset: Training preset (tiny, 7b, 13b, 7b-code, 13b-code).
        steps: Optimizer steps of the candidate's stage-2 run (default: the preset's).
        model: "smartedit" or "mgie" (which model the candidate is; MGIE's model overrides go in
            training_overrides={"model": {...}}), or SmartEdit model-config overrides (checkpoint dirs: llava_dir,
            unet_dir, vae_dir, clip_text_dir).
        training_overrides: Any other TrainConfig field of the candidate's run.
        seeds: Evaluation seeds.
        num_inference_steps: Sampler steps at evaluation (default: the pipeline's).
        tolerances: PromotionPolicy tolerances ("group.metric" → allowed regression); default the policy's.
        clip_dir: Local CLIP ViT-L/14 dir for the CLIP score.
        lpips_dir: Local LPIPS weights dir.
        device: Evaluation device ("cpu", "cuda").
        force_convert: Convert every source even when its inputs did not change.
    """
    from flows.convert import convert_edit, convert_segmentation, convert_vqa
    from flows.evaluate import evaluate_pipeline
    from flows.train import train
    from model.registry import ChampionRegistry, PromotionPolicy, decide, flatten_metrics
    from pipeline.manifest import find_manifests

    logger = get_run_logger()
    given = {"sources": sources, "shards": shards, "runs": runs, "registry": registry, "benchmark": benchmark,
             "synthetic": synthetic}
    if profile:
        defaults = load_profile(profile)
        unknown = set(defaults) - set(given) - {"preset", "steps", "model", "num_inference_steps", "clip_dir",
                                                "lpips_dir", "device", "training_overrides", "seeds", "tolerances"}
        if unknown:
            raise ValueError(f"retrain: profile {profile!r} has unknown fields {sorted(unknown)}")
        # explicit parameters win; the profile fills what the run left unset (preset etc. only from the profile
        # when the run kept the flow's default)
        sources = sources if sources is not None else defaults.get("sources")
        shards = shards or defaults.get("shards")
        runs = runs or defaults.get("runs")
        registry = registry or defaults.get("registry")
        benchmark = benchmark or defaults.get("benchmark")
        synthetic = synthetic if synthetic is not None else defaults.get("synthetic")
        preset = defaults.get("preset", preset) if preset == "tiny" else preset
        steps = steps if steps is not None else defaults.get("steps")
        model = model if model is not None else defaults.get("model")
        num_inference_steps = num_inference_steps if num_inference_steps is not None else defaults.get("num_inference_steps")
        clip_dir = clip_dir or defaults.get("clip_dir")
        lpips_dir = lpips_dir or defaults.get("lpips_dir")
        device = defaults.get("device", device) if device == "cpu" else device
        logger.info("retrain: defaults from profile %r", profile)
    missing = [k for k, v in {"sources": sources, "shards": shards, "runs": runs, "registry": registry,
                              "benchmark": benchmark}.items() if not v]
    if missing:
        raise ValueError(f"retrain: no value for {missing}; pass them or a profile (-p profile=demo; see data_specs/profiles)")
    if not Path(benchmark).exists():
        raise FileNotFoundError(f"retrain: parameter 'benchmark' is {benchmark}, which does not exist; pass a Reason-Edit directory")
    if synthetic is not None:
        synthetic = SyntheticParams.model_validate(synthetic)
    stages: list[dict[str, str]] = []

    def stage(name: str, status: str, detail: str) -> None:
        stages.append({"stage": name, "status": status, "detail": detail})
        (logger.warning if status == "skipped" else logger.info)("retrain: %s %s: %s", name, status, detail)

    shards_dir = Path(shards)
    run_id = str(flow_run.id or "local")[:8]
    candidate_dir = Path(runs) / f"candidate-{run_id}"

    # 1. conversions, skipped for sources whose inputs did not change
    convert = {"segmentation": convert_segmentation, "vqa": convert_vqa, "edit": convert_edit}
    unknown_groups = set(sources) - set(GROUPS)
    if unknown_groups:
        raise ValueError(f"retrain: sources groups {sorted(unknown_groups)}; expected some of {list(GROUPS)}")
    converted, skipped = [], []
    for group in GROUPS:
        if not sources.get(group):
            stage(f"convert-{group}", "skipped", "no sources of this group in the parameters / profile")
            continue
        group_sources = [SourceParams.model_validate(s) for s in sources[group]]
        stale = [s for s in group_sources if force_convert or not source_is_current(s, shards_dir)]
        fresh = [s.source for s in group_sources if s not in stale]
        skipped += fresh
        if stale:
            written = convert[group](sources=stale, output=shards, announce=False)
            converted += written
            stage(f"convert-{group}", "ran", f"{', '.join(s.source for s in stale)}: {len(written)} datasets"
                  + (f"; unchanged inputs kept: {', '.join(fresh)}" if fresh else ""))
        else:
            stage(f"convert-{group}", "skipped", f"inputs unchanged since the last conversion: {', '.join(fresh)}")

    # 2. synthetic pairs (finished shards are kept by the build's completion markers)
    if synthetic is not None:
        from flows.build_synthetic import build_synthetic

        # The benchmark this retrain evaluates on is always kept out of the synthetic sources (leakage guard).
        config = dict(synthetic.config)
        config["eval_sets"] = list(dict.fromkeys([*config.get("eval_sets", []), benchmark]))
        built = build_synthetic(input=synthetic.input, images=synthetic.images, output=str(shards_dir / "synthetic"),
                                announce=False, config=config)
        stage("build-synthetic", "ran", f"{built['kept']} pairs kept, {built['rejected']} dropped"
              + (" (unchanged: every shard resumed)" if built.get("unchanged") else ""))
    else:
        stage("build-synthetic", "skipped", "no `synthetic` step in the parameters / profile")

    # 3. stage 2 from the champion, on training splits only (data_specs/splits.yaml)
    from model.mixture import select_training

    reg = ChampionRegistry(registry)
    champion = reg.champion
    selection = select_training(find_manifests(shards_dir))
    manifests = [r.index_path for r in selection.used]
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=artifact_key("retrain", "datasets"), table=selection.rows(),
                          description="retraining: manifests used for training and excluded (held-out splits)")
    stage("training splits", "ran", f"{len(manifests)} training manifests; excluded {len(selection.excluded)}: "
          + (", ".join(f"{r.name}" for r, _ in selection.excluded) or "none"))
    if not manifests:
        raise ValueError(f"retrain: no training-split manifests under {shards_dir}; convert the sources first")
    from flows.train import split_model

    model_name, _ = split_model(model)
    # A champion of the other model cannot initialise this one (different trainable sets): train from scratch then.
    same_model = champion is not None and champion.get("model", "smartedit") == model_name
    summary = train(preset=preset, stage=2, manifests=manifests, output_dir=str(candidate_dir / "train"), steps=steps,
                    resume=None, init_from=champion["checkpoint"] if same_model else None,
                    allow_missing_sources=True, model=model, overrides=training_overrides)

    # 4. evaluate candidate (and the champion, when its metrics on this benchmark are not recorded)
    def metrics_of(pipeline_dir: str, out_dir: Path) -> dict[str, float | None]:
        result = evaluate_pipeline(pipeline_dir=pipeline_dir, benchmark=benchmark, out_dir=str(out_dir),
                                   protocol="corrected", seeds=seeds, clip_dir=clip_dir, lpips_dir=lpips_dir,
                                   device=device, num_inference_steps=num_inference_steps)
        groups = {g: {m: v for m, v in agg.items() if m in ("psnr", "ssim", "lpips", "clip")}
                  for g, agg in result["groups"].items()}
        return flatten_metrics(groups)

    stage("train", "ran", f"steps {summary['start_step']} → {summary['steps']}"
          + (f" from champion {champion['checkpoint']}" if champion else " (no champion yet: fresh)"))
    candidate_metrics = metrics_of(summary["pipeline_dir"], candidate_dir / "eval")
    champion_metrics = None
    if champion:
        if champion.get("benchmark") == benchmark and champion.get("metrics"):
            champion_metrics = champion["metrics"]
        else:
            champion_metrics = metrics_of(champion["pipeline"], candidate_dir / "eval-champion")

    # 5. the gate
    policy = PromotionPolicy(tolerances=tolerances) if tolerances else PromotionPolicy()
    decision = decide(candidate_metrics, champion_metrics, policy)
    entry = {
        "model": model_name, "pipeline": summary["pipeline_dir"], "checkpoint": summary["checkpoint"], "metrics": candidate_metrics,
        "benchmark": benchmark, "protocol": "corrected", "manifests": manifest_hashes(manifests),
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
    }
    reg.record(entry, decision)
    verdict = "PROMOTED" if decision.promote else "kept the champion"
    stage("gate", "ran", verdict)
    stage_table = "\n".join(f"| {r['stage']} | {r['status']} | {r['detail']} |" for r in stages)
    used = "\n".join(f"| {r['dataset']} | {r['split']} | {r['samples']} | {r['training']} | {r['why']} |" for r in selection.rows())
    markdown(artifact_key("retrain", "decision"), f"# Retraining: {verdict}\n\n" + "\n".join(f"- {r}" for r in decision.reasons)
             + f"\n\n## Stages\n\n| stage | status | detail |\n|---|---|---|\n{stage_table}\n"
             + f"\n## Datasets\n\n| dataset | split | samples | training | why |\n|---|---|---|---|---|\n{used}\n",
             description="scheduled retraining: promotion decision, stages run or skipped, datasets used and excluded")
    logger.info("retrain: %s (%s)", verdict, "; ".join(decision.reasons))
    return {"promoted": decision.promote, "reasons": decision.reasons, "candidate": entry, "registry": str(registry),
            "converted": converted, "skipped": skipped, "report": str(candidate_dir / "eval" / "report.md"),
            "stages": stages, "datasets": selection.rows()}
