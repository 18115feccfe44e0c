"""`smartedit samples make DIR [--seed N]`: write the sample datasets and summarise them.

The one command that imports the sample-data generator (pipeline/samples/); product code never does."""

from __future__ import annotations

import argparse


def _make(args: argparse.Namespace) -> int:
    from pipeline.samples import make_samples

    samples = make_samples(args.dir, seed=args.seed)
    print(f"sample datasets (seed {samples.seed}) written under {samples.root}")
    for source, splits in samples.counts.items():
        detail = ", ".join(f"{split} {n}" for split, n in splits.items())
        print(f"  {source:<26} {detail}")
    print(f"ground truth: {samples.scenes_json}")
    print(f"layout, counts and quirks: {samples.samples_json}")
    return 0


def register(subparsers) -> None:
    samples = subparsers.add_parser("samples", help="generate small sample datasets in the official layouts")
    sub = samples.add_subparsers(dest="samples_command", required=True)
    p = sub.add_parser("make", help="write COCO, COCO-Stuff, refer, LLaVA, ReasonSeg, IP2P, MagicBrush, Reason-Edit samples")
    p.add_argument("dir", help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    p.set_defaults(func=_make)
