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
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.common import artifact_key, markdown
from flows.convert import EDIT, SEGMENTATION, VQA, SourceParams

GROUPS = {"segmentation": SEGMENTATION, "vqa": VQA, "edit": EDIT}


class SyntheticParams(BaseModel):
    """The build-synthetic step: its input (sample-data dir or COCO-format root) and build config fields."""

    input: str
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
    sources: dict[str, list[SourceParams]],
    shards: str,
    runs: str,
    registry: str,
    benchmark: str,
    synthetic: SyntheticParams | None = None,
    preset: str = "tiny",
    steps: int | None = None,
    model: dict[str, Any] | None = None,
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
    """sources: convert group ("segmentation", "vqa", "edit") → sources, as the convert-* flows take them;
    shards: their output root; runs: where candidates are trained and evaluated; registry: the champion
    registry JSON; benchmark: a Reason-Edit directory (or evaluation shards, with target images for the
    MagicBrush-style metrics); clip_dir / vlm_dir / dino_dir: local metric models for the instruction-following
    metrics — without any of them (and without targets) the gate refuses to run unless allow_fidelity_only
    (recorded with every decision); gate: GatePolicy fields (confidence, min_edit_rate, min_fg_change, margins)."""
    from flows.convert import convert_edit, convert_segmentation, convert_vqa
    from flows.train import train
    from model.registry import ChampionRegistry
    from pipeline.manifest import find_manifests

    logger = get_run_logger()
    shards_dir = Path(shards)
    run_id = str(flow_run.id or "local")[:8]
    candidate_dir = Path(runs) / f"candidate-{run_id}"

    # 1. conversions, skipped for sources whose inputs did not change
    convert = {"segmentation": convert_segmentation, "vqa": convert_vqa, "edit": convert_edit}
    converted, skipped = [], []
    for group, group_sources in sources.items():
        if group not in GROUPS:
            raise ValueError(f"retrain: sources group {group!r}; expected one of {list(GROUPS)}")
        group_sources = [SourceParams.model_validate(s) for s in group_sources]
        stale = [s for s in group_sources if force_convert or not source_is_current(s, shards_dir)]
        skipped += [s.source for s in group_sources if s not in stale]
        if stale:
            converted += convert[group](sources=stale, output=shards)
    logger.info("converted %d datasets; unchanged sources skipped: %s", len(converted), skipped or "none")

    # 2. synthetic pairs (finished shards are kept by the build's completion markers)
    if synthetic is not None:
        from flows.build_synthetic import build_synthetic

        # The benchmark this retrain evaluates on is always kept out of the synthetic sources (leakage guard).
        config = dict(synthetic.config)
        config["eval_sets"] = list(dict.fromkeys([*config.get("eval_sets", []), benchmark]))
        build_synthetic(input=synthetic.input, output=str(shards_dir / "synthetic"), announce=False, config=config)

    # 3. stage 2 from the champion
    reg = ChampionRegistry(registry)
    champion = reg.champion
    manifests = [str(p) for p in find_manifests(shards_dir)]
    summary = train(preset=preset, stage=2, manifests=manifests, output_dir=str(candidate_dir / "train"), steps=steps,
                    resume=None, init_from=champion.get("checkpoint") if champion else None,
                    allow_missing_sources=True, model=model, overrides=training_overrides)

    # 4-5. the promotion gate
    result = promotion_gate(
        candidate=summary["pipeline_dir"], registry=registry, benchmark=benchmark, out_dir=str(candidate_dir),
        seeds=seeds, clip_dir=clip_dir, lpips_dir=lpips_dir, dino_dir=dino_dir, vlm_dir=vlm_dir, device=device,
        num_inference_steps=num_inference_steps, allow_fidelity_only=allow_fidelity_only, gate=gate,
        extra={"checkpoint": summary["checkpoint"], "manifests": manifest_hashes(manifests)},
    )
    return {**result, "converted": converted, "skipped": skipped}


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
    markdown(artifact_key("retrain", "decision"), f"# Retraining: {verdict} ({decision.mode})\n\n"
             + "\n".join(f"- {r}" for r in decision.reasons), description="scheduled retraining: promotion decision")
    logger.info("retrain: %s (%s)", verdict, "; ".join(decision.reasons))
    return {"promoted": decision.promote, "reasons": decision.reasons, "mode": decision.mode, "candidate": entry,
            "registry": str(registry), "report": cand["report_md"]}


def _evaluable(model: str | None) -> bool:
    """A baseline name, an import path or an existing pipeline directory."""
    from model.evaluation.baselines import baseline_name
    from model.evaluation.evaluate import IMPORT_PREFIX

    return model is not None and (baseline_name(model) is not None or model.startswith(IMPORT_PREFIX)
                                  or Path(model).is_dir())


def _means(result: dict[str, Any]) -> dict[str, float | None]:
    """Group means as "group.metric" → value (for reading the registry; the gate uses the per-item results)."""
    return {f"{g}.{m}": v for g, agg in result["groups"].items() for m, v in agg.items() if m != "n"}


