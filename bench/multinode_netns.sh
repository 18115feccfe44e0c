#!/usr/bin/env bash
# Two-node `train` flow run across a real network interface, on one Linux machine: two network namespaces
# (smn0 = node 0 at 10.23.0.1, smn1 = node 1 at 10.23.0.2) joined by a veth pair; each runs one `train` flow
# process (tests/train_node.py: one flow run per node, as on your own machines) with one gloo CPU rank,
# nnodes=2 and torchrun's static rendezvous on node 0 (10.23.0.1:29400). Node 1 cannot reach node 0's loopback, so the
# rendezvous, the process group and every all-reduce cross the veth. Then the same with node 1's shards unreadable:
# both flow runs must fail. Needs root (ip netns) and iproute2.
#
#   sudo bench/multinode_netns.sh            # PYTHON=/path/to/venv/python to pick the interpreter
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d /tmp/smartedit-netns.XXXXXX)
SERVER=
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  ip netns del smn0 2>/dev/null || true; ip netns del smn1 2>/dev/null || true
}
trap cleanup EXIT
cleanup

ip netns add smn0
ip netns add smn1
ip link add smn-v0 type veth peer name smn-v1
ip link set smn-v0 netns smn0
ip link set smn-v1 netns smn1
ip -n smn0 addr add 10.23.0.1/24 dev smn-v0
ip -n smn1 addr add 10.23.0.2/24 dev smn-v1
for n in 0 1; do ip -n smn$n link set lo up; ip -n smn$n link set smn-v$n up; done
ip -n smn1 route get 10.23.0.1  # node 1 reaches node 0 over the veth
echo "netns: node 0 = 10.23.0.1 (smn0), node 1 = 10.23.0.2 (smn1); 127.0.0.1 of one is not the other's"

export PYTHONPATH="$ROOT:$ROOT/tests" OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PREFECT_HOME=$WORK/prefect PREFECT_API_URL=http://10.23.0.1:4200/api
ip netns exec smn0 "$PY" -m prefect server start --host 10.23.0.1 --port 4200 >"$WORK/server.log" 2>&1 &
SERVER=$!
ip netns exec smn1 "$PY" - <<'PY'  # node 1 reaches the API on node 0
import time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen("http://10.23.0.1:4200/api/health", timeout=5); break
    except OSError:
        time.sleep(1)
else:
    raise SystemExit("no Prefect server at 10.23.0.1:4200")
PY
"$PY" - "$WORK" <<'PY'
import json, shutil, sys
from pathlib import Path
from test_train_data import write_stage2_datasets
work = Path(sys.argv[1])
manifests = [str(p) for p in write_stage2_datasets(work / "shards")]
shutil.copytree(work / "shards", work / "broken")
for tar in (work / "broken").rglob("*.tar"):
    tar.write_bytes(b"")
(work / "manifests.json").write_text(json.dumps(manifests))
PY

node() {  # node <rank> <output dir> <shards dir>
  local params
  params=$("$PY" -c "import json,sys; m=json.load(open('$WORK/manifests.json')); print(json.dumps({
    'preset': 'tiny', 'stage': 2, 'steps': 2, 'output_dir': '$2', 'allow_missing_sources': True,
    'manifests': [x.replace('$WORK/shards', '$3') for x in m],
    'overrides': {'checkpoint_every': 2, 'save_pipeline': False},
    'nnodes': 2, 'nproc_per_node': 1, 'node_rank': $1, 'rdzv_endpoint': '10.23.0.1:29400'}))")
  # gloo picks the address it advertises from this interface (both namespaces share one hostname)
  ip netns exec smn$1 env GLOO_SOCKET_IFNAME=smn-v$1 \
    "$PY" "$ROOT/tests/train_node.py" "$params" >"$2.node$1.log" 2>&1
}

run_pair() {  # run_pair <name> <node-1 shards>
  local out=$WORK/$1 start=$SECONDS
  node 0 "$out" "$WORK/shards" & local p0=$!
  node 1 "$out" "$2" & local p1=$!
  wait $p0 $p1 || true
  echo "== $1 ($((SECONDS - start)) s)"
  for n in 0 1; do
    echo "node $n: $(grep -h '^NODE-RESULT' "$out.node$n.log" | cut -c1-400 || echo "no result, see $out.node$n.log")"
    grep -ho "rank [0-9]/[0-9] draws \[[^]]*\]" "$out.node$n.log" | head -1 | sed "s/^/node $n: /" || true
  done
}

run_pair ok "$WORK/shards"
ls "$WORK/ok/checkpoints"
"$PY" -c "from model.checkpoint import read_state; print('checkpoint num_processes:', read_state('$WORK/ok/checkpoints/step-00000002')['run']['num_processes'])"
ip -n smn1 -s link show smn-v1 | sed -n '1,6p'
run_pair failing "$WORK/broken"
echo "logs: $WORK"
