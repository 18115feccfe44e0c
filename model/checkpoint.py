"""Training checkpoints: only what trains, written atomically, enough to resume bit-for-bit.

Layout of ``<run_dir>/checkpoints/step-00000100/``::

    trainable.safetensors   LoRA, new token rows, QFormer, BIM, UNet (model.trainable_state_dict())
    optimizer.pt            optimizer state (single process / DDP); or accelerate/ for sharded optimizers
    scheduler.pt            LR scheduler state
    rng/rank-00000.pt       python, numpy, torch (and CUDA) RNG states of every rank
    state.json              step, next draw index per rank (the data stream position), stage, config

The directory is written under ``step-...tmp`` and renamed when complete, so a crash never leaves a
checkpoint that looks finished; `latest_checkpoint` ignores ``.tmp`` directories.

A run whose output dir is a bucket URL (``s3://bucket/runs/x``) trains into a local staging directory
(``$SMARTEDIT_CACHE/runs/x-<hash>``, pipeline/remote_dirs.py) and uploads each finished checkpoint to
``<url>/checkpoints/step-.../`` with a ``_COMPLETE`` marker written last (a bucket has no directory rename):
`list_checkpoints` / `latest_checkpoint` / `resolve_resume` on a URL return the URLs of the checkpoints that have
their marker, and `load_trainable` downloads a checkpoint URL into the cache first.
Everything loads with ``torch.load(weights_only=True)``: no arbitrary pickles.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
WEIGHTS = "trainable.safetensors"
STATE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain containers (weights_only-loadable)."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: Path | str, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def checkpoint_url(run_url: str, step: int) -> str:
    from pipeline.remote_dirs import join

    return join(run_url, CHECKPOINTS, f"step-{step:08d}")


def _remote_checkpoints(run_url: str) -> list[str]:
    """URLs of the uploaded checkpoints of a run on a bucket that hold their completion marker, oldest first."""
    from pipeline.remote_dirs import MARKER, join
    from pipeline.storage import as_path

    root = as_path(join(run_url, CHECKPOINTS))
    fs = root.fs
    fs.invalidate_cache(root.path)  # listings are cached per process; another machine may have uploaded since
    if not fs.exists(root.path):
        return []
    found = []
    for entry in fs.ls(root.path, detail=False, refresh=True):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if (m := _STEP_DIR.match(name)) and fs.exists(f"{entry.rstrip('/')}/{MARKER}"):
            found.append((int(m.group(1)), join(run_url, CHECKPOINTS, name)))
        elif m:
            log.warning("%s: checkpoint upload not finished (no marker); ignored", join(run_url, CHECKPOINTS, name))
    return [url for _, url in sorted(found)]


def list_checkpoints(run_dir: Path | str) -> list[Path] | list[str]:
    """Finished checkpoints of a run, oldest first (URLs of the complete uploads for a run on a bucket)."""
    from pipeline.storage import is_url

    if is_url(run_dir):
        return _remote_checkpoints(str(run_dir))
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path | str) -> Path | str | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: str | None, run_dir: Path | str) -> Path | str | None:
    """``None``/"" → no resume; "latest" → newest checkpoint of ``run_dir`` (None if there is none); else a path.
    On a bucket (a URL run_dir or resume) the checkpoint's URL, complete (marker present)."""
    from pipeline.remote_dirs import MARKER, is_complete
    from pipeline.storage import is_url

    if not resume:
        return None
    if resume == "latest":
        return latest_checkpoint(run_dir)
    if is_url(resume):
        if not is_complete(resume):
            raise FileNotFoundError(f"resume={resume!r}: no {MARKER} marker there (missing, or its upload did not "
                                    "finish); pass a complete step-... checkpoint URL, 'latest' or nothing")
        return resume
    path = Path(resume)
    if not (path / STATE).exists():
        raise FileNotFoundError(f"resume={resume!r}: {path / STATE} not found; pass a step-... directory, 'latest' or nothing")
    return path


def _is_sharded(accelerator) -> bool:
    """DeepSpeed and FSDP shard the optimizer: its state goes through accelerate's own save_state."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def save_checkpoint(
    run_dir: Path | str,
    step: int,
    *,
    trainable: dict[str, Any],
    optimizer,
    scheduler,
    state: dict[str, Any],
    accelerator=None,
    keep_last: int | None = None,
) -> Path:
    """Write a checkpoint atomically and return its directory. Call on every rank (RNG is per rank).

    trainable: name → tensor, only what trains. state: JSON-able (step, draw positions, stage, config).
    """
    import torch
    from safetensors.torch import save_file

    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    is_main = accelerator is None or accelerator.is_main_process
    rank = 0 if accelerator is None else accelerator.process_index
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)  # a previous crash mid-write
        (tmp / "rng").mkdir(parents=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    # every rank: a node without a shared disk (a run on a bucket stages per node) has its own tmp
    (tmp / "rng").mkdir(parents=True, exist_ok=True)

    torch.save(capture_rng_state(), tmp / "rng" / f"rank-{rank:05d}.pt")
    if _is_sharded(accelerator):
        accelerator.save_state(str(tmp / "accelerate"))
    if is_main:
        # safetensors refuses tensors that share storage; clone detaches tied views.
        save_file({k: v.detach().to("cpu").clone().contiguous() for k, v in trainable.items()}, str(tmp / WEIGHTS))
        if not _is_sharded(accelerator):
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=1, sort_keys=True, default=str))
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        log.info("checkpoint step %d written to %s", step, final)
        if keep_last:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return final


def load_trainable(path: Path | str) -> dict[str, Any]:
    """The trainable tensors of a checkpoint dir (or a .safetensors file)."""
    from safetensors.torch import load_file

    from pipeline.remote_dirs import local_copy

    path = local_copy(path)  # a checkpoint URL (the retrain champion's) is downloaded into the cache first
    file = path / WEIGHTS if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no trainable weights; is {path} a checkpoint written by model/checkpoint.py?")
    return load_file(str(file))


def read_state(path: Path | str) -> dict[str, Any]:
    return json.loads((Path(path) / STATE).read_text())


def load_checkpoint(path: Path | str, *, optimizer, scheduler, accelerator=None) -> dict[str, Any]:
    """Restore optimizer, scheduler and this rank's RNG from ``path``; return state.json.

    Model weights are loaded by the caller (``model.load_trainable_state_dict(load_trainable(path))``) before
    the optimizer is restored, so that the optimizer state lands on the right parameters.
    """
    import torch

    path = Path(path)
    rank = 0 if accelerator is None else accelerator.process_index
    if _is_sharded(accelerator):
        accelerator.load_state(str(path / "accelerate"))
    else:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    rng_file = path / "rng" / f"rank-{rank:05d}.pt"
    if rng_file.exists():
        restore_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    else:
        log.warning("%s: no RNG state for rank %d (saved with fewer ranks?); RNG continues unseeded from checkpoint", path, rank)
    return read_state(path)


def save_pipeline(model, path: Path | str) -> Path:
    """Write the trained model as a SmartEditPipeline directory (model/pipeline.py), loadable with from_pretrained."""
    from model.pipeline import SmartEditPipeline

    path = Path(path)
    SmartEditPipeline(model).save_pretrained(str(path))
    return path
