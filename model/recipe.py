"""The plumbing both training recipes share; each stage's file states only what differs (torchtune's shape).

    recipe = Stage2Recipe(cfg)       # model/train_stage2.py
    recipe.setup()                   # accelerator, per-rank seed, model, optimizer, LR schedule, resume, data
    recipe.train()                   # optimizer steps up to cfg.steps, a checkpoint every cfg.checkpoint_every
    result = recipe.cleanup()        # pipeline dir (stage 2), trackers closed → RunResult

The seams a stage fills in (class attributes and methods of `Recipe`), so the differences read as names:

    stage                   1 or 2 (checked against the config)
    loss_names              what the model returns and the loop logs
    find_unused_parameters  DDP: stage 2 batches of VQA rows leave BIM and the UNet without gradients
    init_weights(model)     stage 2: start from a stage-1 checkpoint (``init_from``)
    checkpoint_weights(m)   what the checkpoint holds (stage 1: QFormer + token rows; stage 2: all that trains)
    build_dataset(...)      captions (stage 1) or the SmartEdit mixture (stage 2)
    checkpoint_state()      extra JSON for state.json (stage 2: the mixture table)
    writes_pipeline         stage 1 trains no UNet, so it writes no pipeline folder

Resume is exact (model/checkpoint.py); it refuses a run whose config differs from the checkpoint's in a field
that shapes the model, the data stream or the optimizer (``RESUME_FIELDS``), naming every differing field.
Sharded training (DeepSpeed ZeRO-2, FSDP2) goes through accelerate: see ``_prepare`` and model/accelerate/.
An ``output_dir`` on a bucket (``s3://bucket/runs/x``): the run trains into a local staging directory
(pipeline/remote_dirs.py: ``$SMARTEDIT_CACHE/runs/x-<hash>``); after each checkpoint is complete locally, rank 0
uploads it to ``<url>/checkpoints/step-N/`` with its ``_COMPLETE`` marker last, and at the end the pipeline folder
(same rule) and the TensorBoard logs. Resume from the URL downloads its newest complete checkpoint into staging.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from model.train_config import RunResult, TrainConfig

log = logging.getLogger(__name__)

#: TrainConfig fields that must equal the checkpoint's on resume: they shape the model, the data stream
#: (per-rank draw keys, samples per step) or the optimizer/scheduler state that is restored.
RESUME_FIELDS = ("stage", "preset", "model", "manifests", "mixture_spec", "allow_missing_sources", "seed",
                 "micro_batch_size", "grad_accum", "lr", "weight_decay", "betas", "eps", "lr_scheduler",
                 "warmup_steps", "warmup_ratio")
#: Schedules whose curve depends on the total step count: with them ``steps`` must match too (a constant
#: schedule may be extended: resume with a larger ``steps``).
_DECAYING = ("cosine", "linear")


def resume_fingerprint(cfg: TrainConfig, num_processes: int) -> dict[str, Any]:
    """The values a resumed run must share with its checkpoint, JSON-normalised (tuples become lists)."""
    fields = RESUME_FIELDS + (("steps",) if cfg.lr_scheduler in _DECAYING else ())
    values = {name: getattr(cfg, name) for name in fields}
    values["num_processes"] = num_processes  # the per-rank streams are keyed by rank
    return json.loads(json.dumps(values, default=str))


def check_resume(state: dict[str, Any], cfg: TrainConfig, num_processes: int, path: Path) -> None:
    """Refuse to resume from ``path`` when its state.json ``run`` differs from this run; name every field."""
    saved = state.get("run")
    if saved is None:
        log.warning("%s: state.json has no `run` fingerprint (older checkpoint); resuming unchecked", path)
        return
    now = resume_fingerprint(cfg, num_processes)
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {now.get(k)!r}" for k in sorted(set(saved) | set(now))
             if saved.get(k) != now.get(k)]
    if diffs:
        raise ValueError(f"resume from {path}: the run's config differs from the checkpoint's in {len(diffs)} "
                         f"field(s): {'; '.join(diffs)}. Resume with the checkpoint's values, or start a new run "
                         f"(another output_dir, or resume: null)")


class Recipe:
    """One training stage: ``setup()``, ``train()``, ``cleanup()``; ``run()`` does all three."""

    stage: ClassVar[int]
    loss_names: ClassVar[tuple[str, ...]]
    find_unused_parameters: ClassVar[bool] = False
    writes_pipeline: ClassVar[bool] = True

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.stage != self.stage:
            raise ValueError(f"{type(self).__name__} is the stage-{self.stage} recipe; got a stage-{cfg.stage} config")
        if not cfg.manifests:
            raise ValueError("TrainConfig.manifests is empty: pass the shardindex.json of the datasets to train on")
        from pipeline.remote_dirs import cache_dir
        from pipeline.storage import is_url

        self.cfg = cfg
        #: where the run's outputs end up: a local directory or a bucket URL (then run_dir is its local staging)
        self.output = str(cfg.output_dir)
        self.remote = is_url(self.output)
        self.run_dir = cache_dir(self.output, "runs") if self.remote else Path(cfg.output_dir)
        self.tb_dir = self.run_dir / "tensorboard"
        self.history: list[dict[str, float]] = []
        self.checkpoint: Path | None = None
        self.checkpoint_ref: str | None = None  # what the result reports: the local path or the checkpoint's URL

    # -- seams ----------------------------------------------------------------------------------------------
    def init_weights(self, model) -> None:
        """Weights to start from before any resume (stage 2: ``init_from``). Default: none."""

    def checkpoint_weights(self, model) -> dict[str, Any]:
        """The tensors a checkpoint holds (and a resume loads back, strictly)."""
        return model.trainable_state_dict()

    def build_dataset(self, processor, rank: int):
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """Extra JSON-able fields for state.json."""
        return {}

    def build_model(self):
        """The model this recipe trains (MGIE's recipe builds its own)."""
        from model.smartedit import build_smartedit

        return build_smartedit(self.cfg.model_config())

    def write_pipeline(self, model, path: Path) -> Path:
        """The pipeline folder written at the end."""
        from model.checkpoint import save_pipeline

        return save_pipeline(model, path)

    # -- setup ----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from datetime import timedelta

        import torch
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
        from transformers import get_scheduler

        from model.checkpoint import load_checkpoint, load_trainable, read_state, resolve_resume
        from model.data import make_dataloader

        cfg = self.cfg
        self.accelerator = accelerator = Accelerator(
            cpu=cfg.cpu,
            mixed_precision=cfg.resolved_mixed_precision(),
            gradient_accumulation_steps=cfg.grad_accum,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.tb_dir)),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=self.find_unused_parameters),
                             # bounds joining the process group and every collective (TrainConfig.dist_timeout_s)
                             InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s))],
        )
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(self.run_dir / "config.yaml")
            if self.remote:
                from pipeline.remote_dirs import join
                from pipeline.storage import as_path

                target = as_path(join(self.output, "config.yaml"))
                target.fs.put_file(str(self.run_dir / "config.yaml"), target.path)

        resume_ref = resolve_resume(cfg.resume, self.output if self.remote else self.run_dir)
        self.resume_dir = resume_dir = self._stage_resume(resume_ref) if resume_ref is not None else None
        if resume_dir is not None:  # before building: a mismatch should not cost a 7B model load
            check_resume(read_state(resume_dir), cfg, accelerator.num_processes, resume_dir)
        # Every rank builds the same model (initialisation is keyed on the model config's seed) ...
        model = self.build_model()
        self.init_weights(model)
        if resume_dir is not None:
            self._load_weights(model, load_trainable(resume_dir), resume_dir)
        # ... then the global RNG is seeded per rank (seed + rank): noise, timesteps and CFG dropout differ per GPU.
        set_seed(cfg.seed, device_specific=True)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        # Not accelerate-prepared: a prepared scheduler steps once per process per call; we step once per optimizer step.
        self.scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.resolved_warmup_steps(),
                                       num_training_steps=cfg.steps)
        self.processor = model.processor
        self.model, self.optimizer = self._prepare(model, optimizer)
        # Sharding (FSDP2) replaces the parameters: clip what the prepared model holds, not the list built above.
        self.params = [p for p in self.model.parameters() if p.requires_grad]

        self.step, self.next_draw = 0, 0
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, optimizer=self.optimizer, scheduler=self.scheduler,
                                    accelerator=accelerator)
            self.step, self.next_draw = int(state["step"]), int(state["next_draw"])
            self.checkpoint, self.checkpoint_ref = resume_dir, str(resume_ref)
            log.info("resumed from %s at step %d (draw %d)", resume_dir, self.step, self.next_draw)
        self.start_step = self.step

        self.dataset = self.build_dataset(self.processor, accelerator.process_index)
        log.info("rank %d/%d draws %s", accelerator.process_index, accelerator.num_processes,
                 describe_draws(self.dataset, self.next_draw, cfg.micro_batch_size))
        # Not accelerate-prepared either: each rank draws its own stream (model/mixture.py), so nothing is sharded.
        self.loader = make_dataloader(self.dataset, batch_size=cfg.micro_batch_size, start=self.next_draw,
                                      num_workers=cfg.num_workers, collate_fn=self.processor.collate)
        accelerator.init_trackers(f"stage{self.stage}", config=cfg.hparams())

    def _stage_resume(self, ref: Path | str) -> Path:
        """The local directory to resume from: ``ref`` itself, or a checkpoint URL downloaded into the staging
        run dir (once per node: the node's first process downloads, the others wait for it)."""
        from pipeline.remote_dirs import download_dir
        from pipeline.storage import is_url

        if not is_url(ref):
            return Path(ref)
        local = self.run_dir / "checkpoints" / str(ref).rstrip("/").rsplit("/", 1)[-1]
        with self.accelerator.local_main_process_first():
            if self.accelerator.is_local_main_process:
                # staging is scratch: a checkpoint left there by a killed run may never have been uploaded
                shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
                download_dir(str(ref), local)
        return local

    def _load_weights(self, model, weights: dict[str, Any], path: Path) -> None:
        """Resume: exactly the keys this stage's checkpoints hold, no more, no fewer."""
        expected = set(self.checkpoint_weights(model))
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise KeyError(f"{path}: not a stage-{self.stage} checkpoint of this model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        model.load_trainable_state_dict(weights, strict=False)  # a subset of the model's trainable set

    def _prepare(self, model, optimizer):
        """accelerate.prepare for every backend. DeepSpeed sizes its micro-batch from a prepared DataLoader, which
        the recipes do not have (each rank draws its own stream), so the config's value is set here instead of
        DeepSpeed's unresolvable "auto"."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None:
            set_deepspeed_micro_batch(plugin, self.cfg)
        return self.accelerator.prepare(model, optimizer)

    # -- train ----------------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg, accelerator, model = self.cfg, self.accelerator, self.model
        batches = iter(self.loader)
        model.train()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            sums = dict.fromkeys(self.loss_names, 0.0)
            for _ in range(cfg.grad_accum):
                batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
                with accelerator.accumulate(model):
                    out = model(batch)
                    accelerator.backward(out["loss"])
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for key in sums:
                    sums[key] += float(accelerator.reduce(out[key].detach(), reduction="mean")) / cfg.grad_accum
            self.scheduler.step()
            self.step += 1
            self.next_draw += cfg.micro_batch_size * cfg.grad_accum
            record = {"step": self.step, **sums, "lr": self.scheduler.get_last_lr()[0],
                      "step_seconds": time.perf_counter() - t0}
            self.history.append(record)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=self.step)
                log.info("step %d %s lr %.2e", self.step, " ".join(f"{k} {v:.4f}" for k, v in sums.items()),
                         record["lr"])
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save(sums)

    def save(self, losses: dict[str, float]) -> None:
        from model.checkpoint import save_checkpoint

        state = {"stage": self.stage, "next_draw": self.next_draw, "preset": self.cfg.preset, "losses": losses,
                 "run": resume_fingerprint(self.cfg, self.accelerator.num_processes), **self.checkpoint_state()}
        self.checkpoint = save_checkpoint(
            self.run_dir, self.step, trainable=self.checkpoint_weights(self._full_model()), optimizer=self.optimizer,
            scheduler=self.scheduler, state=state, accelerator=self.accelerator, keep_last=self.cfg.keep_last,
        )
        self.checkpoint_ref = str(self.checkpoint)
        if self.remote:
            self.checkpoint_ref = self._upload_checkpoint()

    def _upload_checkpoint(self) -> str:
        """Rank 0, after save_checkpoint's last barrier: upload the finished checkpoint (marker last) and drop
        uploads beyond ``keep_last``. The other ranks go on training meanwhile."""
        from model.checkpoint import checkpoint_url, list_checkpoints
        from pipeline.remote_dirs import remove_dir, upload_dir
        from pipeline.storage import as_path

        url = checkpoint_url(self.output, self.step)
        accelerator = self.accelerator
        if accelerator.num_processes > 1:
            # Nodes without a shared disk: the first process of every other node uploads what its ranks wrote
            # (their RNG states; sharded optimizer state) from its own staging copy, before rank 0's marker;
            # rank 0 first removes an earlier upload of this step, so no old file outlives the new marker.
            if accelerator.is_main_process:
                remove_dir(url)
            accelerator.wait_for_everyone()
            local = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
            if accelerator.is_local_main_process and not accelerator.is_main_process and local.is_dir():
                target = as_path(url)
                target.fs.put(str(local) + "/", target.path + "/", recursive=True)
                shutil.rmtree(local, ignore_errors=True)
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            upload_dir(self.checkpoint, url, replace=accelerator.num_processes == 1)
            if self.cfg.keep_last:
                for old in list_checkpoints(self.output)[:-self.cfg.keep_last]:
                    remove_dir(old)
        return url

    def _full_model(self):
        """The unwrapped model with whole (unsharded) tensors: FSDP2 holds shards, so gather a full state dict
        (every rank takes part) and read the trainable keys from it."""
        from accelerate.utils import DistributedType

        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.accelerator.distributed_type != DistributedType.FSDP:
            return unwrapped
        full = self.accelerator.get_state_dict(self.model)
        return _FullStateView(unwrapped, full)

    # -- cleanup --------------------------------------------------------------------------------------------
    def cleanup(self) -> RunResult:
        accelerator = self.accelerator
        pipeline_dir = None
        if self.cfg.save_pipeline and not self.writes_pipeline:
            log.info("stage %d trains no UNet: no pipeline folder; stage 2 starts from %s with init_from",
                     self.stage, self.checkpoint)
        elif self.cfg.save_pipeline and accelerator.is_main_process:
            pipeline_dir = str(self.write_pipeline(accelerator.unwrap_model(self.model), self.run_dir / "pipeline"))
        accelerator.wait_for_everyone()
        accelerator.end_training()
        tb_dir = str(self.tb_dir)
        if self.remote:
            pipeline_dir, tb_dir = self._upload_outputs(pipeline_dir)
        final = {k: v for k, v in (self.history[-1] if self.history else {}).items() if k not in ("step", "step_seconds")}
        return RunResult(self.output if self.remote else str(self.run_dir), self.stage, self.step, self.start_step,
                         final, self.history, self.checkpoint_ref, pipeline_dir, tb_dir)

    def _upload_outputs(self, pipeline_dir: str | None) -> tuple[str | None, str]:
        """Rank 0: the pipeline folder (files, then its marker) and the TensorBoard logs to the bucket; returns
        their URLs."""
        from pipeline.remote_dirs import join, upload_dir
        from pipeline.storage import as_path

        pipeline_url = join(self.output, "pipeline") if pipeline_dir else None
        tb_url = join(self.output, "tensorboard")
        if self.accelerator.is_main_process:
            if pipeline_dir:
                upload_dir(pipeline_dir, pipeline_url)
            if self.tb_dir.is_dir():
                target = as_path(tb_url)
                target.fs.put(str(self.tb_dir) + "/", target.path + "/", recursive=True)
        return pipeline_url, tb_url

    def run(self) -> RunResult:
        self.setup()
        self.train()
        return self.cleanup()


def set_deepspeed_micro_batch(plugin, cfg: TrainConfig) -> None:
    """Resolve DeepSpeed's per-GPU micro-batch from the run config (accelerate would read it off a prepared
    DataLoader; the recipes prepare none). ``plugin``: accelerate's ``DeepSpeedPlugin``."""
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size


