"""One node of a multi-node `train` run as its own flow run, in its own process (bench/multinode_netns.sh: one
flow run per node, as on your own machines; the Kubernetes way, one flow run plus node agents, is
tests/test_train_multinode.py): ``python tests/train_node.py '<train parameters as JSON>'`` runs the flow against the
Prefect API in PREFECT_API_URL (or an ephemeral one) and prints one JSON line: the flow run's id, its final state
type and message, and its result when it completed."""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from flows.train import train

    state = train(**json.loads(argv[0]), return_state=True)
    out = {"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value, "message": state.message}
    if state.is_completed():
        out["result"] = state.result()
    sys.stdout.write("NODE-RESULT " + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
