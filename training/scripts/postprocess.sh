#!/usr/bin/env bash
# Split LLaMA-Factory predictions into the seed's output_1 / output_2 lists
# (predict_postprocessed.json beside generated_predictions.jsonl).
#
# Usage: bash training/scripts/postprocess.sh [PREDICT_DIR] [postprocess options ...]
#   PREDICT_DIR  output_dir of predict.sh (default: the one in training/config/lora_predict.yaml),
#                relative to the current directory or to the repository root
#   options      passed to `python3 -m robot_llm_planner.cli postprocess` (run from the
#                repository root: relative paths in them start there), e.g.
#                --dataset training/data/task2_prompt0_manual.json (commands by row index)
#                --instruction "$(python3 training/prompt.py prompt3)"
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
predict_dir=training/output/predict/qwen/lora-task2_prompt0_train-manual
if [[ $# -gt 0 && $1 != -* ]]; then
  predict_dir=$1
  shift
fi
predictions=$predict_dir/generated_predictions.jsonl
if [[ ! -f $predictions && -f $ROOT/$predictions ]]; then
  predictions=$ROOT/$predictions
fi
if [[ ! -f $predictions ]]; then
  echo "$(basename "$0"): no predictions: $predictions" >&2
  exit 2
fi
# Absolute before the cd: the package (robot_llm_planner) is imported from the repository root.
predictions="$(cd "$(dirname "$predictions")" && pwd)/$(basename "$predictions")"
cd "$ROOT"
run python3 -m robot_llm_planner.cli postprocess "$predictions" "$@"
