"""The `smartedit` entry point (``[project.scripts]``): the parser tree and error reporting.

Each module in ``COMMANDS`` has a ``register(subparsers)`` that adds its parsers with a ``func`` handler
returning an exit code. Bad input (FileNotFoundError, ValueError) is one ``error:`` line; ``-v`` also
prints the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from smartedit_cli import checkpoints, convert, edit, evaluate, expressive, samples, synthetic, train

COMMANDS = (samples, convert, synthetic, train, edit, evaluate, checkpoints, expressive)


def _shards_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import first_samples, format_table, inspect_path

    summaries = inspect_path(args.path)
    samples = {}
    if args.samples:
        samples = {s["index"]: first_samples(Path(s["index"]), args.samples) for s in summaries}
    if args.json:
        for s in summaries:
            s["first_samples"] = samples.get(s["index"], [])
        print(json.dumps(summaries, indent=1, ensure_ascii=False))
        return 0
    print(format_table(summaries))
    for index, items in samples.items():
        print(f"\nfirst {len(items)} samples of {index}:")
        for item in items:
            members = ", ".join(f"{ext} ({size} B)" for ext, size in item["members"].items())
            print(f"  {item['key']}  [{item['shard']}]  {members}")
            print(f"    {json.dumps(item.get('json', {}), ensure_ascii=False)[:300]}")
    return 0


def _shards_verify(args: argparse.Namespace) -> int:
    from pipeline.manifest import find_manifests
    from pipeline.verify import verify_dataset

    manifests = find_manifests(args.path)
    if not manifests:
        print(f"error: {args.path}: no shardindex.json found at or below it", file=sys.stderr)
        return 1
    failed, reports = 0, []
    for index in manifests:
        report = verify_dataset(index, check_schema=not args.no_schema)
        failed += not report.ok
        reports.append(report.to_dict())
        if args.json:
            continue
        status = "OK" if report.ok else "FAILED"
        print(f"{status}  {index}  ({report.shards} shards, {report.samples} samples)")
        for problem in report.problems:
            print(f"  - {problem}")
    if args.json:
        print(json.dumps({"ok": not failed, "datasets": reports}, indent=1, ensure_ascii=False))
    return 1 if failed else 0


def _add_shards(subparsers) -> None:
    shards = subparsers.add_parser("shards", help="inspect, verify and view webdataset shards and their manifests")
    sub = shards.add_subparsers(dest="shards_command", required=True)
    p = sub.add_parser("inspect", help="summarise datasets: shards, samples, bytes, kinds, sources, rejects, provenance")
    p.add_argument("path", help="a dataset directory, a shardindex.json, or a directory holding several datasets")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--samples", type=int, default=0, metavar="N", help="also print the first N samples' metadata")
    p.set_defaults(func=_shards_inspect)
    p = sub.add_parser("verify", help="re-hash every shard, check counts, tar integrity and schemas (exit 1 on problems)")
    p.add_argument("path", help="a dataset directory, a shardindex.json, or a directory holding several datasets")
    p.add_argument("--no-schema", action="store_true", help="skip the per-sample schema check")
    p.add_argument("--json", action="store_true", help="machine-readable output: {ok, datasets: [{index, ok, shards, samples, problems}]}")
    p.set_defaults(func=_shards_verify)
    synthetic.add_shards_subcommands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartedit", description="SmartEdit data, training and evaluation pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_shards(subparsers)
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def _one_line(err: Exception) -> str:
    """pydantic's ValidationError spans lines; say each problem as ``Model.field = value: message``."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    return "; ".join(f"{err.title}.{'.'.join(map(str, e['loc']))} = {e['input']!r}: {e['msg']}" for e in err.errors())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        if args.verbose:
            logging.getLogger("smartedit").exception("traceback (-v)")
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
