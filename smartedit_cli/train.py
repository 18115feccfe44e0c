"""``smartedit train``: one training stage in this process through ``model.train.run(config)``, the function
the `train` flow calls (no Prefect needed). Every option is a `TrainConfig` field; those not given keep the
preset's values. ``--model mgie`` trains MGIE instead (`MGIETrainConfig`: presets tiny, mgie-7b).

    smartedit train --preset tiny --stage 1 --steps 4 --manifests shards/cc12m/shardindex.json --output-dir runs/s1
    smartedit train --model mgie --preset tiny --manifests shards/magicbrush --output-dir runs/mgie
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    """`smartedit train ...`: one stage in this process; every option is a TrainConfig field."""
    from model.mgie.train_config import add_mgie_arguments
    from model.train_config import add_train_arguments

    parser = subparsers.add_parser(
        "train", help="train a SmartEdit stage or MGIE (what the `train` flow runs)",
        description="Options not given keep the preset's values (--preset and --stage pick it; default tiny, 2). "
                    "--manifests takes shardindex.json paths or directories holding them. --model mgie trains MGIE "
                    "(presets tiny, mgie-7b); --model with a JSON mapping gives SmartEdit model-config overrides.")
    parser.set_defaults(func=_train, train_options=add_train_arguments(parser), mgie_options=add_mgie_arguments(parser))


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from model.config_args import given_overrides
    from model.mgie.train_config import mgie_train_config_from_args
    from model.train import expand_manifests, run
    from model.train_config import train_config_from_args

    model_name = "smartedit"
    if isinstance(getattr(args, "model", None), str):  # `--model mgie` names the model; a mapping overrides its config
        model_name = args.model
        del args.model
        if model_name not in ("smartedit", "mgie"):
            raise ValueError(f"train: --model {model_name!r}: choose smartedit or mgie, or give a JSON mapping of "
                             f"model-config overrides")
    if model_name == "mgie":
        cfg = mgie_train_config_from_args(args, {**args.train_options, **args.mgie_options})
    else:
        if mgie_only := sorted(given_overrides(args, args.mgie_options)):
            raise ValueError(f"train: {mgie_only} are MGIE options; add --model mgie")
        cfg = train_config_from_args(args, args.train_options)
    if not cfg.manifests:
        raise ValueError("train: pass --manifests (shardindex.json paths or directories holding them)")
    cfg = dataclasses.replace(cfg, manifests=expand_manifests(cfg.manifests))
    result = run(cfg)
    print(json.dumps({k: v for k, v in result.to_dict().items() if k != "history"}, indent=1))
    return 0
