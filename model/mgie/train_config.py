"""Typed training configuration of MGIE with named presets (``tiny``, ``mgie-7b``).

Usage::

    from model.mgie.train_config import get_mgie_train_preset
    cfg = get_mgie_train_preset("tiny", manifests=["shards/magicbrush/train/shardindex.json"], output_dir="runs/m")
    cfg = MGIETrainConfig.from_yaml("mgie.yaml")

    # YAML (for `accelerate launch -m model.mgie.train --config mgie.yaml`):
    #   preset: mgie-7b
    #   model: {llava_dir: ckpt/llava-7b-v1-hf, unet_dir: ckpt/sd15/unet, vae_dir: ckpt/sd15/vae}
    #   manifests: [shards/instructpix2pix/train/shardindex.json, shards/magicbrush/train/shardindex.json]
    #   expressive: [shards/expressive]
    #   output_dir: runs/mgie-7b

The fields, checkpoints and result are SmartEdit's ``TrainConfig`` (model/train_config.py) plus epochs, a warm-up
ratio and the expressive-instruction sidecars; ``model`` overrides go to MGIEConfig (model/mgie/config.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal  # noqa: F401 - Literal, Precision, Scheduler resolve the inherited annotations

from model.config_args import add_config_arguments, given_overrides
from model.train_config import Precision, Scheduler, TrainConfig  # noqa: F401

MGIE_MIXTURE = str(Path(__file__).resolve().parents[2] / "data_specs" / "mixture_mgie.yaml")


@dataclass
class MGIETrainConfig(TrainConfig):
    """One MGIE training run (single stage: CE + 0.5 · diffusion MSE)."""

    mixture_spec: str = MGIE_MIXTURE
    """The edit-pair mixture (data_specs/mixture_mgie.yaml: InstructPix2Pix + MagicBrush by size)."""
    output_dir: str = "runs/mgie"
    """Run directory: checkpoints/, tensorboard/, pipeline/, config.yaml."""
    epochs: float | None = None
    """Passes over the mixture's samples; when set, steps = ceil(epochs · samples / global batch)."""
    expressive: list[str] = field(default_factory=list)
    """Expressive-instruction sidecar dirs (model/mgie/expressive.py); samples without one train on the bare
    [IMG] answer and are counted in the log."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage != 2:
            raise ValueError("MGIETrainConfig has a single stage; leave `stage` at 2")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"MGIETrainConfig.epochs must be > 0, got {self.epochs}")

    def model_config(self):
        """The MGIEConfig this run builds: the model preset with ``model`` overrides."""
        from model.mgie.config import get_mgie_preset

        overrides = dict(self.model)
        if self.gradient_checkpointing is not None:
            overrides["gradient_checkpointing"] = self.gradient_checkpointing
        return get_mgie_preset(self.preset, **overrides)

    def resolve_steps(self, num_samples: int, num_processes: int = 1) -> int:
        """Optimizer steps for a mixture of ``num_samples`` samples on ``num_processes`` ranks: from ``epochs``
        when set, else ``steps``. The warm-up is ``warmup_ratio`` of them (``resolved_warmup_steps``)."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * num_samples / (self.global_batch_per_rank * num_processes)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MGIETrainConfig:
        """A preset (``preset`` key, a training preset or the model preset it uses) with the rest as overrides."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MGIETrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        data.pop("stage", None)
        return get_mgie_train_preset(str(data.pop("preset", "tiny")), **data)


MGIE_TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Official (apple/ml-mgie mgie_train.py + paper §4): 256 px, AdamW lr 5e-4, cosine, 3 % warm-up, wd 0, bf16,
    # gradient checkpointing, 40 epochs, global batch 32 (8 GPUs × 4).
    "mgie-7b": {"preset": "7b", "lr": 5e-4, "weight_decay": 0.0, "lr_scheduler": "cosine", "warmup_ratio": 0.03,
                "mixed_precision": "bf16", "gradient_checkpointing": True, "epochs": 40.0, "micro_batch_size": 4,
                "grad_accum": 1, "checkpoint_every": 1000},
    "tiny": {"preset": "tiny", "lr": 5e-4, "weight_decay": 0.0, "lr_scheduler": "constant", "steps": 4,
             "micro_batch_size": 2, "grad_accum": 1, "warmup_steps": 0, "checkpoint_every": 2, "log_every": 1,
             "cpu": True},
}


def get_mgie_train_preset(name: str, **overrides: Any) -> MGIETrainConfig:
    """The training preset ``name`` (or the one using model preset ``name``, so saved configs load back)."""
    if name not in MGIE_TRAIN_PRESETS:
        name = next((k for k, v in MGIE_TRAIN_PRESETS.items() if v["preset"] == name), name)
    if name not in MGIE_TRAIN_PRESETS:
        raise ValueError(f"no MGIE training preset {name!r}; choose one of {sorted(MGIE_TRAIN_PRESETS)}")
    values = {**MGIE_TRAIN_PRESETS[name], **overrides}
    if "steps" in overrides and "epochs" not in overrides:
        values["epochs"] = None  # an explicit step count wins over the preset's epochs
    return MGIETrainConfig(**values)


def add_mgie_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    """MGIE's own fields (epochs, expressive) as options; the fields shared with SmartEdit come from
    ``model.train_config.add_train_arguments``. Returns option dest → field."""
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    group = parser.add_argument_group("MGIE only (with --model mgie)")
    return add_config_arguments(group, MGIETrainConfig, skip=shared)


def mgie_train_config_from_args(args: argparse.Namespace, options: dict[str, str]) -> MGIETrainConfig:
    """The MGIETrainConfig of parsed options (``add_train_arguments`` + ``add_mgie_arguments``): the ``--config``
    file (or the preset) with the options given on top; ``--steps`` wins over the file's epochs."""
    overrides = given_overrides(args, options)
    if int(overrides.pop("stage", 2)) != 2:
        raise ValueError("--stage: MGIE has a single stage (leave --stage at 2)")
    if getattr(args, "config", None):
        base = MGIETrainConfig.from_yaml(args.config).to_dict()
        if "steps" in overrides and "epochs" not in overrides:
            base["epochs"] = None
        base.update(overrides)
        return MGIETrainConfig.from_dict(base)
    return MGIETrainConfig.from_dict(overrides)
