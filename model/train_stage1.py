"""Stage 1 (alignment) recipe: caption text only, CE on the [IMG] tokens + MSE(QFormer(h), CLIP text of the caption)
(SmartEdit paper, alignment stage; official train/DS_SmartEdit_train.py).

Trains the new [IMG] token rows and the QFormer (with its 77 queries); LLaVA and CLIP text stay frozen, and no UNet,
VAE or BIM is built. Checkpoints hold only what trains here; stage 2 starts from one with ``init_from``.
The shared plumbing (setup → train → checkpoint → cleanup) is model/recipe.py; this file holds stage 1's part.

    python -m model.train_stage1 --config stage1.yaml                    # CPU or one GPU
    accelerate launch --config_file model/accelerate/multi_gpu_deepspeed_zero2.yaml \\
        -m model.train_stage1 --config stage1.yaml                       # 8 GPUs

Captions come from `caption` samples (e.g. CC12M text) of the given manifests, drawn ∝ dataset size with the
same counter-keyed per-rank draws as stage 2 (model/mixture.py), so resume continues the exact stream. Each caption
is wrapped in the same conversation template as a stage-2 edit (SmartEditProcessor.encode_caption).
"""

from __future__ import annotations

import logging
from typing import Any

from model.recipe import Recipe, recipe_main
from model.train_config import RunResult, TrainConfig

log = logging.getLogger(__name__)


class FeaturizeCaption:
    """TrainExample (kind caption) → one processor sample (picklable, for DataLoader workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, example) -> dict[str, Any]:
        if example.caption is None:
            raise ValueError(f"sample {example.key}: stage 1 trains on `caption` samples, got kind {example.kind!r}")
        return self.processor.encode_caption(example.caption)


class Stage1Recipe(Recipe):
    stage = 1
    loss_names = ("loss", "lm_loss", "align_loss")
    # Every trainable parameter (token rows, QFormer) gets a gradient from every batch.
    find_unused_parameters = False
    # No UNet in stage 1: its result is the checkpoint that stage 2 reads with init_from.
    writes_pipeline = False

    def checkpoint_weights(self, model) -> dict[str, Any]:
        """Only what stage 1 trains: the new token rows and the QFormer (parameters and buffers). The LoRA the
        model carries for stage 2 stays at its initialisation and is not saved: resume loads exactly these keys."""
        return {k: v for k, v in model.trainable_state_dict().items()
                if k.startswith("qformer.") or "trainable_tokens_delta" in k}

    def build_dataset(self, processor, rank: int):
        from model.data import MixtureDataset
        from model.mixture import uniform_mixture

        cfg = self.cfg
        mixture = uniform_mixture(cfg.manifests, name="captions", seed=cfg.seed)
        return MixtureDataset(mixture, FeaturizeCaption(processor), rank=rank, seed=cfg.seed,
                              resolution=cfg.model_config().resolution)


def train_stage1(cfg: TrainConfig) -> RunResult:
    """Run stage 1 for ``cfg.steps`` optimizer steps (continuing from ``cfg.resume``); return a small summary."""
    return Stage1Recipe(cfg).run()


def main(argv: list[str] | None = None) -> int:
    return recipe_main(train_stage1, 1, argv)


if __name__ == "__main__":
    raise SystemExit(main())
