"""`smartedit train`: run the `train` flow in this process (Prefect runs it ephemerally, no server needed).

    smartedit train --preset tiny --stage 1 --steps 4 --manifest shards/cc12m/shardindex.json --output-dir runs/s1
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    """`smartedit train ...`: run the flow in this process (no server needed: Prefect runs it ephemerally)."""
    parser = subparsers.add_parser("train", help="train a SmartEdit stage (Prefect flow `train`)")
    _add_arguments(parser)
    parser.set_defaults(func=_handle)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="tiny, 7b, 13b, 7b-code, 13b-code")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--manifest", action="append", required=True, help="a shardindex.json (repeatable)")
    parser.add_argument("--output-dir", default="runs/smartedit")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--resume", default="latest", help="'latest', a checkpoint dir, or '' for a fresh start")
    parser.add_argument("--init-from", default=None, help="stage 2: a stage-1 checkpoint dir")
    parser.add_argument("--allow-missing-sources", action="store_true", help="stage 2: drop mixture leaves without data")
    parser.add_argument("--model-json", default=None, help='model overrides as JSON, e.g. \'{"llava_dir": "..."}\'')


def _handle(args: argparse.Namespace) -> int:
    from flows.train import train

    summary = train(preset=args.preset, stage=args.stage, manifests=args.manifest, output_dir=args.output_dir,
                    steps=args.steps, resume=args.resume, init_from=args.init_from,
                    allow_missing_sources=args.allow_missing_sources,
                    model=json.loads(args.model_json) if args.model_json else None)
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train", description="SmartEdit training flow")
    _add_arguments(parser)
    return _handle(parser.parse_args(argv))
