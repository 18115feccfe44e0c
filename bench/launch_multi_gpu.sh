#!/usr/bin/env bash
# Multi-GPU launch of the SmartEdit training recipes on one node (not run in this repository's CI: no GPU there;
# the same recipe path runs on 2 CPU processes in tests/test_train_multiprocess.py).
#
#   bench/launch_multi_gpu.sh fsdp2     RUN.yaml [more recipe args]   # FSDP2 (model/accelerate/fsdp.yaml), no extra install
#   bench/launch_multi_gpu.sh deepspeed RUN.yaml [more recipe args]   # ZeRO-2 as the official code; pip install deepspeed
#   STAGE=1 NPROC=4 bench/launch_multi_gpu.sh fsdp2 stage1.yaml
#
# RUN.yaml holds TrainConfig fields (stage 2 by default, e.g. `preset: 7b-official` for the official two-phase
# schedule). The recipe logs per-step losses, lr and seconds; TensorBoard events go to output_dir/tensorboard.
set -euo pipefail
backend=${1:?usage: $0 fsdp2|deepspeed RUN.yaml [recipe args]}
config=${2:?usage: $0 fsdp2|deepspeed RUN.yaml [recipe args]}
shift 2
stage=${STAGE:-2}
nproc=${NPROC:-$(nvidia-smi --list-gpus | wc -l)}
here=$(cd "$(dirname "$0")/.." && pwd)
case "$backend" in
  fsdp2) accel="$here/model/accelerate/fsdp.yaml" ;;
  deepspeed)
    python -c "import deepspeed" 2>/dev/null || { echo "deepspeed is not installed: pip install deepspeed" >&2; exit 1; }
    accel="$here/model/accelerate/multi_gpu_deepspeed_zero2.yaml" ;;
  *) echo "backend must be fsdp2 or deepspeed, got '$backend'" >&2; exit 2 ;;
esac
cd "$here"
nvidia-smi --query-gpu=index,name,memory.total --format=csv
exec accelerate launch --config_file "$accel" --num_processes "$nproc" \
  -m "model.train_stage${stage}" --config "$config" "$@"
