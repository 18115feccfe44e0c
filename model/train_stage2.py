"""Stage 2 (joint training) recipe: the SmartEdit mixture, CE + diffusion MSE 1:1 (REFERENCE §2).

Trains LoRA, the new [IMG] token rows, the QFormer, BIM and the full UNet; the LLM, vision tower, projector,
VAE and CLIP text stay frozen. Reads top to bottom: setup → loop → checkpoint → cleanup.

    python -m model.train_stage2 --config run.yaml                       # CPU or one GPU
    accelerate launch --config_file model/accelerate/multi_gpu_deepspeed_zero2.yaml \
        -m model.train_stage2 --config run.yaml                          # 8 GPUs
    from model.train_stage2 import train_stage2; from model.train_config import get_train_preset
    result = train_stage2(get_train_preset(2, "tiny", manifests=[...], output_dir="runs/t", allow_missing_sources=True))

CFG dropout (text → CLIP(""), image latent → 0) happens inside the model. Data draws are per rank and keyed by
(seed, rank, draw index) (model/mixture.py), so resuming from a checkpoint continues the exact stream.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from model.train_config import RunResult, TrainConfig, parse_cli

log = logging.getLogger(__name__)


class Featurize:
    """TrainExample → one processor sample (picklable, for DataLoader workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, example) -> dict[str, Any]:
        # VQA rows carry an answer (LM loss only); edits have none: their LM target is the [IMG] tokens.
        return self.processor.encode(example.source, example.instruction, answer=example.answer,
                                     target=example.target if example.is_edit else None)


def train_stage2(cfg: TrainConfig) -> RunResult:
    """Run stage 2 for ``cfg.steps`` optimizer steps (continuing from ``cfg.resume``); return a small summary."""
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration, set_seed
    from transformers import get_scheduler

    from model.checkpoint import load_checkpoint, load_trainable, resolve_resume, save_checkpoint, save_pipeline
    from model.data import MixtureDataset, make_dataloader
    from model.mixture import build_mixture, load_mixture_spec
    from model.smartedit import build_smartedit

    if cfg.stage != 2:
        raise ValueError(f"train_stage2 got a stage-{cfg.stage} config; use model.train_stage1")
    if not cfg.manifests:
        raise ValueError("TrainConfig.manifests is empty: pass the shardindex.json of each mixture source")

    # ---------------------------------------------------------------- setup
    run_dir = Path(cfg.output_dir)
    tb_dir = run_dir / "tensorboard"
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=cfg.resolved_mixed_precision(),
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(tb_dir)),
        # A batch of VQA rows only leaves BIM and the UNet without gradients: DDP must tolerate that.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed, device_specific=True)  # seed + rank: noise, timesteps and CFG dropout differ per GPU
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(run_dir / "config.yaml")

    model = build_smartedit(cfg.model_config())
    params = model.trainable_parameters(2)
    if cfg.init_from:
        # Stage-1 checkpoints hold QFormer + token rows only; everything else keeps its initialisation.
        model.load_trainable_state_dict(load_trainable(cfg.init_from), strict=False)
        log.info("initialised from %s", cfg.init_from)
    resume_dir = resolve_resume(cfg.resume, run_dir)
    if resume_dir is not None:
        model.load_trainable_state_dict(load_trainable(resume_dir), strict=True)

    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    # Not accelerate-prepared: a prepared scheduler steps once per process per call; we step once per optimizer step.
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.steps)
    processor = model.processor
    model, optimizer = accelerator.prepare(model, optimizer)

    step, next_draw = 0, 0
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
        step, next_draw = int(state["step"]), int(state["next_draw"])
        log.info("resumed from %s at step %d (draw %d)", resume_dir, step, next_draw)
    start_step = step

    mixture = build_mixture(load_mixture_spec(cfg.mixture_spec), cfg.manifests, allow_missing=cfg.allow_missing_sources)
    for row in mixture.describe():
        log.info("mixture leaf %(leaf)s p=%(prob).4f samples=%(samples)d [%(datasets)s]", row)
    dataset = MixtureDataset(mixture, Featurize(processor), rank=accelerator.process_index, seed=cfg.seed,
                             resolution=cfg.model_config().resolution)
    loader = make_dataloader(dataset, batch_size=cfg.micro_batch_size, start=next_draw, num_workers=cfg.num_workers,
                             collate_fn=processor.collate)
    accelerator.init_trackers("stage2", config=cfg.hparams())

    # ---------------------------------------------------------------- loop
    history: list[dict[str, float]] = []
    checkpoint: Path | None = resume_dir
    batches = iter(loader)
    model.train()
    while step < cfg.steps:
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
        if step % cfg.log_every == 0 or step == cfg.steps:
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
            log.info("step %d loss %.4f lm %.4f diff %.4f lr %.2e", step, sums["loss"], sums["lm_loss"],
                     sums["diffusion_loss"], record["lr"])

        # ------------------------------------------------------------ checkpoint
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            unwrapped = accelerator.unwrap_model(model)
            checkpoint = save_checkpoint(
                run_dir, step, trainable=unwrapped.trainable_state_dict(), optimizer=optimizer, scheduler=scheduler,
                state={"stage": 2, "next_draw": next_draw, "preset": cfg.preset, "mixture": mixture.describe(),
                       "losses": sums},
                accelerator=accelerator, keep_last=cfg.keep_last,
            )

    # ---------------------------------------------------------------- cleanup
    pipeline_dir = None
    if cfg.save_pipeline and accelerator.is_main_process:
        pipeline_dir = str(save_pipeline(accelerator.unwrap_model(model), run_dir / "pipeline"))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    final = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("step", "step_seconds")}
    return RunResult(str(run_dir), 2, step, start_step, final, history, str(checkpoint) if checkpoint else None,
                     pipeline_dir, str(tb_dir))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train_stage2(parse_cli(argv, stage=2))
    log.info("stage 2 done: step %d, final %s, checkpoint %s", result.steps, result.final, result.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
