#!/usr/bin/env bash
# Full-parameter SFT with DeepSpeed ZeRO-3 (training/config/ds_z3_config.json), launched by
# LLaMA-Factory's torchrun launcher (FORCE_TORCHRUN=1) on one or several machines.
#
# Usage: [CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7] bash training/scripts/full_sft.sh [CONFIG] [key=value ...]
#   CONFIG     LLaMA-Factory YAML (default: training/config/full_sft.yaml)
#   key=value  overrides of CONFIG entries
# Several machines: run it on every node with the same NNODES, MASTER_ADDR (node 0's address)
# and MASTER_PORT, and NODE_RANK=0 .. NNODES-1; ZeRO-3 then shards over all GPUs of all nodes:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash training/scripts/full_sft.sh
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash training/scripts/full_sft.sh
# Every node needs the same model, data and code at the same paths, and deepspeed installed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$ROOT/training/config/full_sft.yaml" "$@"
export FORCE_TORCHRUN=1
export NPROC_PER_NODE=${NPROC_PER_NODE:-$num_processes}
export NNODES=${NNODES:-1}
export NODE_RANK=${NODE_RANK:-0}
echo "GPUs: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES ($NPROC_PER_NODE per node)," \
  "node $NODE_RANK of $NNODES, master ${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-auto}"
run llamafactory-cli train "$CONFIG" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
