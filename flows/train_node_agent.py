"""Node agent: a node > 0 of a multi-node `train` flow run (a pod with JOB_COMPLETION_INDEX > 0 of the Kubernetes
work pool's Indexed Job, deploy/work-pools/kubernetes.json).

Only pod 0 executes the flow run (`prefect flow-run execute`): if every pod did, each would propose its own final
state to the one flow run and the last to finish would win (a node's FAILED overwritten by another's COMPLETED,
node 1's partial result becoming the run's result). Pods > 0 run this instead:

    python -m flows.train_node_agent        # env: PREFECT__FLOW_RUN_ID, JOB_COMPLETION_INDEX, SMARTEDIT_RDZV_ENDPOINT

It reads the flow run's parameters from the Prefect API, resolves them as the flow does (flows/train.py
`resolve_run`, `launch_topology`, `node_launch`: the same config and torchrun command, node rank = the index),
streams torchrun's output lines into that flow run's log, and exits with torchrun's status, so a failed node fails
its pod and (backoffLimit 0) the Job. It proposes no flow-run state. Written by hand: Prefect has no "join a flow run
as a helper process" API; this is the smallest wrapper around its client (read_flow_run, create_logs).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import deque
from datetime import datetime, timezone
from uuid import UUID

logger = logging.getLogger("smartedit.train_node_agent")

# ship log lines to the API in batches: at most this many lines or this many seconds apart
_BATCH_LINES, _BATCH_S = 200, 1.0


class FlowRunLog:
    """Lines into one flow run's log (what the Prefect UI shows under that run), batched."""

    def __init__(self, client, flow_run_id: UUID, name: str):
        self.client, self.flow_run_id, self.name = client, flow_run_id, name
        self.pending: list = []
        self.sent_at = time.monotonic()

    def add(self, message: str, level: int = logging.INFO) -> None:
        from prefect.client.schemas.actions import LogCreate

        self.pending.append(LogCreate(name=self.name, level=level, message=message, flow_run_id=self.flow_run_id,
                                      timestamp=datetime.now(timezone.utc)))
        if len(self.pending) >= _BATCH_LINES or time.monotonic() - self.sent_at >= _BATCH_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.client.create_logs(self.pending)
            self.pending = []
        self.sent_at = time.monotonic()


def run_node(flow_run_id: UUID, node_rank: int) -> int:
    """Train node ``node_rank`` of the flow run ``flow_run_id``; torchrun's exit status."""
    from prefect.client.orchestration import get_client

    from flows.train import launch_topology, node_launch, resolve_run

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        flow_name = client.read_flow(flow_run.flow_id).name
        if flow_name != "train":
            raise SystemExit(f"train_node_agent: flow run {flow_run_id} is a {flow_name!r} run; only `train` runs span "
                             f"nodes: deploy it with the job variable nnodes=1")
        params = dict(flow_run.parameters)
        log = FlowRunLog(client, flow_run_id, f"train.node{node_rank}")
        try:
            nnodes, _, rdzv_endpoint = launch_topology(params.get("nnodes"), node_rank, params.get("rdzv_endpoint"))
            _, config, stage, _, _ = resolve_run(**params)
            nproc = int(params.get("nproc_per_node") or 1)
            cmd, env, _, what = node_launch(config, stage, nproc, nnodes, node_rank, rdzv_endpoint)
        except Exception as exc:  # bad parameters: node 0's flow run fails on them too; say so in the run's log
            log.add(f"node {node_rank}: {exc}", logging.ERROR)
            log.flush()
            raise
        launching = f"launching node {node_rank} of {nnodes}: {' '.join(cmd)}"
        logger.info("%s", launching)
        log.add(launching)
        tail: deque[str] = deque(maxlen=30)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              bufsize=1) as proc:
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                logger.info("%s", line)  # the pod's own log too
                log.add(line)
            status = proc.wait()
        if status != 0:
            log.add(f"train: {what} exited with status {status} (a rank failed); last lines:\n" + "\n".join(tail),
                    logging.ERROR)
        else:
            log.add(f"node {node_rank} of {nnodes} finished; node 0 reports the run")
        log.flush()
    return status


def main() -> int:
    raw_id, raw_index = os.environ.get("PREFECT__FLOW_RUN_ID"), os.environ.get("JOB_COMPLETION_INDEX")
    if not raw_id or raw_index is None:
        raise SystemExit("train_node_agent: needs PREFECT__FLOW_RUN_ID and JOB_COMPLETION_INDEX in the environment "
                         "(the Kubernetes worker and the Indexed Job set them); run it in a train pod with index > 0")
    logging.basicConfig(level=logging.INFO)
    return run_node(UUID(raw_id), int(raw_index))


if __name__ == "__main__":
    sys.exit(main())
