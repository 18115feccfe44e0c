"""`evaluate`: score a saved SmartEdit pipeline (or a built-in baseline) on Reason-Edit (model/evaluation/).

Thin: one task runs the evaluation (under a `gpu` slot on CUDA) and returns the aggregates, the comparability
settings and the per-item results; the flow publishes a table artifact (per category and group) and the markdown
report beside the paper's Table 1.

    prefect deployment run evaluate/evaluate -p pipeline_dir=runs/tiny/pipeline \
        -p benchmark=/data/Reason-Edit -p out_dir=runs/tiny/eval -p protocol=corrected
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task

from flows.common import artifact_key, gpu_slot, markdown

METRICS = ("psnr", "ssim", "lpips", "clip", "ins_align", "fg_change", "clip_direction", "vlm", "l1", "clip_i", "dino",
           "psnr_pooled", "psnr_median", "psnr_capped")


@task(task_run_name="evaluate-{protocol}", cache_policy=None)
def run_evaluation(pipeline_dir: str, benchmark: str, out_dir: str, protocol: str, seeds: list[int],
                   clip_dir: str | None, lpips_dir: str | None, device: str, editor_kwargs: dict[str, Any],
                   dino_dir: str | None = None, vlm_dir: str | None = None, judging_page: bool = True) -> dict[str, Any]:
    from model.evaluation.evaluate import evaluate
    from model.evaluation.gate import items_of

    with gpu_slot(device):
        report = evaluate(pipeline_dir, benchmark, out_dir, protocol=protocol, seeds=seeds, clip_dir=clip_dir,
                          lpips_dir=lpips_dir, device=device, editor_kwargs=editor_kwargs, dino_dir=dino_dir,
                          vlm_dir=vlm_dir, judging_page=judging_page, grids=judging_page)
    return {
        "report_json": str(Path(out_dir) / "report.json"),
        "report_md": str(Path(out_dir) / "report.md"),
        "protocol": report.protocol,
        "settings": report.settings,
        "items": items_of(report.records),
        "groups": {g: {m: getattr(a, m) for m in ("n", *METRICS)} for g, a in report.groups.items()},
        "categories": {c: {m: getattr(a, m) for m in ("n", *METRICS)} for c, a in report.categories.items()},
        "flags": report.flags,
    }


@flow(name="evaluate", log_prints=False)
def evaluate_pipeline(
    pipeline_dir: str,
    benchmark: str,
    out_dir: str,
    protocol: Literal["corrected", "official"] = "corrected",
    seeds: list[int] = [0],  # noqa: B006 - Prefect parameters are JSON; the list is never mutated
    clip_dir: str | None = None,
    lpips_dir: str | None = None,
    device: str = "cpu",
    num_inference_steps: int | None = None,
    text_guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    resolution: int | None = None,
    dino_dir: str | None = None,
    vlm_dir: str | None = None,
    judging_page: bool = True,
) -> dict[str, Any]:
    """Edit every Reason-Edit item (a benchmark directory in the official layout, or evaluation shards) with the
    pipeline (a saved directory, or the baselines `identity` / `random-recolour`), score it, and write report.json,
    report.md, per-category grids and the Ins-align judging page. Sampling settings default to the saved
    pipeline's; the ones given here override them."""
    editor_kwargs = {k: v for k, v in (("num_inference_steps", num_inference_steps),
                                       ("text_guidance_scale", text_guidance_scale),
                                       ("image_guidance_scale", image_guidance_scale),
                                       ("height", resolution), ("width", resolution)) if v is not None}
    result = run_evaluation(pipeline_dir, benchmark, out_dir, protocol, list(seeds), clip_dir, lpips_dir, device,
                            editor_kwargs, dino_dir, vlm_dir, judging_page)
    from prefect.artifacts import create_table_artifact

    rows = [{"scope": name, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in agg.items()}}
            for name, agg in [*result["groups"].items(), *result["categories"].items()]]
    create_table_artifact(key=artifact_key("evaluate", protocol), table=rows,
                          description=f"Reason-Edit ({protocol} protocol): {pipeline_dir}")
    markdown(artifact_key("evaluate", protocol, "report"), Path(result["report_md"]).read_text(),
             description="Reason-Edit report beside the paper's Table 1")
    get_run_logger().info("evaluation written to %s", out_dir)
    return result
