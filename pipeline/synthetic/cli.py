"""`smartedit build-synthetic` and `smartedit shards sheet` (the lead's `shards` group calls
`add_shards_subcommands`)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.synthetic.config import SCENARIOS


def _scenarios(text: str) -> dict[str, int]:
    """'left_right=50,reasoning=20' or 'all=30'."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if not count.isdigit():
            raise argparse.ArgumentTypeError(f"--scenarios {part!r}: expected NAME=COUNT")
        names = SCENARIOS if name == "all" else (name,)
        for n in names:
            if n not in SCENARIOS:
                raise argparse.ArgumentTypeError(f"--scenarios: unknown scenario {n!r}; expected one of {list(SCENARIOS)} or all")
            out[n] = int(count)
    return out


def _build(args: argparse.Namespace) -> int:
    from pipeline.synthetic.build import BuildInputs, build
    from pipeline.synthetic.config import SyntheticConfig

    overrides = {k: v for k, v in {
        "scenarios": args.scenarios, "operations": args.operations, "seed": args.seed, "shard_size": args.shard_size,
        "sam_type": args.sam_type, "sam_checkpoint": args.sam_checkpoint, "inpaint_dir": args.inpaint_dir,
        "clip_dir": args.clip_dir, "llm_dir": args.llm_dir, "device": args.device, "batch_size": args.batch_size,
        "eval_sets": args.eval_set, "inpaint_steps": args.steps, "inpaint_resolution": args.resolution,
    }.items() if v is not None}
    cfg = SyntheticConfig.preset(args.preset, **overrides) if args.preset else SyntheticConfig(**overrides)
    inputs = BuildInputs(input=args.input, images=args.images, splits=args.split or [], scenes=args.scenes,
                         stuff=args.stuff)
    result = build(cfg, inputs, args.out, progress=lambda done, total: print(f"shard {done}/{total}", file=sys.stderr))
    print(json.dumps({k: v for k, v in result.items() if k != "yields"}, indent=1))
    return 0


def _sheet(args: argparse.Namespace) -> int:
    from pipeline.synthetic.contact_sheet import contact_sheet

    print(contact_sheet(args.path, args.output, n=args.n, tile=args.tile))
    return 0


def add_shards_subcommands(shards_subparsers) -> None:
    """Adds `sheet` to the `smartedit shards` group."""
    p = shards_subparsers.add_parser("sheet", help="contact sheet of edit-pair shards: source | mask | target | instruction")
    p.add_argument("path", help="a .tar shard, a dataset directory or its shardindex.json")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("-n", type=int, default=16, help="pairs to show (the first N)")
    p.add_argument("--tile", type=int, default=160, help="tile size in pixels")
    p.set_defaults(func=_sheet)


def register(subparsers) -> None:
    p = subparsers.add_parser("build-synthetic", help="synthetic Reason-Edit-style edit pairs from instance annotations")
    p.add_argument("--input", required=True,
                   help="sample-data directory (coco/annotations, scenes.json), a COCO instances JSON, or converted "
                        "referring shards: a dataset directory / shardindex.json (smartedit convert refcoco --out O "
                        "→ O/refcoco/train) or a directory of them (O)")
    p.add_argument("--images", help="COCO input: image folder (default: beside the annotations, named after the split)")
    p.add_argument("--split", action="append",
                   help="only this split (repeatable): a COCO split (train2017) or, for shards, the refs' split (train)")
    p.add_argument("--scenes", help="ground-truth scenes.json with per-image mirror regions (default: the "
                                    "sample-data directory's; shards have none)")
    p.add_argument("--stuff", help="COCO-Stuff root (stuffthingmaps_trainval2017/, labels.txt): mirror-stuff regions "
                                   "are mirrors")
    p.add_argument("--out", required=True, help="output dataset directory (rerun to resume)")
    p.add_argument("--preset", choices=["tiny", "sd15"], help="start from a named preset")
    p.add_argument("--scenarios", type=_scenarios, help="NAME=COUNT,... or all=COUNT (default 100 each)")
    p.add_argument("--operations", nargs="+", choices=["replace", "remove", "recolour"])
    p.add_argument("--seed", type=int)
    p.add_argument("--shard-size", type=int)
    p.add_argument("--sam-type", choices=["vit_h", "vit_l", "vit_b"])
    p.add_argument("--sam-checkpoint", help="official SAM .pth (none: annotation masks)")
    p.add_argument("--inpaint-dir", help="diffusers inpainting pipeline directory (none: CPU editor)")
    p.add_argument("--clip-dir", help="CLIPModel directory for the direction filter")
    p.add_argument("--llm-dir", help="causal LM directory for extra paraphrases")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="inpainting steps")
    p.add_argument("--resolution", type=int, help="inpainting resolution")
    p.add_argument("--eval-set", action="append", help="Reason-Edit dir or MagicBrush parquet to keep out (repeatable)")
    p.set_defaults(func=_build)
    from pipeline.synthetic.calibrate import register as register_calibrate

    register_calibrate(subparsers)  # `smartedit synthetic calibrate`
