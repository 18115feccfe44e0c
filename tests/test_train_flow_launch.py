"""The `train` flow launching the recipe with torchrun: stage 2 on 2 gloo CPU processes through the flow (both
ranks train and draw different samples, their output reaches the flow run's log, the checkpoint resumes), and a
failing rank failing the flow."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_data import write_stage2_datasets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def _flow_logs(flow_run_id, needle: str) -> str:
    """The flow run's logs as the API holds them (sent in batches: wait until ``needle`` arrived)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        text = "\n".join(log.message for log in logs)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_train_flow_runs_stage2_on_two_gloo_processes_and_resumes(prefect_harness, tmp_path):
    from model.checkpoint import read_state

    from flows.train import train

    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards")]
    out = tmp_path / "run"
    state = train(preset="tiny", stage=2, steps=2, manifests=manifests, output_dir=str(out), allow_missing_sources=True,
                  overrides={"checkpoint_every": 2, "save_pipeline": False}, nproc_per_node=2, return_state=True)
    summary = state.result()
    assert (summary["steps"], summary["start_step"]) == (2, 0)
    step2 = out / "checkpoints" / "step-00000002"
    assert Path(summary["checkpoint"]) == step2 and read_state(step2)["run"]["num_processes"] == 2

    logs = _flow_logs(state.state_details.flow_run_id, "rank 1/2 draws")  # every rank's lines, streamed into the flow run
    draws = dict(re.findall(r"rank (\d)/2 draws (\[.*?\])", logs))
    assert set(draws) == {"0", "1"} and draws["0"] != draws["1"]
    rng = [torch.load(step2 / "rng" / f"rank-{r:05d}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert not torch.equal(rng[0], rng[1])

    again = train(preset="tiny", stage=2, steps=3, manifests=manifests, output_dir=str(out), allow_missing_sources=True,
                  overrides={"checkpoint_every": 1, "save_pipeline": False}, nproc_per_node=2)
    assert (again["start_step"], again["steps"]) == (2, 3)  # resumed from the 2-rank checkpoint


def test_a_failing_rank_fails_the_launch(tmp_path):
    import logging

    from flows.train import stream_command, torchrun_command

    script = tmp_path / "rank.py"
    script.write_text("import os, sys\nprint('rank', os.environ['RANK'], 'up', flush=True)\n"
                      "sys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("test-launch")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    with pytest.raises(RuntimeError, match="torchrun exited with status 1 \\(a rank failed\\)"):
        stream_command(torchrun_command([str(script)], nproc_per_node=2), dict(os.environ), logger)
    assert {"rank 0 up", "rank 1 up"} <= {line.strip() for line in lines}

    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command([str(script)], nproc_per_node=1, nnodes=2)
    cmd = torchrun_command(["-m", "x"], nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29400")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--node_rank") + 1] == "1" and cmd[cmd.index("--rdzv_endpoint") + 1] == "node0:29400"
