"""The `train` flow across two nodes: two flow runs in separate processes (node 0 and node 1, one gloo CPU rank
each, node 1 started first) meet at one rendezvous on 127.0.0.1 and train stage 2 as one world of 2: each node's
rank trains and draws its own samples, rank 0 writes the checkpoint on the shared output dir and it resumes; when
node 1's rank fails, both flow runs fail (node 0's rank loses its peer in the next collective, it does not hang).
bench/multinode_netns.sh runs the same across two network namespaces."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path


from test_train_data import write_stage2_datasets
from test_train_flow_launch import _flow_logs

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_nodes(params: list[dict], timeout: int = 600) -> list[dict]:
    """Start one `train` flow process per node, the last node first: each next one only once the previous one's
    torchrun was launched, so node 0 arrives at the rendezvous last and must still be global rank 0 (the rank comes
    from node_rank, not arrival order). Wait for every one; their NODE-RESULT lines, in node order."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PREFECT_API_URL": PREFECT_API_URL.value()}
    nodes = []
    for p in reversed(params):
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "train_node.py"), json.dumps(p)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        launched = threading.Event()

        def drain(proc=proc, lines=lines, launched=launched):
            for line in proc.stdout:
                lines.append(line)
                if "launching node" in line:
                    launched.set()
            launched.set()  # it ended without launching: the result line says why

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        launched.wait(timeout)
        nodes.append((proc, lines, reader))
    results = []
    for proc, lines, reader in reversed(nodes):
        proc.wait(timeout)
        reader.join(timeout)
        line = next((l for l in lines if l.startswith("NODE-RESULT ")), None)
        assert line, f"node process exited {proc.returncode} without a result:\n{''.join(lines)[-4000:]}"
        results.append(json.loads(line.removeprefix("NODE-RESULT ")))
    return results


def _nodes(common: dict, nnodes: int = 2, **per_node) -> list[dict]:
    endpoint = f"127.0.0.1:{_free_port()}"
    return [{**common, "nnodes": nnodes, "nproc_per_node": 1, "node_rank": rank, "rdzv_endpoint": endpoint,
             **per_node.get(str(rank), {})} for rank in range(nnodes)]


def test_train_flow_on_two_nodes_trains_one_world_resumes_and_fails_together(prefect_harness, tmp_path, monkeypatch):
    import torch

    from flows.train import train
    from model.checkpoint import read_state

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards")]
    out = tmp_path / "run"  # the shared output dir (a shared volume or bucket on a cluster)
    common = {"preset": "tiny", "stage": 2, "steps": 2, "manifests": manifests, "output_dir": str(out),
              "allow_missing_sources": True, "overrides": {"checkpoint_every": 2, "save_pipeline": False}}
    node0, node1 = _run_nodes(_nodes(common))
    assert (node0["state"], node1["state"]) == ("COMPLETED", "COMPLETED"), (node0, node1)
    assert (node0["result"]["steps"], node0["result"]["start_step"]) == (2, 0)
    assert node1["result"] == {"run_dir": str(out), "stage": 2, "node_rank": 1}  # node 0 reports the run
    step2 = out / "checkpoints" / "step-00000002"
    assert Path(node0["result"]["checkpoint"]) == step2
    assert read_state(step2)["run"]["num_processes"] == 2  # one world of 2 ranks across the two nodes

    # each node's flow run logs its own rank's lines: global rank 0 ran on node 0 (which arrived last), rank 1 on node 1
    logs = [_flow_logs(n["flow_run_id"], "draws") for n in (node0, node1)]
    draws = [dict(re.findall(r"rank (\d)/2 draws (\[.*?\])", text)) for text in logs]  # "/2": world size 2
    assert set(draws[0]) == {"0"} and set(draws[1]) == {"1"}, logs
    assert draws[0]["0"] != draws[1]["1"]  # both ranks drew different samples
    rng = [torch.load(step2 / "rng" / f"rank-{r:05d}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert not torch.equal(rng[0], rng[1])

    # the two-node checkpoint resumes (here on one node with the same 2 ranks)
    again = train(**{**common, "steps": 3, "overrides": {"checkpoint_every": 1, "save_pipeline": False}},
                  nproc_per_node=2)
    assert (again["start_step"], again["steps"]) == (2, 3)

    # node 1's rank fails after the rendezvous (its shards are unreadable): both flow runs fail
    broken = tmp_path / "shards-node1"
    shutil.copytree(tmp_path / "shards", broken)
    for tar in broken.rglob("*.tar"):
        tar.write_bytes(b"")
    failing = {**common, "output_dir": str(tmp_path / "failing")}
    node0, node1 = _run_nodes(_nodes(failing, **{"1": {"manifests": [m.replace(str(tmp_path / "shards"), str(broken))
                                                                      for m in manifests]}}))
    assert (node0["state"], node1["state"]) == ("FAILED", "FAILED"), (node0, node1)
    assert "train: torchrun on node 1 of 2 exited with status 1 (a rank failed)" in node1["message"]
    assert "train: torchrun on node 0 of 2 exited with status 1 (a rank failed)" in node0["message"]
