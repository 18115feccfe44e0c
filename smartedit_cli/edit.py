"""``smartedit edit``: one image with a saved pipeline folder (SmartEdit or MGIE, read from its model_index.json);
the sampling options come from `SamplingConfig` and default to the pipeline's saved sampling config.

    smartedit edit --model runs/tiny/pipeline --image in.png --instruction "Remove the left cup" -o out.png
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``edit`` subcommand."""
    from model.config import SamplingConfig
    from model.config_args import add_config_arguments

    p = subparsers.add_parser("edit", help="edit an image with a SmartEdit or MGIE pipeline folder")
    p.add_argument("--model", required=True, help="folder written by SmartEditPipeline or MGIEPipeline.save_pretrained")
    p.add_argument("--image", required=True, help="input image file")
    p.add_argument("--instruction", required=True, help="editing instruction")
    p.add_argument("-o", "--output", required=True, help="output image file (format from the extension)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--size", type=int, default=None, help="edit resolution in pixels (default: the model's resolution)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sampling = p.add_argument_group("sampling (default: the pipeline's saved sampling config)")
    p.set_defaults(func=_edit, sampling_options=add_config_arguments(
        sampling, SamplingConfig, aliases={"num_inference_steps": ["--steps"], "text_guidance_scale": ["--text-guidance"],
                                           "image_guidance_scale": ["--image-guidance"]}))


def _edit(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from PIL import Image

    from model.config_args import given_overrides
    from model.pipelines import load_pipeline

    image_path = Path(args.image)
    if not image_path.is_file():
        print(f"error: --image {image_path}: no such file", file=sys.stderr)
        return 1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipe = load_pipeline(args.model, device=device)  # the class recorded in the folder's model_index.json
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: --model {args.model}: {exc}", file=sys.stderr)
        return 1
    image = Image.open(image_path).convert("RGB")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    edited = pipe(image, args.instruction, generator=generator, height=args.size, width=args.size,
                  **given_overrides(args, args.sampling_options))[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    edited.save(args.output)
    for text in getattr(pipe, "expressive_instructions", []):  # MGIE says what it will do
        print(f"expressive instruction: {text}")
    print(f"wrote {args.output}")
    return 0
