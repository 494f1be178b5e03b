#!/usr/bin/env bash
# The one prepared GPU run (device tool): about 5-8 minutes on an H100/H200, model build
# included. Writes latency.json/latency.md (and the grammar overhead when xgrammar is there)
# under $OUT. Usage on the device machine, from the repository root:
#   bash benchmarks/gpu_run.sh
set -euo pipefail
OUT=${OUT:-/tmp/bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' \
  | tee -a "$OUT/gpu.txt"
timeout 420 python3 benchmarks/latency.py --config qwen1.5-7b --runs 10 --new-tokens 40 \
  --prompt-tokens 48 --draft-tokens 4 8 --out "$OUT" 2>&1 | tee "$OUT/latency.log"
if python3 -c 'import xgrammar' 2>/dev/null && [ -f benchmarks/grammar_overhead.py ]; then
  timeout 120 python3 benchmarks/grammar_overhead.py --config qwen1.5-7b --device cuda \
    --out "$OUT" 2>&1 | tee "$OUT/grammar.log" || echo "grammar overhead run failed"
fi
