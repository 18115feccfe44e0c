"""``smartedit edit``: edit one image with a saved SmartEdit pipeline folder."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``edit`` subcommand."""
    p = subparsers.add_parser("edit", help="edit an image with a SmartEdit pipeline folder")
    p.add_argument("--model", required=True, help="folder written by SmartEditPipeline.save_pretrained")
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

    from model.pipeline import SmartEditPipeline

    image_path = Path(args.image)
    if not image_path.is_file():
        print(f"error: --image {image_path}: no such file", file=sys.stderr)
        return 1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipe = SmartEditPipeline.from_pretrained(args.model, device=device)
    except FileNotFoundError as exc:
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
    print(f"wrote {args.output}")
    return 0
