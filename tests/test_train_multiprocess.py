"""Stage 2 on 2 CPU processes (gloo) through torchrun: the multi-GPU launch paths, run where CI can run them.

DDP through the recipe's module entry point: both ranks train, draw different samples and seed their RNG
differently. FSDP2 (the sharded path): parameters are sharded, and a checkpoint written by 2 ranks resumes on
2 ranks to the same next-step loss. Each test is one torchrun launch (most of its time is process start-up).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import read_state
from model.train_config import get_train_preset
from test_train_data import write_stage2_datasets

REPO = Path(__file__).resolve().parents[1]


def _launch(config: Path, log: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "model.train_stage2", "--config", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _final_loss(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"stage 2 done: step \d+, final \{'loss': ([0-9.e-]+)", output)]


def test_stage2_on_two_gloo_processes_trains_one_stream_per_rank(tmp_path):
    """`torchrun -m model.train_stage2` (DDP over gloo): the launch users run, minus the GPUs."""
    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards")]
    config = tmp_path / "ddp.yaml"
    get_train_preset(2, "tiny", output_dir=str(tmp_path / "run"), manifests=manifests, allow_missing_sources=True,
                     steps=2, checkpoint_every=2, save_pipeline=False).save_yaml(config)
    out = _launch(config, tmp_path / "ddp.log")

    draws = dict(re.findall(r"rank (\d)/2 draws (\[.*?\])", out))
    assert set(draws) == {"0", "1"}, out[-3000:]  # both ranks ran, in one world of 2
    assert draws["0"] != draws["1"]  # ... and drew different samples
    step2 = tmp_path / "run" / "checkpoints" / "step-00000002"
    rng = [torch.load(step2 / "rng" / f"rank-{r:05d}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert not torch.equal(rng[0], rng[1])  # per-rank seeds: noise and CFG dropout differ between ranks
    losses = _final_loss(out)
    assert len(losses) == 2 and losses[0] == losses[1]  # each rank logs the loss reduced over both
    assert read_state(step2)["run"]["num_processes"] == 2 and read_state(step2)["next_draw"] == 4


def test_stage2_fsdp2_shards_trains_and_resumes_on_two_cpu_processes(tmp_path):
    """The sharded path (accelerate FSDP2 as model/accelerate/fsdp.yaml sets it) end to end, and a 2-rank
    checkpoint resumed on 2 ranks to the same next-step loss: see tests/fsdp2_cpu_launch.py."""
    import json

    from model.checkpoint import load_trainable

    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards")]
    config = tmp_path / "fsdp2.yaml"
    get_train_preset(2, "tiny", output_dir=str(tmp_path / "run"), manifests=manifests, allow_missing_sources=True,
                     steps=2, checkpoint_every=1, keep_last=None, save_pipeline=False).save_yaml(config)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "fsdp2_cpu_launch.py"), str(config), str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["world"] == 2 and out["sharded"]  # every trainable parameter is a DTensor shard
    assert out["resumed_start"] == 1 and [h["step"] for h in out["resumed"]] == [2]
    assert out["resumed"][0]["loss"] == pytest.approx(out["full"][1]["loss"], rel=1e-5, abs=1e-6)
    # the checkpoint holds whole tensors (gathered), loadable into an unsharded model
    from model.smartedit import build_smartedit

    model = build_smartedit(get_train_preset(2, "tiny").model_config())
    weights = load_trainable(tmp_path / "run" / "checkpoints" / "step-00000002")
    model.load_trainable_state_dict(weights)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "accelerate").is_dir()  # sharded optimizer state
