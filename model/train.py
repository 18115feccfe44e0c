"""The model's one entry point for training: ``run(config)`` runs the stage the config names.

The `smartedit train` command and the `train` Prefect flow both call it; neither re-declares the
training fields (they come from `model.train_config.TrainConfig`).

    from model.train import run
    from model.train_config import get_train_preset
    result = run(get_train_preset(2, "tiny", manifests=["shards/magicbrush/train"], output_dir="runs/t"))
"""

from __future__ import annotations


from model.train_config import RunResult, TrainConfig


def expand_manifests(manifests: list[str] | str | None) -> list[str]:
    """A path or a list of paths; a directory stands for every shardindex.json below it (how the
    `shards.built` trigger passes the event's output root)."""
    from pipeline.manifest import find_manifests
    from pipeline.storage import as_path, is_remote

    paths = [manifests] if isinstance(manifests, str) else list(manifests or [])
    expanded: list[str] = []
    for path in paths:
        where = as_path(path)  # local, file:// or a bucket URL (s3://bucket/shards)
        if not where.exists() and not (is_remote(where) and find_manifests(where)):
            raise FileNotFoundError(f"train: manifest {path}: no such file or directory")
        found = [where] if where.name.endswith(".json") else find_manifests(where)
        if not found:
            raise ValueError(f"train: {path} holds no shardindex.json; convert or build shards there first")
        expanded += [str(p) for p in found]
    return expanded


def run(config: TrainConfig) -> RunResult:
    """Train ``config.stage`` in this process (stage 1: alignment recipe; stage 2: joint recipe); an
    ``MGIETrainConfig`` runs the MGIE recipe (model/mgie/train.py)."""
    from model.mgie.train_config import MGIETrainConfig

    if isinstance(config, MGIETrainConfig):
        from model.mgie.train import train_mgie

        return train_mgie(config)
    if config.stage == 1:
        from model.train_stage1 import train_stage1 as recipe
    else:
        from model.train_stage2 import train_stage2 as recipe
    return recipe(config)
