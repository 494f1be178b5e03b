#!/usr/bin/env bash
# LoRA SFT with LLaMA-Factory, launched with accelerate on the GPUs of CUDA_VISIBLE_DEVICES.
#
# Usage: [CUDA_VISIBLE_DEVICES=0,1,2,3] bash training/scripts/lora_sft.sh [CONFIG] [key=value ...]
#   CONFIG     LLaMA-Factory YAML (default: training/config/lora_sft.yaml)
#   key=value  overrides of CONFIG entries, e.g.
#              dataset=task2_prompt3_train eval_dataset=task2_prompt3_validation \
#              output_dir=training/output/sft/qwen/lora-task2_prompt3_train
# One GPU uses accelerate_single_config.yaml, several accelerate_multi_gpu_config.yaml with
# --num_processes = the number of GPUs (ACCELERATE_CONFIG=... picks another).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$ROOT/training/config/lora_sft.yaml" "$@"
accelerate_train
