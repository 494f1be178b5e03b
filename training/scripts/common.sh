# shellcheck shell=bash
# Shared by the training scripts (source it; do not run it).
#
# - GPUs: like the seed's `cuda_visible_devices=0,1,2,3`, set CUDA_VISIBLE_DEVICES (default: 0);
#   num_processes is the number of ids in it.
# - parse_args DEFAULT_CONFIG "$@": the first argument is the config unless it is key=value;
#   sets CONFIG (absolute path) and OVERRIDES (key=value entries LLaMA-Factory applies on top of
#   the YAML), then changes to the repository root, where the configs' relative paths start.
# - run CMD...: print the command, then run it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cuda_visible_devices=${CUDA_VISIBLE_DEVICES:-0}
export CUDA_VISIBLE_DEVICES=$cuda_visible_devices
IFS=',' read -r -a _gpu_ids <<< "$cuda_visible_devices"
num_processes=${#_gpu_ids[@]}

parse_args() {
  local default=$1
  shift
  CONFIG=$default
  if [[ $# -gt 0 && $1 != *=* ]]; then
    CONFIG=$1
    shift
  fi
  if [[ ! -f $CONFIG ]]; then
    echo "$(basename "$0"): no such config file: $CONFIG" >&2
    exit 2
  fi
  CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
  OVERRIDES=("$@")
  cd "$ROOT"
}

run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  "$@"
}

# The accelerate config for num_processes GPUs (ACCELERATE_CONFIG overrides the choice).
accelerate_config() {
  if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
    echo "$ACCELERATE_CONFIG"
  elif [[ $num_processes -gt 1 ]]; then
    echo "$ROOT/training/config/accelerate_multi_gpu_config.yaml"
  else
    echo "$ROOT/training/config/accelerate_single_config.yaml"
  fi
}

# accelerate launch LLaMA-Factory's trainer (llamafactory/launcher.py, the seed's src/train.py)
# with CONFIG and OVERRIDES on the GPUs of CUDA_VISIBLE_DEVICES.
accelerate_train() {
  local launcher
  launcher=$(python3 -c 'import llamafactory.launcher as m; print(m.__file__)')
  echo "GPUs: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES ($num_processes process(es))"
  run accelerate launch --config_file "$(accelerate_config)" --num_processes "$num_processes" \
    "$launcher" "$CONFIG" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
}
