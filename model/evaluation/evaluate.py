"""Run an editor over Reason-Edit (or evaluation shards), score every (item, seed), write the report.

Output directory::

    outputs/<item key>_s<seed>.png   edited images (item keys are "<category>/<stem>")
    inputs/<item key>.png            256-px copies of the inputs, for the judging page
    report.json, report.md           EvaluationReport, with the paper's Table 1 beside ours, the run settings
                                     (comparability record), instruction-following metrics and per-item records
    grids/grid_<category>.png        input | output | mask | instruction per item
    judging.html                     Ins-align judging page (self-contained)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from model.evaluation.metrics import MetricsConfig, ReasonEditMetrics
from model.evaluation.reason_edit import EditItem, read_benchmark
from model.evaluation.report import EvaluationReport, ItemRecord

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)


class Editor(Protocol):
    """What is evaluated: ``editor(image, instruction, generator=..., **editor_kwargs)`` returning a PIL image or a
    one-element list of them (SmartEditPipeline's call returns a list)."""

    def __call__(self, image: Image.Image, instruction: str, *, generator: torch.Generator) -> Any: ...


def load_editor(model_dir: Path | str, device: str = "cpu") -> Editor:
    """A built-in baseline (``identity``, ``random-recolour``, also as ``baseline:<name>``), an editor named by
    import path (``py:package.module:attribute``, any callable with the ``SmartEditPipeline`` call shape), or a
    SmartEditPipeline / MGIEPipeline from a saved pipeline directory (``save_pretrained`` output)."""
    from model.evaluation.baselines import BASELINES, baseline_name

    name = baseline_name(str(model_dir))
    if name is not None and not Path(model_dir).exists():
        return BASELINES[name]
    if str(model_dir).startswith(IMPORT_PREFIX):
        import importlib

        module_name, _, attr = str(model_dir).removeprefix(IMPORT_PREFIX).partition(":")
        if not attr:
            raise ValueError(f"{model_dir}: expected py:package.module:attribute")
        return getattr(importlib.import_module(module_name), attr)
    from model.pipelines import load_pipeline
    from pipeline.remote_dirs import local_copy

    model_dir = local_copy(model_dir)  # a pipeline URL on a bucket: its downloaded copy
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir}: pipeline directory not found (or a built-in baseline: {', '.join(BASELINES)})"
        )
    return load_pipeline(model_dir, device=device)


IMPORT_PREFIX = "py:"


def model_fingerprint(editor: Editor | Path | str) -> str:
    """What identifies the evaluated model: a baseline's name, a directory's stat fingerprint, a callable's name."""
    from model.evaluation.baselines import baseline_name
    from model.evaluation.comparability import fingerprint

    if isinstance(editor, (str, Path)):
        name = baseline_name(str(editor))
        if name is not None and not Path(editor).exists():
            return f"baseline:{name}"
        if str(editor).startswith(IMPORT_PREFIX):
            return str(editor)
        from pipeline.remote_dirs import local_copy
        from pipeline.storage import is_url

        if is_url(editor):  # a pipeline URL: the URL, with the fingerprint of its downloaded copy
            return f"{editor}@{fingerprint(local_copy(editor)).rsplit('@', 1)[-1]}"
        return fingerprint(Path(editor).resolve()) or str(editor)
    return f"callable:{getattr(editor, '__name__', type(editor).__name__)}"


