#!/usr/bin/env bash
# Merge a LoRA adapter into its base model and export it (llamafactory-cli export).
#
# Usage: bash training/scripts/merge_lora.sh [CONFIG] [key=value ...]
#   CONFIG     LLaMA-Factory YAML (default: training/config/merge_lora.yaml)
#   key=value  overrides, e.g. adapter_name_or_path=... export_dir=...
# Runs on CPU by default (export_device: cpu); set CUDA_VISIBLE_DEVICES for export_device=auto.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$ROOT/training/config/merge_lora.yaml" "$@"
run llamafactory-cli export "$CONFIG" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
