#!/usr/bin/env bash
# Download the base model (default Qwen/Qwen1.5-7B, ~15 GB) into a folder.
#
# Usage: bash training/scripts/download_model.sh [TARGET_DIR] [MODEL_ID]
#   TARGET_DIR  where to put it (default: training/models/Qwen1.5-7B, what the configs expect)
#   MODEL_ID    hub id (default: Qwen/Qwen1.5-7B)
# Environment:
#   SOURCE=huggingface (default)  Hugging Face with `hf download` (or the older huggingface-cli);
#                                 set HF_ENDPOINT=https://hf-mirror.com to use a mirror
#   SOURCE=modelscope             the ModelScope mirror with `modelscope download`
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

target=${1:-$ROOT/training/models/Qwen1.5-7B}
model=${2:-Qwen/Qwen1.5-7B}
source_hub=${SOURCE:-huggingface}
mkdir -p "$target"

case $source_hub in
  huggingface)
    # `make` sets HF_HUB_OFFLINE=1 for the tests; a download must be online.
    export HF_HUB_OFFLINE=0
    if command -v hf >/dev/null; then
      run hf download "$model" --local-dir "$target"
    elif command -v huggingface-cli >/dev/null; then
      run huggingface-cli download "$model" --local-dir "$target"
    else
      echo "neither hf nor huggingface-cli found: pip install -U huggingface_hub" >&2
      exit 2
    fi
    ;;
  modelscope)
    if ! command -v modelscope >/dev/null; then
      echo "modelscope not found: pip install modelscope" >&2
      exit 2
    fi
    run modelscope download --model "$model" --local_dir "$target"
    ;;
  *)
    echo "SOURCE must be huggingface or modelscope, got: $source_hub" >&2
    exit 2
    ;;
esac
echo "model in $target (set model_name_or_path / planner_node model.path to it)"
