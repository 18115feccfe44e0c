"""Stage 2 (joint training) recipe: the SmartEdit mixture, CE + diffusion MSE 1:1 (SmartEdit paper, joint
training; official train/DS_SmartEdit_train.py).

Trains LoRA, the new [IMG] token rows, the QFormer, BIM and the full UNet; the LLM, vision tower, projector,
VAE and CLIP text stay frozen. The shared plumbing (setup → train → checkpoint → cleanup) is model/recipe.py;
this file holds stage 2's part.

    python -m model.train_stage2 --config run.yaml                       # CPU or one GPU
    accelerate launch --config_file model/accelerate/multi_gpu_deepspeed_zero2.yaml \\
        -m model.train_stage2 --config run.yaml                          # 8 GPUs
    python -m model.train_stage2 --config run.yaml --no-bim-steps 5000   # official schedule: 5k without BIM, then BIM
                                                                         # (the 7b-official / 13b-official default)
    from model.train_stage2 import train_stage2; from model.train_config import get_train_preset
    result = train_stage2(get_train_preset(2, "tiny", manifests=[...], output_dir="runs/t", allow_missing_sources=True))

CFG dropout (text → CLIP(""), image latent → 0) happens inside the model. Data draws are per rank and keyed by
(seed, rank, draw index) (model/mixture.py), so resuming from a checkpoint continues the exact stream.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from model.recipe import Recipe, recipe_main
from model.train_config import RunResult, TrainConfig

log = logging.getLogger(__name__)

#: Sub-directories of output_dir for the two phases of ``no_bim_steps`` (the official code's schedule).
NO_BIM_PHASE, BIM_PHASE = "phase1-no-bim", "phase2-bim"


class Featurize:
    """TrainExample → one processor sample (picklable, for DataLoader workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, example) -> dict[str, Any]:
        # VQA rows carry an answer (LM loss only); edits have none: their LM target is the [IMG] tokens.
        return self.processor.encode(example.source, example.instruction, answer=example.answer,
                                     target=example.target if example.is_edit else None)


class Stage2Recipe(Recipe):
    stage = 2
    loss_names = ("loss", "lm_loss", "diffusion_loss")
    # A batch of VQA rows only leaves BIM and the UNet without gradients: DDP must tolerate that.
    find_unused_parameters = True

    def init_weights(self, model) -> None:
        """``init_from``: a stage-1 (or no-BIM phase) checkpoint holds a subset of this model's trainable weights
        (QFormer + token rows; no LoRA, BIM or UNet), so keys it lacks keep their initialisation; a key this
        model has no place for means the checkpoint is from another model and is an error."""
        from model.checkpoint import load_trainable

        if not self.cfg.init_from:
            return
        keys = model.load_trainable_state_dict(load_trainable(self.cfg.init_from), strict=False)
        if keys.unexpected:
            raise KeyError(f"init_from={self.cfg.init_from}: keys this model does not have: {keys.unexpected[:5]} "
                           f"(a checkpoint of a model with another config?)")
        log.info("initialised from %s (%d trainable tensors kept their initialisation)", self.cfg.init_from,
                 len(keys.missing))

    def build_dataset(self, processor, rank: int):
        from model.data import MixtureDataset
        from model.mixture import build_mixture, load_mixture_spec

        cfg = self.cfg
        self.mixture = build_mixture(load_mixture_spec(cfg.mixture_spec), cfg.manifests,
                                     allow_missing=cfg.allow_missing_sources)
        for row in self.mixture.describe():
            log.info("mixture leaf %(leaf)s p=%(prob).4f samples=%(samples)d [%(datasets)s]", row)
        return MixtureDataset(self.mixture, Featurize(processor), rank=rank, seed=cfg.seed,
                              resolution=cfg.model_config().resolution)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"mixture": self.mixture.describe()}


def train_stage2(cfg: TrainConfig) -> RunResult:
    """Run stage 2 for ``cfg.steps`` optimizer steps (continuing from ``cfg.resume``); return a small summary.
    With ``cfg.no_bim_steps`` it runs the official code's two phases (see ``train_without_bim_first``)."""
    if cfg.no_bim_steps:
        return train_without_bim_first(cfg)
    return Stage2Recipe(cfg).run()


def train_without_bim_first(cfg: TrainConfig) -> RunResult:
    """The official code's stage-2 schedule as one call: ``no_bim_steps`` steps with BIM variant ``plain`` (no
    interaction module) into ``output_dir/phase1-no-bim``, then ``steps - no_bim_steps`` steps with the configured
    BIM (its heads zero-initialised) into ``output_dir/phase2-bim``, initialised from phase 1's last checkpoint.
    Each phase resumes from its own newest checkpoint, so rerunning the same command continues where it stopped.
    Returns phase 2's result (its pipeline folder is the trained model)."""
    if cfg.resume not in (None, "latest"):
        raise ValueError(f"resume={cfg.resume!r}: with no_bim_steps each phase resumes from its own directory; "
                         f"use resume: latest (or null to start over)")
    from pipeline.remote_dirs import join  # output_dir may be a bucket URL

    bim = dataclasses.asdict(cfg.model_config().bim)
    phase1 = dataclasses.replace(
        cfg, steps=cfg.no_bim_steps, no_bim_steps=0, output_dir=join(cfg.output_dir, NO_BIM_PHASE), save_pipeline=False,
        model={**cfg.model, "bim": {**bim, "variant": "plain"}},
    )
    log.info("stage 2, phase 1 of 2: %d steps without BIM → %s", phase1.steps, phase1.output_dir)
    first = Stage2Recipe(phase1).run()
    phase2 = dataclasses.replace(cfg, steps=cfg.steps - cfg.no_bim_steps, no_bim_steps=0, init_from=first.checkpoint,
                                 output_dir=join(cfg.output_dir, BIM_PHASE))
    log.info("stage 2, phase 2 of 2: %d steps with BIM (%s) → %s", phase2.steps, bim["variant"], phase2.output_dir)
    return Stage2Recipe(phase2).run()


def main(argv: list[str] | None = None) -> int:
    return recipe_main(train_stage2, 2, argv)


if __name__ == "__main__":
    raise SystemExit(main())
