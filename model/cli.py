"""The model's commands: ``smartedit edit`` (one image with a saved SmartEdit or MGIE pipeline folder) and
``smartedit train`` (the `train` flow in this process; Prefect runs it ephemerally, no server needed).

    smartedit train --preset tiny --stage 1 --steps 4 --manifest shards/cc12m/shardindex.json --output-dir runs/s1
    smartedit train --model mgie --preset tiny --manifest shards/magicbrush/train/shardindex.json --output-dir runs/m
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    """Add the ``edit`` and ``train`` subcommands."""
    register_train(subparsers)
    p = subparsers.add_parser("edit", help="edit an image with a SmartEdit or MGIE pipeline folder")
    p.add_argument("--model", required=True, help="folder written by SmartEditPipeline or MGIEPipeline.save_pretrained")
    p.add_argument("--image", required=True, help="input image file")
    p.add_argument("--instruction", required=True, help="editing instruction")
    p.add_argument("-o", "--output", required=True, help="output image file (format from the extension)")
    p.add_argument("--steps", type=int, default=None, help="Euler-ancestral steps (default: model config, 100)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--text-guidance", type=float, default=None, help="s_T (default: model config, 7.5)")
    p.add_argument("--image-guidance", type=float, default=None, help="s_I (default: model config, 1.5)")
    p.add_argument("--size", type=int, default=256, help="edit resolution in pixels (default 256)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_edit)


def _edit(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from PIL import Image

    from model.pipelines import load_pipeline

    image_path = Path(args.image)
    if not image_path.is_file():
        print(f"error: --image {image_path}: no such file", file=sys.stderr)
        return 1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipe = load_pipeline(args.model, device=device)  # SmartEdit or MGIE, from the folder's model_index.json
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: --model {args.model}: {exc}", file=sys.stderr)
        return 1
    image = Image.open(image_path).convert("RGB")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    cfg = pipe.model.config
    edited = pipe(
        image,
        args.instruction,
        num_inference_steps=args.steps if args.steps is not None else cfg.num_inference_steps,
        text_guidance_scale=args.text_guidance if args.text_guidance is not None else cfg.text_guidance_scale,
        image_guidance_scale=args.image_guidance if args.image_guidance is not None else cfg.image_guidance_scale,
        generator=generator,
        height=args.size,
        width=args.size,
    )[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    edited.save(args.output)
    for text in getattr(pipe, "expressive_instructions", []):
        print(f"expressive instruction: {text}")
    print(f"wrote {args.output}")
    return 0


def register_train(subparsers) -> None:
    """`smartedit train ...`: run the flow in this process (no server needed: Prefect runs it ephemerally)."""
    parser = subparsers.add_parser("train", help="train a SmartEdit stage or MGIE (Prefect flow `train`)")
    add_train_arguments(parser)
    parser.set_defaults(func=_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("smartedit", "mgie"), default="smartedit", help="which model to train")
    parser.add_argument("--preset", default="tiny", help="SmartEdit: tiny, 7b, 13b, 7b-code, 13b-code; MGIE: tiny, mgie-7b")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--manifest", action="append", required=True, help="a shardindex.json (repeatable)")
    parser.add_argument("--output-dir", default="runs/smartedit")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--resume", default="latest", help="'latest', a checkpoint dir, or '' for a fresh start")
    parser.add_argument("--init-from", default=None, help="stage 2: a stage-1 checkpoint dir")
    parser.add_argument("--allow-missing-sources", action="store_true", help="stage 2: drop mixture leaves without data")
    parser.add_argument("--model-json", default=None, help='model overrides as JSON, e.g. \'{"llava_dir": "..."}\'')
    parser.add_argument("--expressive", action="append", default=None,
                        help="MGIE: an expressive-instruction sidecar dir (repeatable; `smartedit expressive`)")


def _train(args: argparse.Namespace) -> int:
    from flows.train import train

    if args.expressive and args.model != "mgie":
        print("error: --expressive is an MGIE option (add --model mgie)", file=sys.stderr)
        return 1
    summary = train(model=args.model, preset=args.preset, stage=args.stage, manifests=args.manifest,
                    output_dir=args.output_dir, steps=args.steps, resume=args.resume, init_from=args.init_from,
                    allow_missing_sources=args.allow_missing_sources,
                    model_overrides=json.loads(args.model_json) if args.model_json else None,
                    overrides={"expressive": args.expressive} if args.expressive else None)
    print(json.dumps(summary, indent=1))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train", description="SmartEdit training flow")
    add_train_arguments(parser)
    return _train(parser.parse_args(argv))