class _FullStateView:
    """``trainable_state_dict()`` of a sharded model read from a gathered full state dict (same key names)."""

    def __init__(self, model, full_state: dict[str, Any]) -> None:
        self.model, self.full_state = model, full_state

    def trainable_state_dict(self) -> dict[str, Any]:
        return {k: self.full_state[k].detach().contiguous() for k in self.model._trainable_keys()
                if k in self.full_state}

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def describe_draws(dataset, start: int, n: int) -> list[str]:
    """``dataset:sample`` of draws ``start … start+n-1`` of this rank's stream (metadata only, nothing is read)."""
    out = []
    for i in range(start, start + n):
        draw = dataset.sampler.draw(i)
        out.append(f"{Path(dataset.mixture.datasets[draw.dataset].index_path).parent.name}:{draw.sample}")
    return out


def recipe_main(train: Callable[[TrainConfig], RunResult], stage: int, argv: list[str] | None = None) -> int:
    """``python -m model.train_stageN`` / ``accelerate launch -m model.train_stageN``: parse, train, log."""
    from model.train_config import parse_cli

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(parse_cli(argv, stage=stage))
    log.info("stage %d done: step %d, final %s, checkpoint %s", result.stage, result.steps, result.final,
             result.checkpoint)
    # a launcher (flows/train.py under torchrun) reads the run's result from here; written by global rank 0 only
    result_json = os.environ.get("SMARTEDIT_RESULT_JSON")
    if result_json and os.environ.get("RANK", "0") == "0":
        Path(result_json).write_text(json.dumps(result.to_dict()))
    return 0
