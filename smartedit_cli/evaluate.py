"""``smartedit evaluate`` (Reason-Edit metrics, report, grids, judging page) and ``smartedit ins-align``
(judgements → Ins-align figures, optionally merged into a report)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _evaluate(args: argparse.Namespace) -> int:
    from model.config_args import given_overrides
    from model.evaluation.evaluate import evaluate

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"\r{done}/{total} edits scored", end="\n" if done == total else "", file=sys.stderr, flush=True)

    report = evaluate(
        args.model,
        args.benchmark,
        args.out,
        protocol=args.protocol,
        seeds=args.seeds,
        clip_dir=args.clip,
        lpips_dir=args.lpips,
        dino_dir=args.dino,
        vlm_dir=args.vlm_judge,
        device=args.device,
        editor_kwargs=given_overrides(args, args.sampling_options),
        progress=progress,
    )
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"report: {Path(args.out) / 'report.json'}; judging page: {Path(args.out) / 'judging.html'}")
    return 0 if report.records else 1


def _ins_align(args: argparse.Namespace) -> int:
    from model.evaluation.evaluate import write_report_files
    from model.evaluation.judging import format_ins_align, ins_align
    from model.evaluation.report import EvaluationReport

    report = EvaluationReport.read_json(args.report) if args.report else None
    result = ins_align(args.judgements, page_id=(report.page_id or None) if report else None)
    print(format_ins_align(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    if report is not None:
        report.set_ins_align(result.groups, result.categories, judged=sum(result.judged.values()))
        json_path, md_path = write_report_files(report, Path(args.report).parent)
        print(f"updated {json_path} and {md_path}")
    return 0


def register(subparsers) -> None:
    from model.config import SamplingConfig
    from model.config_args import add_config_arguments

    p = subparsers.add_parser(
        "evaluate",
        help="run an editor over Reason-Edit (or evaluation shards) and write metrics, report, grids, judging page",
    )
    p.add_argument("--model", required=True,
                   help="SmartEditPipeline or MGIEPipeline directory (save_pretrained output) or a baseline: "
                        "identity, random-recolour")
    p.add_argument("--benchmark", required=True, help="Reason-Edit directory, a directory of .tar shards, or a shard pattern")
    p.add_argument("--protocol", choices=("corrected", "official"), default="corrected",
                   help="corrected (default) fixes the released script's quirks; official reproduces them")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--clip", default=None, metavar="DIR", help="local CLIP ViT-L/14 directory (CLIP column n/a without)")
    p.add_argument("--lpips", default=None, metavar="DIR",
                   help="local LPIPS weights directory: alexnet.pth/squeezenet1_1.pth [+ alex.pth/squeeze.pth]")
    p.add_argument("--dino", default=None, metavar="DIR", help="local DINOv2 directory (DINO column, with target images)")
    p.add_argument("--vlm-judge", default=None, metavar="DIR", help="local LLaVA directory for the VLM judge column")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="generator seeds, one edit per seed (default 0)")
    p.add_argument("--device", default="cpu", help="device for the pipeline and the metric networks (default cpu)")
    sampling = p.add_argument_group("sampling (default: the pipeline's saved sampling config)")
    p.set_defaults(func=_evaluate, sampling_options=add_config_arguments(
        sampling, SamplingConfig, aliases={"num_inference_steps": ["--steps"], "text_guidance_scale": ["--text-guidance"],
                                           "image_guidance_scale": ["--image-guidance"]}))

    p = subparsers.add_parser("ins-align", help="Ins-align figures from judging-page exports (JSON)")
    p.add_argument("judgements", nargs="+", help="judgement JSON files exported by judging.html (one per judge)")
    p.add_argument("--report", default=None, help="report.json to update with the Ins-align figures (and report.md)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.set_defaults(func=_ins_align)
