"""`smartedit convert SOURCE --root DIR --out DIR`: one official dataset layout → webdataset shards.

    smartedit convert refcoco --root /data/refer --images /data/coco/train2014 --out /data/shards
    smartedit convert cocostuff --root /data/cocostuff --images /data/coco --out /data/shards --split val2017

Output: OUT/<source>/<split>/ (shards, shardindex.json, rejects.jsonl), every split when --split is omitted.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.vocabulary import SOURCES as SOURCE_CHOICES


def reader_options(args: argparse.Namespace) -> dict:
    """The reader keyword options the parsed arguments ask for (only those given, and only where they apply)."""
    options: dict = {}
    if args.max_pixels is not None:
        options["max_pixels"] = args.max_pixels
    if getattr(args, "max_bytes", None) is not None:
        options["max_bytes"] = args.max_bytes
    if args.images is not None:
        if args.source in ("reasonseg", "instructpix2pix", "magicbrush"):
            raise ValueError(f"--images does not apply to {args.source}: its images live under --root")
        options["images"] = args.images
    if args.lisa_dash_remap:
        if args.source != "cocostuff":
            raise ValueError("--lisa-dash-remap applies to cocostuff only")
        options["lisa_dash_remap"] = True
    if args.split_by is not None:
        if args.source not in ("refcoco", "refcoco+", "refcocog", "grefcoco"):
            raise ValueError(f"--split-by applies to the refer datasets, not {args.source}")
        options["split_by"] = args.split_by
    return options


def _convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.sources import convert_source

    options = reader_options(args)
    bars: dict[str, tqdm] = {}

    def progress(split: str, done: int, total: int) -> None:
        bar = bars.get(split)
        if bar is None:
            bar = bars[split] = tqdm(total=total, desc=f"{args.source}/{split}", unit="shard", file=sys.stderr)
        bar.update(done - bar.n)

    from pipeline.locking import DatasetLockedError

    try:
        manifests = convert_source(
            args.source, args.root, args.out, splits=[args.split] if args.split else None,
            shard_size=args.shard_size, workers=args.workers, overwrite=getattr(args, "overwrite", False),
            progress=progress, **options,
        )
    except DatasetLockedError as err:  # one line, like every other refusal (ValueErrors reach main's handler)
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        for bar in bars.values():
            bar.close()
    for split, index in manifests.items():
        counts = index["counts"]
        reasons = ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items()) or "none"
        print(f"{args.source}/{split}: {counts['in']} records → {counts['kept']} samples in "
              f"{len(index['shardlist'])} shards; rejected {counts['rejected']} ({reasons})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert an official dataset layout into webdataset shards")
    p.add_argument("source", choices=SOURCE_CHOICES)
    p.add_argument("--root", required=True, help="the source's root directory (see data_specs/sources/<source>.yaml)")
    p.add_argument("--out", required=True, help="output root; datasets go to OUT/<source>/<split>/")
    p.add_argument("--split", default=None, help="one split (default: every split present)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="records per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="reject images with more pixels than this (default 89478485, PIL's bomb limit)")
    p.add_argument("--max-bytes", type=int, default=None, metavar="N",
                   help="reject files larger than this many bytes before reading them (default 268435456)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild shards made with other settings and remove stale ones (default: refuse)")
    p.add_argument("--images", default=None, help="image directory for cocostuff (holding <split>/), refer datasets and llava-instruct")
    p.add_argument("--split-by", default=None, help="refer split scheme: unc, google (refcoco), umd, google (refcocog)")
    p.add_argument("--lisa-dash-remap", action="store_true", help="cocostuff: map every class whose name contains '-' to 255, as LISA does")
    p.set_defaults(func=_convert)
