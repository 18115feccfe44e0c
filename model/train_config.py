"""Typed training configuration for the two SmartEdit stages, with named presets (the SmartEdit
paper's implementation details; the official train/DS_SmartEdit_train.py).

Usage::

    from model.train_config import get_train_preset
    cfg = get_train_preset(2, "tiny", manifests=["shards/magicbrush-train/shardindex.json"], output_dir="runs/t")
    cfg = TrainConfig.from_yaml("configs/stage2.yaml")           # `preset:` + `stage:` + field overrides

    # YAML (for `accelerate launch -m model.train_stage2 --config stage2.yaml`):
    #   stage: 2
    #   preset: 7b
    #   model: {llava_dir: ckpt/llava-7b-hf, unet_dir: ckpt/instructdiffusion/unet, vae_dir: ckpt/sd15/vae,
    #           clip_text_dir: ckpt/clip-vit-large-patch14}
    #   manifests: [shards/magicbrush-train/shardindex.json, ...]
    #   output_dir: runs/stage2-7b
    #   init_from: runs/stage1-7b/checkpoints/step-00150000

``preset`` names one thing in both places: the model preset (`model.config.get_preset`) and, with ``stage``, the
training hyperparameters (``TRAIN_PRESETS``). Paper values are the defaults; the official code's differing values
are the ``-official`` presets (``-code`` is a deprecated spelling of them). This class is the one declaration of the
training fields: `smartedit train`, the recipes' ``--config`` command line (``parse_cli``) and the `train` flow
derive their options from it. Nothing heavy is imported here: the CLI, the flow and the recipes read it at startup.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from data_specs import spec_path
from model.config import canonical_preset, validate_fields
from model.config_args import add_config_arguments, given_overrides

Precision = Literal["auto", "no", "bf16", "fp16"]
Scheduler = Literal["constant", "constant_with_warmup", "cosine", "linear"]

DEFAULT_MIXTURE = str(spec_path("mixture.yaml"))


@dataclass
class TrainConfig:
    """One training run of one stage."""

    stage: Literal[1, 2] = 2
    """1: alignment on caption text (new token rows + QFormer); 2: joint on the mixture (LoRA, rows, QFormer, BIM, UNet)."""
    preset: str = "tiny"
    """Preset name: the model preset (tiny, 7b, 13b, 7b-official, 13b-official) and, with stage, the training one."""
    model: dict[str, Any] = field(default_factory=dict)
    """Model config overrides, merged field by field: checkpoint dirs, {"bim": {"variant": "plain"}}, ..."""
    manifests: list[str] = field(default_factory=list)
    """shardindex.json paths (or dataset dirs). Stage 1: caption datasets; stage 2: the mixture's sources."""
    mixture_spec: str = DEFAULT_MIXTURE
    """Stage 2: the mixture tree (data_specs/mixture.yaml)."""
    allow_missing_sources: bool = False
    """Stage 2: drop mixture leaves without manifests (renormalising) instead of failing."""
    output_dir: str = "runs/smartedit"
    """Run directory: checkpoints/, tensorboard/, pipeline/, config.yaml."""
    steps: int = 1000
    """Optimizer steps (each = micro_batch_size × grad_accum × ranks samples)."""
    micro_batch_size: int = 2
    """Samples per rank per forward."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-5
    """AdamW learning rate. Stage 1: 2e-4; stage 2: 1e-5."""
    weight_decay: float = 1e-3
    """AdamW weight decay. Stage 1: 0; stage 2: 0.001 (paper) / 0 (official code)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    lr_scheduler: Scheduler = "constant_with_warmup"
    """transformers.get_scheduler name."""
    warmup_steps: int = 0
    """Linear warm-up steps (used when warmup_ratio is None)."""
    warmup_ratio: float | None = None
    """Warm-up as a fraction of ``steps`` (official code: 0.04 with cosine); overrides warmup_steps when set."""
    no_bim_steps: int = 0
    """Stage 2: train this many steps without BIM (variant plain) before the BIM phase, which starts from that
    checkpoint and runs the remaining ``steps - no_bim_steps`` (official code: 5k of 20k). 0: BIM from step 1."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (None = off)."""
    mixed_precision: Precision = "auto"
    """auto: bf16 autocast on GPU, fp32 on CPU."""
    gradient_checkpointing: bool | None = None
    """None: the model config's choice (on for 7b/13b, off for tiny)."""
    seed: int = 0
    """Seeds torch/numpy/python and the mixture draws (with the rank)."""
    num_workers: int = 0
    """DataLoader workers per rank (draws do not depend on it)."""
    checkpoint_every: int = 500
    """Save every n optimizer steps (and at the end)."""
    keep_last: int | None = 3
    """Keep only the newest n checkpoints (None: keep all)."""
    log_every: int = 10
    """TensorBoard / log interval in optimizer steps."""
    resume: str | None = "latest"
    """"latest" (newest checkpoint of output_dir, if any: a rerun continues) or a checkpoint dir; None: start fresh."""
    init_from: str | None = None
    """Stage 2: a stage-1 checkpoint dir whose trainable weights (QFormer, token rows) initialise the model."""
    save_pipeline: bool = True
    """Write a SmartEditPipeline dir (output_dir/pipeline) at the end."""
    cpu: bool = False
    """Force CPU even when a GPU is present."""
    dist_timeout_s: int = 1800
    """Seconds a rank waits in the distributed process group (torch's default, 30 min): for every rank to join it at
    start (a node whose rank died before joining fails the others after this long) and in every collective (a
    rank-0-only checkpoint write with the others waiting at a barrier must fit in it). Multi-process runs only."""

    def __post_init__(self) -> None:
        self.preset = canonical_preset(self.preset)
        validate_fields(self)  # types and Literal choices (stage, mixed_precision, lr_scheduler)
        for name in ("steps", "micro_batch_size", "grad_accum", "checkpoint_every", "log_every", "dist_timeout_s"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"TrainConfig: lr must be > 0 and weight_decay >= 0, got lr={self.lr}, wd={self.weight_decay}")
        if self.init_from and self.stage != 2:
            raise ValueError("TrainConfig.init_from is a stage-2 option (start from a stage-1 checkpoint)")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1) or None, got {self.warmup_ratio}")
        if self.no_bim_steps and (self.stage != 2 or not 0 < self.no_bim_steps < self.steps):
            raise ValueError(f"TrainConfig.no_bim_steps={self.no_bim_steps} needs stage 2 and 0 < no_bim_steps < "
                             f"steps ({self.steps}); use 0 to train with BIM from the first step")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"TrainConfig.keep_last must be >= 1 or None, got {self.keep_last}")
        if self.resume == "":
            self.resume = None
        try:  # the model overrides are part of this config: a bad key fails here, not hours later in the recipe
            self.model_config()
        except ValueError as err:
            raise ValueError(f"TrainConfig.model (preset {self.preset!r}): {err}") from None

    @property
    def global_batch_per_rank(self) -> int:
        return self.micro_batch_size * self.grad_accum

    def resolved_warmup_steps(self) -> int:
        """Warm-up steps: ``round(warmup_ratio × steps)`` when the ratio is set, else ``warmup_steps``."""
        return round(self.warmup_ratio * self.steps) if self.warmup_ratio is not None else self.warmup_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hparams(self) -> dict[str, Any]:
        """Flat scalars and strings (what TensorBoard's hparams accept)."""
        return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.to_dict().items()}

    def resolved_mixed_precision(self) -> str:
        """``auto`` → bf16 on a GPU, no (fp32) on CPU."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        import torch

        return "bf16" if torch.cuda.is_available() and not self.cpu else "no"

    def model_config(self):
        """The SmartEditConfig this run builds: the model preset, the stage, ``model`` overrides."""
        from model.config import get_preset

        overrides = dict(self.model)
        if self.gradient_checkpointing is not None:
            overrides["gradient_checkpointing"] = self.gradient_checkpointing
        return get_preset(self.preset, stage=self.stage, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A preset (``stage`` + ``preset`` keys) with the remaining keys as overrides; unknown keys are an error."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        stage = int(data.pop("stage", 2))
        preset = str(data.pop("preset", "tiny"))
        return get_train_preset(stage, preset, **data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{path}: training config not found") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a training config is a mapping of TrainConfig fields, got {type(raw).__name__}")
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _stage1(**kw: Any) -> dict[str, Any]:
    # Paper: AdamW lr 2e-4, wd 0; 150k steps at global batch 128. Official train/DS_SmartEdit_train.py: cosine
    # schedule with 4 % linear warm-up (its lr_scheduler_type / warmup_ratio).
    return {"stage": 1, "lr": 2e-4, "weight_decay": 0.0, "steps": 150_000, "micro_batch_size": 16, "grad_accum": 1,
            "lr_scheduler": "cosine", "warmup_ratio": 0.04, **kw}


def _stage2(weight_decay: float, **kw: Any) -> dict[str, Any]:
    # Paper: AdamW lr 1e-5; global batch 128 = 8 GPUs × 2 × accum 8. The official code's schedule (5k steps
    # without BIM, then 15k with it) is ``no_bim_steps=5000`` in the -official presets (model/train_stage2.py).
    return {"stage": 2, "lr": 1e-5, "weight_decay": weight_decay, "steps": 20_000, "micro_batch_size": 2,
            "grad_accum": 8, "warmup_steps": 500, **kw}


_TINY = {"steps": 4, "micro_batch_size": 2, "grad_accum": 1, "warmup_steps": 0, "checkpoint_every": 2,
         "log_every": 1, "lr_scheduler": "constant", "cpu": True}

TRAIN_PRESETS: dict[tuple[int, str], dict[str, Any]] = {
    (1, "tiny"): _stage1(preset="tiny", **_TINY),
    (2, "tiny"): _stage2(1e-3, preset="tiny", **_TINY),
    (1, "7b"): _stage1(preset="7b"),
    (1, "13b"): _stage1(preset="13b"),
    (2, "7b"): _stage2(1e-3, preset="7b"),
    (2, "13b"): _stage2(1e-3, preset="13b"),
    # the official code's weight decay (0), LoRA (the -official model preset) and two-phase BIM schedule
    (2, "7b-official"): _stage2(0.0, preset="7b-official", no_bim_steps=5000),
    (2, "13b-official"): _stage2(0.0, preset="13b-official", no_bim_steps=5000),
    # the paper's recipe on the paper's base (LLaVA-1.1, one Linear projector; `import-checkpoint llava-original`)
    (1, "7b-paper"): _stage1(preset="7b-paper"),
    (1, "13b-paper"): _stage1(preset="13b-paper"),
    (2, "7b-paper"): _stage2(1e-3, preset="7b-paper"),
    (2, "13b-paper"): _stage2(1e-3, preset="13b-paper"),
}


def get_train_preset(stage: int, name: str, **overrides: Any) -> TrainConfig:
    """The preset for (stage, name) with field overrides; ``model`` overrides merge into the model preset field by
    field. ``7b-code``/``13b-code`` are deprecated spellings of ``7b-official``/``13b-official`` (a FutureWarning
    says so). Unknown names list the choices."""
    name = canonical_preset(name)
    key = (int(stage), name)
    if key not in TRAIN_PRESETS:
        choices = sorted(n for s, n in TRAIN_PRESETS if s == int(stage))
        raise ValueError(f"no stage-{stage} training preset {name!r}; choose one of {choices}")
    values = {**TRAIN_PRESETS[key], **overrides}
    return TrainConfig(**values)


@dataclass
class RunResult:
    """What a training run returns (small and JSON-able: no tensors)."""

    run_dir: str
    """The run's output directory."""
    stage: int
    """1 or 2."""
    steps: int
    """Optimizer steps completed (the run's final step)."""
    start_step: int
    """Step the run started from (0, or the resumed checkpoint's step)."""
    final: dict[str, float]
    """Losses of the last optimizer step (loss, lm_loss, and align_loss or diffusion_loss), plus lr."""
    history: list[dict[str, float]]
    """One dict per optimizer step of this run: step, losses, lr."""
    checkpoint: str | None
    """The last checkpoint written (None if none)."""
    pipeline_dir: str | None
    """The SmartEditPipeline directory written at the end (None if not saved)."""
    tensorboard_dir: str
    """Where the TensorBoard event files are."""

    def resolved_warmup_steps(self) -> int:
        """Warm-up steps: ``round(warmup_ratio × steps)`` when the ratio is set, else ``warmup_steps``."""
        return round(self.warmup_ratio * self.steps) if self.warmup_ratio is not None else self.warmup_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def add_train_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every TrainConfig field as an option (``--config`` YAML first, then the options given on top; the rest
    keep the preset's values). Returns option dest → field (see ``train_config_from_args``)."""
    parser.add_argument("--config", default=None, help="YAML of TrainConfig fields (with `stage:` and `preset:`); "
                        "options given on the command line override it")
    return add_config_arguments(parser, TrainConfig, aliases={"manifests": ["--manifest"], "model": ["--model-json"]})


def train_config_from_args(args: argparse.Namespace, options: dict[str, str], stage: int | None = None) -> TrainConfig:
    """The TrainConfig of parsed ``add_train_arguments`` options: the ``--config`` file (or the preset) with the
    given options on top. ``stage``: the recipe's own stage; a config file for the other stage is an error."""
    overrides = given_overrides(args, options)
    if args.config:
        base = TrainConfig.from_yaml(args.config).to_dict()
        if stage is not None and int(base["stage"]) != stage:
            raise ValueError(f"{args.config} has stage: {base['stage']}; this is the stage-{stage} recipe")
        if "stage" in overrides and int(overrides["stage"]) != int(base["stage"]):
            raise ValueError(f"--stage {overrides['stage']} contradicts {args.config} (stage: {base['stage']})")
        base.update(overrides)
        return TrainConfig.from_dict(base)
    if stage is not None:
        if overrides.get("stage", stage) != stage:
            raise ValueError(f"--stage {overrides['stage']}: this is the stage-{stage} recipe")
        overrides["stage"] = stage
    return TrainConfig.from_dict(overrides)


def parse_cli(argv: list[str] | None = None, stage: int = 2) -> TrainConfig:
    """The recipes' command line (``accelerate launch -m model.train_stage2 --config run.yaml [--steps N ...]``):
    the options of ``add_train_arguments``."""
    parser = argparse.ArgumentParser(description=f"SmartEdit stage-{stage} training")
    options = add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return train_config_from_args(args, options, stage)
    except ValueError as err:
        parser.error(str(err))
