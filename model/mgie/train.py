"""MGIE training recipe: edit pairs (+ expressive instructions), CE + 0.5 · diffusion MSE, one stage.

Trains embed_tokens and lm_head (or their [IMG] rows), the edit head and the full UNet; LLM blocks, vision tower,
projector and VAE stay frozen. Reads top to bottom: setup → loop → checkpoint → cleanup. Data, draws, checkpoints
and exact resume are SmartEdit's (model/recipe.py, model/data.py, model/mixture.py, model/checkpoint.py).

    python -m model.mgie.train --preset tiny --manifests shards/magicbrush/train --output-dir runs/m
    accelerate launch --config_file model/accelerate/multi_gpu_deepspeed_zero2.yaml \
        -m model.mgie.train --config mgie.yaml                            # 8 GPUs, preset mgie-7b
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from model.mgie.train_config import MGIETrainConfig
from model.recipe import Recipe
from model.train_config import RunResult

log = logging.getLogger(__name__)


class Featurize:
    """TrainExample → one MGIEProcessor sample, the answer being the sample's expressive instruction when the
    sidecar has one for (key, instruction). Picklable for DataLoader workers."""

    def __init__(self, processor, expressive: dict[str, dict[str, str]] | None = None):
        self.processor = processor
        self.expressive = expressive or {}
        self.with_summary = 0
        self.without_summary = 0

    def __call__(self, example) -> dict[str, Any]:
        summary = self.expressive.get(example.key, {}).get(example.instruction)
        if summary:
            self.with_summary += 1
        else:
            self.without_summary += 1
        return self.processor.encode(example.source, example.instruction, answer=summary, target=example.target)


def save_mgie_pipeline(model, path: Path | str) -> Path:
    """Write the trained model as an MGIEPipeline directory."""
    from model.mgie.pipeline import MGIEPipeline

    path = Path(path)
    MGIEPipeline(model).save_pretrained(path)
    return path


class MGIERecipe(Recipe):
    """The shared recipe (model/recipe.py) with MGIE's model, data (edit pairs + expressive instructions) and
    pipeline folder; one stage."""

    stage = 2
    loss_names = ("loss", "lm_loss", "diffusion_loss")

    def __init__(self, cfg: MGIETrainConfig, mixture) -> None:
        super().__init__(cfg)
        self.mixture = mixture
        self.featurize = None

    def build_model(self):
        from model.mgie.model import build_mgie

        return build_mgie(self.cfg.model_config())

    def write_pipeline(self, model, path: Path) -> Path:
        return save_mgie_pipeline(model, path)

    def init_weights(self, model) -> None:
        """``init_from``: an MGIE checkpoint (e.g. the retrain flow's champion) initialises what it holds."""
        from model.checkpoint import load_trainable

        if self.cfg.init_from:
            model.load_trainable_state_dict(load_trainable(self.cfg.init_from), strict=False)
            log.info("initialised from %s", self.cfg.init_from)

    def build_dataset(self, processor, rank: int):
        from model.data import MixtureDataset
        from model.mgie.expressive import load_expressive

        cfg = self.cfg
        self.featurize = Featurize(processor, load_expressive(cfg.expressive) if cfg.expressive else {})
        return MixtureDataset(self.mixture, self.featurize, rank=rank, seed=cfg.seed,
                              resolution=cfg.model_config().resolution)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": "mgie", "mixture": self.mixture.describe()}

    def cleanup(self) -> RunResult:
        f = self.featurize
        if f is not None and f.without_summary:
            log.warning("%d of %d training examples had no expressive instruction (answer = the [IMG] tokens only)",
                        f.without_summary, f.with_summary + f.without_summary)
        return super().cleanup()


def train_mgie(cfg: MGIETrainConfig) -> RunResult:
    """Run ``cfg`` (continuing from ``cfg.resume``); with ``epochs`` set, the step count is resolved from the
    mixture's size and the number of processes first. Returns a small summary."""
    from accelerate import PartialState

    from model.mixture import build_mixture, load_mixture_spec

    if not cfg.manifests:
        raise ValueError("MGIETrainConfig.manifests is empty: pass the shardindex.json of each edit-pair source")
    mixture = build_mixture(load_mixture_spec(cfg.mixture_spec), cfg.manifests, allow_missing=cfg.allow_missing_sources)
    for row in mixture.describe():
        log.info("mixture leaf %(leaf)s p=%(prob).4f samples=%(samples)d [%(datasets)s]", row)
    num_samples = sum(leaf.size for leaf in mixture.leaves)
    steps = cfg.resolve_steps(num_samples, 1 if cfg.cpu else PartialState().num_processes)
    if steps != cfg.steps:
        log.info("%d optimizer steps (%s epochs of %d samples)", steps, cfg.epochs, num_samples)
        cfg = dataclasses.replace(cfg, steps=steps)
    return MGIERecipe(cfg, mixture).run()


def parse_cli(argv: list[str] | None = None) -> MGIETrainConfig:
    """The recipe's command line (``accelerate launch -m model.mgie.train --config mgie.yaml [--steps N ...]``):
    every TrainConfig field plus MGIE's own (epochs, expressive)."""
    from model.mgie.train_config import add_mgie_arguments, mgie_train_config_from_args
    from model.train_config import add_train_arguments

    parser = argparse.ArgumentParser(description="MGIE training")
    options = {**add_train_arguments(parser), **add_mgie_arguments(parser)}
    args = parser.parse_args(argv)
    try:
        return mgie_train_config_from_args(args, options)
    except ValueError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train_mgie(parse_cli(argv))
    log.info("MGIE done: step %d, final %s, checkpoint %s", result.steps, result.final, result.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
