"""`retrain` (deployment `scheduled-retrain`): new shards in, a new model out only if it edits, and edits well.

Chain: convert the sources whose inputs changed (a source whose manifests record the same input
fingerprint is skipped) → build synthetic pairs (resumable: finished shards are kept) → train stage 2
from the current champion → the promotion gate (subflow `retrain-gate`): evaluate the candidate and the
`identity` baseline on Reason-Edit with the corrected protocol, re-evaluate the champion and the anchor (first
champion) when their recorded settings differ, and promote only if the candidate edits, beats `identity` on
instruction following and is not significantly worse than either reference on paired per-item differences
(model/evaluation/gate.py). The champion registry (model/registry.py) records each decision with the per-item
results, the settings and the manifests' hashes.

    prefect deployment run retrain/scheduled-retrain -p force_convert=true
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.common import artifact_key, markdown
from flows.convert import EDIT, SEGMENTATION, VQA, SourceParams
from flows.profiles import fill_env, known_profiles, profile_path, read_profile

GROUPS = {"segmentation": SEGMENTATION, "vqa": VQA, "edit": EDIT}
REQUIRED = ("sources", "shards", "runs", "registry", "benchmark")


def load_profile(name: str) -> dict[str, Any]:
    """data_specs/profiles/<name>.yaml (or a path to a YAML file) without its ``train:`` section (the `train`
    trigger's), with ``${VAR}`` filled from the environment. An unset variable is one error naming it."""
    path = profile_path(name)
    if not path.exists():
        raise FileNotFoundError(f"retrain: profile {name!r}: no {path}; known profiles: {known_profiles()}")
    raw = read_profile(path)
    raw.pop("train", None)
    return fill_env(raw, str(path))


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
    from pipeline.storage import as_path

    return {p: hashlib.sha256(as_path(p).read_bytes()).hexdigest() for p in paths}


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
    clip_dir: str | None = None,
    lpips_dir: str | None = None,
    device: str = "cpu",
    force_convert: bool = False,
    dino_dir: str | None = None,
    vlm_dir: str | None = None,
    allow_fidelity_only: bool = False,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert what changed, build synthetic pairs, train stage 2 on training splits, evaluate, gate.

    Args:
        sources: Convert group ("segmentation", "vqa", "edit") → sources, as the convert-* flows take them.
            Groups left out are skipped (logged and listed in the run's artifact).
        shards: Output root of the conversions and the synthetic build; training reads its training splits.
        runs: Where candidates are trained and evaluated (runs/candidate-<run id>); a bucket URL
            (s3://bucket/runs) keeps checkpoints and pipelines there (evaluation reports stay in the local staging
            dir, $SMARTEDIT_CACHE/runs/candidate-<run id>-<hash>).
        registry: The champion registry JSON (created on the first run); local or on a bucket (s3://.../champion.json).
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
        clip_dir: Local CLIP ViT-L/14 dir: CLIP score, CLIP direction, CLIP-I (instruction-following metrics).
        dino_dir: Local DINOv2 dir (DINO against target images, where the benchmark has them).
        vlm_dir: Local LLaVA dir for the VLM judge column.
        allow_fidelity_only: Let the gate run without any instruction-following metric (recorded with each
            decision); without it the gate refuses to run then.
        gate: GatePolicy fields (confidence, n_resamples, seed, min_fg_change, min_edit_rate, margins).
        lpips_dir: Local LPIPS weights dir.
        device: Evaluation device ("cpu", "cuda").
        force_convert: Convert every source even when its inputs did not change.
    """
    from flows.convert import convert_edit, convert_segmentation, convert_vqa
    from flows.train import train
    from model.registry import ChampionRegistry
    from pipeline.manifest import find_manifests

    logger = get_run_logger()
    given = {"sources": sources, "shards": shards, "runs": runs, "registry": registry, "benchmark": benchmark,
             "synthetic": synthetic}
    if profile:
        defaults = load_profile(profile)
        unknown = set(defaults) - set(given) - {"preset", "steps", "model", "num_inference_steps", "clip_dir",
                                                "lpips_dir", "device", "training_overrides", "seeds", "dino_dir",
                                                "vlm_dir", "allow_fidelity_only", "gate"}
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
        dino_dir = dino_dir or defaults.get("dino_dir")
        vlm_dir = vlm_dir or defaults.get("vlm_dir")
        allow_fidelity_only = allow_fidelity_only or bool(defaults.get("allow_fidelity_only", False))
        gate = gate if gate is not None else defaults.get("gate")
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

    from pipeline.remote_dirs import cache_dir, join
    from pipeline.storage import as_path, is_url

    shards_dir = as_path(shards)
    run_id = str(flow_run.id or "local")[:8]
    candidate_dir = join(runs, f"candidate-{run_id}")  # a local path or a URL
    # evaluation writes reports locally: a candidate on a bucket is evaluated in its staging dir
    eval_dir = str(cache_dir(candidate_dir, "runs")) if is_url(candidate_dir) else candidate_dir

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
    summary = train(preset=preset, stage=2, manifests=manifests, output_dir=join(candidate_dir, "train"), steps=steps,
                    resume=None, init_from=champion.get("checkpoint") if same_model else None,
                    allow_missing_sources=True, model=model, overrides=training_overrides)

    stage("train", "ran", f"steps {summary['start_step']} → {summary['steps']}"
          + (f" from champion {champion.get('checkpoint')}" if champion else " (no champion yet: fresh)"))

    # 4-5. the promotion gate
    result = promotion_gate(
        candidate=summary["pipeline_dir"], registry=registry, benchmark=benchmark, out_dir=eval_dir,
        seeds=seeds, clip_dir=clip_dir, lpips_dir=lpips_dir, dino_dir=dino_dir, vlm_dir=vlm_dir, device=device,
        num_inference_steps=num_inference_steps, allow_fidelity_only=allow_fidelity_only, gate=gate,
        extra={"model": model_name, "checkpoint": summary["checkpoint"], "manifests": manifest_hashes(manifests)},
    )
    verdict = "PROMOTED" if result["promoted"] else "kept the champion"
    stage("gate", "ran", f"{verdict} ({result['mode']})")
    stage_table = "\n".join(f"| {r['stage']} | {r['status']} | {r['detail']} |" for r in stages)
    used = "\n".join(f"| {r['dataset']} | {r['split']} | {r['samples']} | {r['training']} | {r['why']} |" for r in selection.rows())
    markdown(artifact_key("retrain", "decision"), f"# Retraining: {verdict} ({result['mode']})\n\n"
             + "\n".join(f"- {r}" for r in result["reasons"])
             + f"\n\n## Stages\n\n| stage | status | detail |\n|---|---|---|\n{stage_table}\n"
             + f"\n## Datasets\n\n| dataset | split | samples | training | why |\n|---|---|---|---|---|\n{used}\n",
             description="scheduled retraining: promotion decision, stages run or skipped, datasets used and excluded")
    return {**result, "converted": converted, "skipped": skipped, "stages": stages, "datasets": selection.rows()}


def _gate_policy(gate: dict[str, Any] | None, allow_fidelity_only: bool):
    from model.evaluation.gate import GatePolicy

    fields = dict(gate or {})
    unknown = set(fields) - {"confidence", "n_resamples", "seed", "min_fg_change", "min_edit_rate", "margins"}
    if unknown:
        raise ValueError(f"retrain: gate has unknown fields {sorted(unknown)}; expected confidence, n_resamples, seed, "
                         "min_fg_change, min_edit_rate, margins")
    return GatePolicy(**fields, allow_fidelity_only=allow_fidelity_only)


@flow(name="retrain-gate", log_prints=False)
def promotion_gate(
    candidate: str,
    registry: str,
    benchmark: str,
    out_dir: str,
    seeds: list[int] = [0],  # noqa: B006 - a JSON parameter, never mutated
    clip_dir: str | None = None,
    lpips_dir: str | None = None,
    dino_dir: str | None = None,
    vlm_dir: str | None = None,
    device: str = "cpu",
    num_inference_steps: int | None = None,
    allow_fidelity_only: bool = False,
    gate: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``candidate`` (a pipeline directory, a baseline name or py:module:editor), the identity baseline
    and, when their stored settings differ, the champion and the anchor; decide; record in ``registry``."""
    from flows.evaluate import evaluate_pipeline
    from model.evaluation.comparability import differences
    from model.registry import ChampionRegistry

    logger = get_run_logger()
    policy = _gate_policy(gate, allow_fidelity_only)
    out = Path(out_dir)
    common = dict(benchmark=benchmark, protocol="corrected", seeds=seeds, clip_dir=clip_dir, lpips_dir=lpips_dir,
                  dino_dir=dino_dir, vlm_dir=vlm_dir, device=device)
    cand = evaluate_pipeline(pipeline_dir=candidate, out_dir=str(out / "eval"), num_inference_steps=num_inference_steps,
                             **common)
    settings = cand["settings"]
    # the references run with the candidate's resolved sampling settings, so that every setting matches
    sampling = dict(num_inference_steps=settings.get("num_inference_steps"),
                    text_guidance_scale=settings.get("text_guidance_scale"),
                    image_guidance_scale=settings.get("image_guidance_scale"), resolution=settings.get("height"))
    identity = evaluate_pipeline(pipeline_dir="identity", out_dir=str(out / "eval-identity"), judging_page=False,
                                 **common)

    reg = ChampionRegistry(registry)
    data = reg.load()
    references: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for role in ("champion", "anchor"):
        entry = data.get(role)
        if entry is None:
            continue
        if role == "anchor" and data["champion"] is not None and entry.get("pipeline") == data["champion"].get("pipeline"):
            continue  # the champion is the anchor: one comparison
        stale = differences(entry.get("settings"), settings)
        if stale:
            if not _evaluable(entry.get("pipeline")):
                raise FileNotFoundError(f"{registry}: the {role}'s pipeline {entry.get('pipeline')!r} is gone, so it cannot "
                                        f"be re-evaluated under the new settings ({'; '.join(stale)}); restore it")
            notes.append(f"{role} re-evaluated: {'; '.join(stale)}")
            logger.info("re-evaluating the %s (%s): %s", role, entry["pipeline"], "; ".join(stale))
            fresh = evaluate_pipeline(pipeline_dir=entry["pipeline"], out_dir=str(out / f"eval-{role}"),
                                      judging_page=False, **common, **{k: v for k, v in sampling.items() if v is not None})
            still = differences(fresh["settings"], settings)
            if still:
                raise RuntimeError(f"the {role} could not be evaluated under the candidate's settings: {'; '.join(still)}")
            reg.refresh(role, {"settings": fresh["settings"], "items": fresh["items"], "metrics": _means(fresh)})
            entry = {**entry, "items": fresh["items"]}
        references[role] = entry["items"]

    from model.evaluation.gate import decide

    decision = decide(cand["items"], identity["items"], references, policy)
    decision.reasons = notes + decision.reasons
    entry = {
        "pipeline": candidate, "benchmark": benchmark, "protocol": "corrected", "settings": settings,
        "items": cand["items"], "metrics": _means(cand), "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "allow_fidelity_only": allow_fidelity_only, **(extra or {}),
    }
    reg.record(entry, decision.to_json())
    verdict = "PROMOTED" if decision.promote else "kept the champion"
    markdown(artifact_key("retrain", "gate"), f"# Promotion gate: {verdict} ({decision.mode})\n\n"
             + "\n".join(f"- {r}" for r in decision.reasons), description="promotion gate: decision and its reasons")
    logger.info("retrain: %s (%s)", verdict, "; ".join(decision.reasons))
    return {"promoted": decision.promote, "reasons": decision.reasons, "mode": decision.mode, "candidate": entry,
            "registry": str(registry), "report": cand["report_md"]}


def _evaluable(model: str | None) -> bool:
    """A baseline name, an import path, an existing pipeline directory or a complete pipeline URL on a bucket."""
    from model.evaluation.baselines import baseline_name
    from model.evaluation.evaluate import IMPORT_PREFIX
    from pipeline.remote_dirs import is_complete
    from pipeline.storage import is_url

    return model is not None and (baseline_name(model) is not None or model.startswith(IMPORT_PREFIX)
                                  or (is_complete(model) if is_url(model) else Path(model).is_dir()))


def _means(result: dict[str, Any]) -> dict[str, float | None]:
    """Group means as "group.metric" → value (for reading the registry; the gate uses the per-item results)."""
    return {f"{g}.{m}": v for g, agg in result["groups"].items() for m, v in agg.items() if m != "n"}


