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
from pathlib import Path
from typing import Any, Literal

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
    model: Literal["smartedit", "mgie"] = "smartedit",
    preset: str = "tiny",
    steps: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    training_overrides: dict[str, Any] | None = None,
    seeds: list[int] = [0],  # noqa: B006 - a JSON parameter, never mutated
    num_inference_steps: int | None = None,
    tolerances: dict[str, float] | None = None,
    clip_dir: str | None = None,
    lpips_dir: str | None = None,
    device: str = "cpu",
    force_convert: bool = False,
) -> dict[str, Any]:
    """sources: convert group ("segmentation", "vqa", "edit") → sources, as the convert-* flows take them;
    shards: their output root; runs: where candidates are trained and evaluated; registry: the champion
    registry JSON; benchmark: a Reason-Edit directory; tolerances: PromotionPolicy tolerances ("group.metric"
    → allowed regression), default the policy's."""
    from flows.convert import convert_edit, convert_segmentation, convert_vqa
    from flows.evaluate import evaluate_pipeline
    from flows.train import train
    from model.registry import ChampionRegistry, PromotionPolicy, decide, flatten_metrics
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
    # A champion of the other model cannot initialise this one (different trainable sets): train from scratch then.
    same_model = champion is not None and champion.get("model", "smartedit") == model
    summary = train(model=model, preset=preset, stage=2, manifests=manifests, output_dir=str(candidate_dir / "train"),
                    steps=steps, resume=None, init_from=champion["checkpoint"] if same_model else None,
                    allow_missing_sources=True,
                    overrides={**(training_overrides or {}), **({"model": model_overrides} if model_overrides else {})})

    # 4. evaluate candidate (and the champion, when its metrics on this benchmark are not recorded)
    def metrics_of(pipeline_dir: str, out_dir: Path) -> dict[str, float | None]:
        result = evaluate_pipeline(pipeline_dir=pipeline_dir, benchmark=benchmark, out_dir=str(out_dir),
                                   protocol="corrected", seeds=seeds, clip_dir=clip_dir, lpips_dir=lpips_dir,
                                   device=device, num_inference_steps=num_inference_steps)
        groups = {g: {m: v for m, v in agg.items() if m in ("psnr", "ssim", "lpips", "clip")}
                  for g, agg in result["groups"].items()}
        return flatten_metrics(groups)

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
        "model": model, "pipeline": summary["pipeline_dir"], "checkpoint": summary["checkpoint"], "metrics": candidate_metrics,
        "benchmark": benchmark, "protocol": "corrected", "manifests": manifest_hashes(manifests),
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
    }
    reg.record(entry, decision)
    verdict = "PROMOTED" if decision.promote else "kept the champion"
    markdown(artifact_key("retrain", "decision"), f"# Retraining: {verdict}\n\n" + "\n".join(f"- {r}" for r in decision.reasons),
             description="scheduled retraining: promotion decision")
    logger.info("retrain: %s (%s)", verdict, "; ".join(decision.reasons))
    return {"promoted": decision.promote, "reasons": decision.reasons, "candidate": entry, "registry": str(registry),
            "converted": converted, "skipped": skipped, "report": str(candidate_dir / "eval" / "report.md")}
