"""The `train` flow across two nodes, as the Kubernetes work pool runs it (deploy/work-pools/kubernetes.json): ONE
flow run; node 0 executes it (`python -m prefect.engine`, what `prefect flow-run execute` runs in pod 0) and node 1
is flows/train_node_agent.py reading that flow run's parameters (pod 1), each with one gloo CPU rank, meeting at
torchrun's static rendezvous on 127.0.0.1. Node 1 starts first; node 0 must still be global rank 0 (static ranks
nodes by node_rank). They train stage 2 as one world of 2: each rank draws its own samples, both nodes' lines reach
the one flow run's log, rank 0 writes a checkpoint of a 2-process run on the shared output dir (resuming a 2-rank
checkpoint is tests/test_train_flow_launch.py's). When node 1's rank dies before it joins the process group, the
agent exits non-zero, node 0 fails after the process-group timeout (TrainConfig.dist_timeout_s, short here) instead
of torch's 30 min, and the flow run is FAILED. bench/multinode_netns.sh runs two nodes across network namespaces."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

from test_train_data import write_stage2_datasets

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], started: str, timeout: int):
    """Start ``cmd``; return (process, its output lines, reader thread) once a line containing ``started`` came
    (or it ended)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: list[str] = []
    seen = threading.Event()

    def drain():
        for line in proc.stdout:
            lines.append(line)
            if started in line:
                seen.set()
        seen.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    seen.wait(timeout)
    return proc, lines, reader


def _run_two_nodes(params: dict, tmp_path: Path, node1_env: dict[str, str] | None = None, timeout: int = 600):
    """One `train` flow run for 2 nodes: node 1's agent first, then node 0 executing the flow run, as pods 1 and 0
    of the Indexed Job would (PREFECT__FLOW_RUN_ID, JOB_COMPLETION_INDEX, SMARTEDIT_NNODES from the job). Returns
    (flow run, node 0's (rc, output), node 1's (rc, output))."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.train import train

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(train, parameters=params)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT__FLOW_RUN_ID": str(flow_run.id),
           "SMARTEDIT_NNODES": "2"}
    node1 = _start([sys.executable, "-m", "flows.train_node_agent"],
                   {**env, "JOB_COMPLETION_INDEX": "1", **(node1_env or {})}, "launching node", timeout)
    node0 = _start([sys.executable, "-m", "prefect.engine"],
                   {**env, "JOB_COMPLETION_INDEX": "0", "PREFECT__FLOW_ENTRYPOINT": "flows/train.py:train"},
                   "launching node", timeout)
    out = []
    for proc, lines, reader in (node0, node1):
        proc.wait(timeout)
        reader.join(timeout)
        out.append((proc.returncode, "".join(lines)))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run.id)
    return flow_run, out[0], out[1]


def _logs(flow_run_id) -> list[tuple[str, str]]:
    """Every (logger name, message) of the flow run, in order (paged: a run logs more than one page)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    out, page = [], 200
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=page,
                                    offset=len(out), sort=LogSort.TIMESTAMP_ASC)
            out += [(log.name, log.message) for log in logs]
            if len(logs) < page:
                return out


def _params(tmp_path: Path, out: Path, **overrides) -> dict:
    manifests = [str(p) for p in write_stage2_datasets(tmp_path / "shards")]
    return {"preset": "tiny", "stage": 2, "steps": 2, "manifests": manifests, "output_dir": str(out),
            "allow_missing_sources": True, "nproc_per_node": 1, "nnodes": 2,
            "rdzv_endpoint": f"127.0.0.1:{_free_port()}",
            "overrides": {"checkpoint_every": 2, "save_pipeline": False, **overrides}}


def test_one_flow_run_trains_on_two_nodes_node0_runs_the_flow_node1_the_agent(prefect_harness, tmp_path):
    import json

    import torch

    from model.checkpoint import read_state

    out = tmp_path / "run"  # the shared output dir (a shared volume or bucket on a cluster)
    flow_run, node0, node1 = _run_two_nodes(_params(tmp_path, out), tmp_path)
    assert flow_run.state.type.value == "COMPLETED", (flow_run.state, node0[1][-3000:], node1[1][-3000:])
    assert (node0[0], node1[0]) == (0, 0)
    result = json.loads((out / "launch-result-node0.json").read_text())  # global rank 0's result: on node 0
    assert (result["start_step"], result["steps"]) == (0, 2)
    assert not (out / "launch-result-node1.json").exists()
    step2 = out / "checkpoints" / "step-00000002"
    assert Path(result["checkpoint"]) == step2
    assert read_state(step2)["run"]["num_processes"] == 2  # one world of 2 ranks across the two nodes

    # one flow run's log holds both nodes: node 0's through the flow's logger, node 1's through the agent
    logs = _logs(flow_run.id)
    node1_lines = "\n".join(m for name, m in logs if name == "train.node1")
    node0_lines = "\n".join(m for name, m in logs if name != "train.node1")
    assert "launching node 1 of 2" in node1_lines and "node 1 of 2 finished" in node1_lines
    assert "launching node 0 of 2" in node0_lines and "stage 2 trained steps 0 → 2" in node0_lines
    draws = [dict(re.findall(r"rank (\d)/2 draws (\[.*?\])", text)) for text in (node0_lines, node1_lines)]
    assert set(draws[0]) == {"0"} and set(draws[1]) == {"1"}, logs  # global rank 0 on node 0, which came last
    assert draws[0]["0"] != draws[1]["1"]  # the ranks drew different samples
    rng = [torch.load(step2 / "rng" / f"rank-{r:05d}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert not torch.equal(rng[0], rng[1])


def test_a_node_dying_before_it_joins_fails_the_agent_and_the_flow_run_within_the_pg_timeout(prefect_harness, tmp_path):
    # node 1's rank exits at interpreter start (a broken image or GPU on that node): it never joins the process group
    broken = tmp_path / "broken-node"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import os, sys\nif os.environ.get('RANK') == '1':\n"
        "    sys.stderr.write('node 1 rank dies before joining\\n')\n    raise SystemExit(7)\n")
    params = _params(tmp_path, tmp_path / "failing", dist_timeout_s=10)
    flow_run, node0, node1 = _run_two_nodes(params, tmp_path, {"PYTHONPATH": f"{REPO}{os.pathsep}{broken}"})
    assert node1[0] != 0, node1[1][-3000:]  # the pod fails, and with backoffLimit 0 the Job
    assert flow_run.state.type.value == "FAILED", (flow_run.state, node0[1][-3000:])
    logs = "\n".join(m for _, m in _logs(flow_run.id))
    assert "node 1 rank dies before joining" in logs
    assert "train: torchrun on node 1 of 2 exited with status 1 (a rank failed)" in logs
    assert "train: torchrun on node 0 of 2 exited with status 1 (a rank failed)" in logs
    assert "wait timeout after 10000ms" in logs  # node 0 gave up after dist_timeout_s, not torch's 30 min
