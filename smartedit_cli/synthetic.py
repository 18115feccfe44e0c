"""`smartedit build-synthetic` (its build options are generated from `SyntheticConfig`) and
`smartedit shards sheet` (the `shards` group calls `add_shards_subcommands`)."""

from __future__ import annotations

import argparse
import json
import sys

from model.config_args import add_config_arguments
from pipeline.synthetic.config import SCENARIOS, SyntheticConfig


def _scenarios(text: str) -> dict[str, int]:
    """'left_right=50,reasoning=20' or 'all=30' (or a JSON mapping)."""
    if text.lstrip().startswith("{"):
        return json.loads(text)
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
    from model.config_args import given_overrides
    from pipeline.synthetic.build import BuildInputs, build
    from pipeline.synthetic.config import SyntheticConfig

    overrides = given_overrides(args, args.config_options)
    cfg = SyntheticConfig.preset(args.preset, **overrides) if args.preset else SyntheticConfig(**overrides)
    inputs = BuildInputs(input=args.input, images=args.images, splits=args.split or [], scenes=args.scenes,
                         stuff=args.stuff)
    from pipeline.locking import DatasetLockedError

    try:
        result = build(cfg, inputs, args.out, progress=lambda done, total: print(f"shard {done}/{total}", file=sys.stderr))
    except DatasetLockedError as err:  # one line, like every other refusal (ValueErrors reach main's handler)
        print(f"error: {err}", file=sys.stderr)
        return 1
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
    p.add_argument("--out", required=True, help="output dataset directory or bucket URL (s3://bucket/prefix; rerun to resume)")
    p.add_argument("--preset", choices=["tiny", "sd15"], help="start from a named SyntheticConfig preset")
    config = p.add_argument_group("build config (SyntheticConfig fields; default: the preset's or the class's)")
    p.set_defaults(func=_build, config_options=add_config_arguments(
        config, SyntheticConfig, types_={"scenarios": _scenarios},
        # the spellings this command had before its options came from SyntheticConfig
        aliases={"eval_sets": ["--eval-set"], "inpaint_steps": ["--steps"], "inpaint_resolution": ["--resolution"]}))
    group = subparsers.add_parser("synthetic", help="synthetic edit pairs: labelling page and calibration from labels")
    synthetic = group.add_subparsers(dest="synthetic_command", required=True)
    p = synthetic.add_parser("calibrate", help="measured precision from labels; thresholds for a target precision")
    p.add_argument("labels", nargs="+", help="judging-page exports or {\"labels\": {key: bool}} files")
    p.add_argument("--dataset", required=True, help="the build-synthetic output directory (or bucket URL)")
    p.add_argument("--target-precision", type=float, default=0.9)
    p.add_argument("--min-support", type=int, default=5, help="fewest labelled pairs a threshold must pass")
    p.set_defaults(func=_calibrate)
    p = synthetic.add_parser("label", help="a labelling page (the Ins-align judging page) for kept pairs and negatives")
    p.add_argument("dataset", help="the build-synthetic output directory")
    p.add_argument("-o", "--output", required=True, help="HTML page to write (images go beside it)")
    p.add_argument("-n", type=int, help="at most this many pairs from each of kept and negatives")
    p.set_defaults(func=_label)


def _calibrate(args: argparse.Namespace) -> int:
    import json

    from pipeline.synthetic.calibrate import calibrate

    result = calibrate(args.dataset, args.labels, args.target_precision, args.min_support)
    print(json.dumps({k: v for k, v in result.items() if k != "thresholds"}, indent=1))
    return 0


def _label(args: argparse.Namespace) -> int:
    from pathlib import Path

    from model.evaluation.judging import JudgingEntry, write_judging_page
    from pipeline.synthetic.calibrate import labelling_entries

    out = Path(args.output)
    entries = [JudgingEntry(**e) for e in labelling_entries(args.dataset, out.parent / (out.stem + "_images"), args.n)]
    print(write_judging_page(entries, out, page_id=Path(args.dataset).name, title="Synthetic pairs: good or bad?"))
    return 0