def judging_page_id(model_fp: str, benchmark_sha: str, protocol: str) -> str:
    """Unique per (model, benchmark content, protocol): verdicts stored in the browser and exports are keyed by it."""
    import hashlib

    digest = hashlib.sha256(f"{model_fp}\0{benchmark_sha}\0{protocol}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(model_fp.split("@")[0]).name)[:40]
    return f"{name}-{protocol}-{digest}"


def _one_image(output: Any, key: str) -> Image.Image:
    if isinstance(output, (list, tuple)) and len(output) == 1:
        output = output[0]
    if not hasattr(output, "convert"):
        raise TypeError(f"editor returned {type(output).__name__} for {key}; expected a PIL image (or a list of one)")
    return output


def _flags(protocol: str, items: list[EditItem]) -> list[str]:
    flags = []
    missing = getattr(items, "missing", [])
    if missing:
        flags.append(f"category folders missing from the benchmark, not scored: {', '.join(missing)}")
    if protocol == "official" and any(i.group == "reasoning" for i in items):
        flags.append(
            "official protocol: the released metrics script never scores 6-Reasoning (its folder filter and its "
            "per-category branch disagree); our reasoning numbers apply the same formulas but cannot be "
            "reproduced with that script"
        )
    if protocol == "official":
        flags.append(
            "official protocol: PSNR/SSIM/LPIPS over ALL pixels of (1 − mask)-multiplied images (edit region "
            "counted as perfectly preserved), unbinarised JPEG mask, LPIPS SqueezeNet, CLIP box off by one, "
            "SSIM with torchmetrics<=1.4.1's 5-px border crop"
        )
    return flags


def evaluate(
    editor: Editor | Path | str,
    benchmark: Path | str | Sequence[EditItem],
    out_dir: Path | str,
    protocol: str = "corrected",
    seeds: Sequence[int] = (0,),
    clip_dir: Path | str | None = None,
    lpips_dir: Path | str | None = None,
    device: str = "cpu",
    editor_kwargs: dict[str, Any] | None = None,
    metrics_config: MetricsConfig | None = None,
    judging_page: bool = True,
    grids: bool = True,
    progress: Callable[[int, int], None] | None = None,
    dino_dir: Path | str | None = None,
    vlm_dir: Path | str | None = None,
) -> EvaluationReport:
    """Edit every benchmark item with every seed, score the edits, write outputs and the report to ``out_dir``.

    ``editor`` is a callable (see ``Editor``), a SmartEditPipeline directory or a built-in baseline name
    (``identity``, ``random-recolour``); ``benchmark`` a Reason-Edit directory, evaluation shards (directory of
    .tar, a .tar, or a brace pattern) or a list of items. ``device`` runs the metric networks and a pipeline loaded
    from a directory; ``editor_kwargs`` override the pipeline's saved inference settings (``num_inference_steps``,
    ``text_guidance_scale``, ``image_guidance_scale``, ``height``, ``width``). ``dino_dir``/``vlm_dir``: DINOv2
    for the target metrics and a LLaVA judge (model.evaluation.vlm_judge); optional.
    Each seed gets its own ``torch.Generator().manual_seed(seed)`` per item, so results do not depend on order.
    """
    import torch
    from PIL import Image

    from model.evaluation.comparability import fingerprint, inference_settings
    from model.evaluation.metrics import LPIPS_NET
    from model.evaluation.reason_edit import benchmark_hash

    if not seeds:
        raise ValueError("evaluate: seeds is empty; give at least one seed")
    config = metrics_config or MetricsConfig(protocol=protocol)  # type: ignore[arg-type]
    if config.protocol != protocol:
        raise ValueError(f"evaluate: protocol={protocol!r} but metrics_config.protocol={config.protocol!r}")
    items = benchmark if not isinstance(benchmark, (str, Path)) else read_benchmark(benchmark)
    if not items:
        raise ValueError(f"{benchmark}: no items to evaluate")
    model_name = str(editor) if isinstance(editor, (str, Path)) else getattr(editor, "__name__", type(editor).__name__)
    model_fp = model_fingerprint(editor)
    edit = load_editor(editor, device) if isinstance(editor, (str, Path)) else editor
    call_kwargs = inference_settings(edit, editor_kwargs)
    metrics = ReasonEditMetrics.build(config, clip_dir=clip_dir, lpips_dir=lpips_dir, device=device,
                                      dino_dir=dino_dir, vlm_dir=vlm_dir)
    bench_sha = benchmark_hash(list(items))
    settings = {
        "benchmark_hash": bench_sha,
        "protocol": config.protocol,
        "metric_size": config.size,
        **{k: call_kwargs.get(k) for k in ("num_inference_steps", "text_guidance_scale", "image_guidance_scale",
                                           "height", "width")},
        "seeds": [int(s) for s in seeds],
        "metric_models": {
            "clip": fingerprint(clip_dir),
            "lpips": f"{LPIPS_NET[config.protocol]}:{fingerprint(lpips_dir)}" if lpips_dir else None,
            "dino": fingerprint(dino_dir),
            "vlm": fingerprint(vlm_dir),
        },
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[ItemRecord] = []
    total = len(items) * len(seeds)
    for n, item in enumerate(items):
        image, mask, target = item.load_image(), item.load_mask(), item.load_target()
        input_rel = f"inputs/{item.key}.png"
        (out_dir / input_rel).parent.mkdir(parents=True, exist_ok=True)
        image.resize((config.size, config.size), Image.Resampling.BICUBIC).save(out_dir / input_rel)
        for s, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(int(seed))
            output = _one_image(edit(image, item.instruction, generator=generator, **call_kwargs), item.key)
            output_rel = f"outputs/{item.key}_s{seed}.png"
            (out_dir / output_rel).parent.mkdir(parents=True, exist_ok=True)
            output.convert("RGB").save(out_dir / output_rel)
            scores = metrics.score(image, output, mask, item.clip_text, target=target, instruction=item.instruction,
                                   source_text=item.source_text)
            records.append(
                ItemRecord(
                    key=item.key,
                    category=item.category,
                    group=item.group,
                    seed=int(seed),
                    instruction=item.instruction,
                    clip_text=item.clip_text,
                    output=output_rel,
                    input=input_rel,
                    **{k: v for k, v in asdict(scores).items()},
                )
            )
            if progress is not None:
                progress(n * len(seeds) + s + 1, total)
        logger.debug("scored %s", item.key)

    page_id = judging_page_id(model_fp, bench_sha, config.protocol)
    report = EvaluationReport.from_records(
        records,
        protocol=config.protocol,
        model=model_name,
        benchmark=str(benchmark) if isinstance(benchmark, (str, Path)) else f"{len(items)} items",
        seeds=[int(s) for s in seeds],
        flags=_flags(config.protocol, items),
        config={
            **asdict(config),
            "clip_dir": str(clip_dir) if clip_dir else None,
            "lpips_dir": str(lpips_dir) if lpips_dir else None,
            "dino_dir": str(dino_dir) if dino_dir else None,
            "vlm_dir": str(vlm_dir) if vlm_dir else None,
            "editor_kwargs": dict(editor_kwargs or {}),
            "model_fingerprint": model_fp,
        },
        settings=settings,
        page_id=page_id,
    )
    write_report_files(report, out_dir)
    if grids:
        from model.evaluation.grids import write_category_grids

        write_category_grids(list(items), records, out_dir)
    if judging_page:
        from model.evaluation.judging import JudgingEntry, write_judging_page

        entries = [
            JudgingEntry(r.key, r.seed, r.category, r.group, r.instruction, out_dir / (r.input or ""), out_dir / r.output)
            for r in records
        ]
        write_judging_page(entries, out_dir / "judging.html", page_id=page_id, title=f"{model_name} ({config.protocol})")
    logger.info("evaluated %d items × %d seeds; report in %s", len(items), len(seeds), out_dir)
    return report


def write_report_files(report: EvaluationReport, out_dir: Path | str) -> tuple[Path, Path]:
    """report.json and report.md in ``out_dir``."""
    out_dir = Path(out_dir)
    json_path = report.write_json(out_dir / "report.json")
    md_path = out_dir / "report.md"
    md_path.write_text(report.to_markdown(), encoding="utf-8")
    return json_path, md_path
