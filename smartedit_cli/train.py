"""``smartedit train``: one training stage in this process through ``model.train.run(config)``, the function
the `train` flow calls (no Prefect needed). Every option is a `TrainConfig` field; those not given keep the
preset's values.

    smartedit train --preset tiny --stage 1 --steps 4 --manifests shards/cc12m/shardindex.json --output-dir runs/s1
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    """`smartedit train ...`: one stage in this process; every option is a TrainConfig field."""
    from model.train_config import add_train_arguments

    parser = subparsers.add_parser(
        "train", help="train a SmartEdit stage (what the `train` flow runs)",
        description="Options not given keep the preset's values (--preset and --stage pick it; default tiny, 2). "
                    "--manifests takes shardindex.json paths or directories holding them.")
    parser.set_defaults(func=_train, train_options=add_train_arguments(parser))


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from model.train import expand_manifests, run
    from model.train_config import train_config_from_args

    cfg = train_config_from_args(args, args.train_options)
    if not cfg.manifests:
        raise ValueError("train: pass --manifests (shardindex.json paths or directories holding them)")
    cfg = dataclasses.replace(cfg, manifests=expand_manifests(cfg.manifests))
    result = run(cfg)
    print(json.dumps({k: v for k, v in result.to_dict().items() if k != "history"}, indent=1))
    return 0
