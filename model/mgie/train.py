"""MGIE training recipe: edit pairs (+ expressive instructions), CE + 0.5 · diffusion MSE, one stage.

Trains embed_tokens and lm_head (or their [IMG] rows), the edit head and the full UNet; LLM blocks, vision tower,
projector and VAE stay frozen. Reads top to bottom: setup → loop → checkpoint → cleanup. Data, draws, checkpoints
and exact resume are SmartEdit's (model/data.py, model/mixture.py, model/checkpoint.py).

    python -m model.mgie.train --preset tiny --manifests shards/magicbrush/train --output-dir runs/m
    accelerate launch --config_file model/accelerate/multi_gpu_deepspeed_zero2.yaml \
        -m model.mgie.train --config mgie.yaml                            # 8 GPUs, preset mgie-7b
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from model.mgie.train_config import MGIETrainConfig
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


def train_mgie(cfg: MGIETrainConfig) -> RunResult:
    """Run ``cfg`` (continuing from ``cfg.resume``); return a small summary."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from transformers import get_scheduler

    from model.checkpoint import load_checkpoint, load_trainable, resolve_resume, save_checkpoint
    from model.data import MixtureDataset, make_dataloader
    from model.mgie.expressive import load_expressive
    from model.mgie.model import build_mgie
    from model.mixture import build_mixture, load_mixture_spec

    if not cfg.manifests:
        raise ValueError("MGIETrainConfig.manifests is empty: pass the shardindex.json of each edit-pair source")

    # ---------------------------------------------------------------- setup
    run_dir = Path(cfg.output_dir)
    tb_dir = run_dir / "tensorboard"
    accelerator = Accelerator(
        cpu=cfg.cpu, mixed_precision=cfg.resolved_mixed_precision(), gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard", project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(tb_dir)),
    )
    set_seed(cfg.seed, device_specific=True)  # seed + rank: noise, timesteps and CFG dropout differ per GPU
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(run_dir / "config.yaml")

    model_config = cfg.model_config()
    model = build_mgie(model_config)
    params = model.trainable_parameters()
    if cfg.init_from:
        model.load_trainable_state_dict(load_trainable(cfg.init_from), strict=False)
        log.info("initialised from %s", cfg.init_from)
    resume_dir = resolve_resume(cfg.resume, run_dir)
    if resume_dir is not None:
        model.load_trainable_state_dict(load_trainable(resume_dir), strict=True)

    mixture = build_mixture(load_mixture_spec(cfg.mixture_spec), cfg.manifests, allow_missing=cfg.allow_missing_sources)
    for row in mixture.describe():
        log.info("mixture leaf %(leaf)s p=%(prob).4f samples=%(samples)d [%(datasets)s]", row)
    num_samples = sum(leaf.size for leaf in mixture.leaves)
    total_steps, warmup = cfg.resolve_steps(num_samples, accelerator.num_processes)
    log.info("%d optimizer steps (%s epochs of %d samples), %d warm-up", total_steps, cfg.epochs, num_samples, warmup)

    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    processor = model.processor
    model, optimizer = accelerator.prepare(model, optimizer)

    step, next_draw = 0, 0
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
        step, next_draw = int(state["step"]), int(state["next_draw"])
        log.info("resumed from %s at step %d (draw %d)", resume_dir, step, next_draw)
    start_step = step

    featurize = Featurize(processor, load_expressive(cfg.expressive) if cfg.expressive else {})
    dataset = MixtureDataset(mixture, featurize, rank=accelerator.process_index, seed=cfg.seed,
                             resolution=model_config.resolution)
    loader = make_dataloader(dataset, batch_size=cfg.micro_batch_size, start=next_draw, num_workers=cfg.num_workers,
                             collate_fn=processor.collate)
    accelerator.init_trackers("mgie", config=cfg.hparams())

    # ---------------------------------------------------------------- loop
    history: list[dict[str, float]] = []
    checkpoint: Path | None = resume_dir
    batches = iter(loader)
    model.train()
    while step < total_steps:
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "lm_loss": 0.0, "diffusion_loss": 0.0}
        for _ in range(cfg.grad_accum):
            batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
            with accelerator.accumulate(model):
                out = model(batch)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key in sums:
                sums[key] += float(accelerator.reduce(out[key].detach(), reduction="mean")) / cfg.grad_accum
        scheduler.step()
        step += 1
        next_draw += cfg.micro_batch_size * cfg.grad_accum
        record = {"step": step, **sums, "lr": scheduler.get_last_lr()[0], "step_seconds": time.perf_counter() - t0}
        history.append(record)
        if step % cfg.log_every == 0 or step == total_steps:
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
            log.info("step %d loss %.4f ce %.4f mse %.4f lr %.2e", step, sums["loss"], sums["lm_loss"],
                     sums["diffusion_loss"], record["lr"])

        # ------------------------------------------------------------ checkpoint
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            checkpoint = save_checkpoint(
                run_dir, step, trainable=accelerator.unwrap_model(model).trainable_state_dict(), optimizer=optimizer,
                scheduler=scheduler, state={"model": "mgie", "stage": 2, "next_draw": next_draw, "preset": cfg.preset,
                                            "mixture": mixture.describe(), "losses": sums},
                accelerator=accelerator, keep_last=cfg.keep_last,
            )

    # ---------------------------------------------------------------- cleanup
    if featurize.without_summary:
        log.warning("%d of %d training examples had no expressive instruction (answer = the [IMG] tokens only)",
                    featurize.without_summary, featurize.with_summary + featurize.without_summary)
    pipeline_dir = None
    if cfg.save_pipeline and accelerator.is_main_process:
        pipeline_dir = str(save_mgie_pipeline(accelerator.unwrap_model(model), run_dir / "pipeline"))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    final = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("step", "step_seconds")}
    return RunResult(str(run_dir), 2, step, start_step, final, history, str(checkpoint) if checkpoint else None,
                     pipeline_dir, str(tb_dir))


def parse_cli(argv: list[str] | None = None) -> MGIETrainConfig:
    """The recipe's command line (``accelerate launch -m model.mgie.train --config mgie.yaml [--steps N ...]``):
    every TrainConfig field plus MGIE's own (epochs, warmup_ratio, expressive)."""
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
