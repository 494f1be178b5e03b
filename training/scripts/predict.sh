#!/usr/bin/env bash
# Batch prediction with LLaMA-Factory, launched with accelerate on the GPUs of
# CUDA_VISIBLE_DEVICES. Greedy decoding (see do_sample in the config).
#
# Usage: [CUDA_VISIBLE_DEVICES=0] bash training/scripts/predict.sh [CONFIG] [key=value ...]
#   CONFIG     LLaMA-Factory YAML (default: training/config/lora_predict.yaml, base model +
#              LoRA adapter); training/config/full_predict.yaml predicts with the full SFT model
#   key=value  overrides, e.g. predict the test split:
#              eval_dataset=task2_prompt0_test \
#              output_dir=training/output/predict/qwen/lora-task2_prompt0_train-test
# Then: bash training/scripts/postprocess.sh <output_dir>
#       python3 -m robot_llm_planner.cli evaluate <output_dir>/generated_predictions.jsonl
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$ROOT/training/config/lora_predict.yaml" "$@"
# LLaMA-Factory refuses predict_with_generate without its `metrics` extra.
if ! python3 -c 'import jieba, nltk, rouge_chinese' 2>/dev/null; then
  echo "LLaMA-Factory predictions need jieba, nltk and rouge-chinese:" \
    "pip install -r requirements-train.txt" >&2
  exit 2
fi
accelerate_train
