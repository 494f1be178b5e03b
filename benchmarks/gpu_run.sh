#!/usr/bin/env bash
# The one prepared GPU run (device tool): about 5-7 minutes on an H100/H200, model build
# included; every step is time-bounded (at most ~8 minutes in all). Writes latency.json/.md
# (saved after every phase, so a timeout keeps what ran), the grammar overhead when
# xgrammar is there and the plan confidence's cost (confidence_cost.json/.md), under $OUT. Usage on the device machine, from the repository root
# (carrying .whl, fetched here by benchmarks/gpu_wheels.sh):
#   bash benchmarks/gpu_run.sh
set -uo pipefail
export PYTHONUNBUFFERED=1  # the device tool returns the output's tail: keep it in order
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1  # nothing downloads
OUT=${OUT:-/tmp/bench}
mkdir -p "$OUT"
# Wheels the image lacks (xgrammar for the grammar overhead), fetched beforehand by
# benchmarks/gpu_wheels.sh into .whl/ and carried along: installed into /tmp/site, which only
# the grammar run puts on its path (its pydantic etc. must not shadow the image's elsewhere).
GRAMMAR_PATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
if compgen -G '.whl/*.whl' >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || echo "installing .whl failed: no grammar overhead"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' \
  | tee -a "$OUT/gpu.txt" || true
# recompiles and CUDA-graph skips are logged (latency.json also counts them); the tokens per
# pass are the demo model's on real plans (RESULTS.md: run X, the first 100 test commands)
TORCH_LOGS=recompiles,perf_hints timeout -k 10 330 python3 benchmarks/latency.py \
  --config qwen1.5-7b --runs 10 --new-tokens 40 --prompt-tokens 48 --draft-tokens 4 8 \
  --tokens-per-pass 4=1.996 8=2.225 --int8 --out "$OUT" 2>&1 | tee "$OUT/latency.log" \
  || echo "latency run failed or timed out (see latency.log; latency.json has what ran)"
if PYTHONPATH=$GRAMMAR_PATH python3 -c 'import xgrammar' 2>/dev/null; then
  PYTHONPATH=$GRAMMAR_PATH timeout -k 10 110 python3 benchmarks/grammar_overhead.py \
    --config qwen1.5-7b --device cuda --out "$OUT" 2>&1 | tee "$OUT/grammar.log" \
    || echo "grammar overhead run failed"
else
  echo "no xgrammar here: grammar overhead not measured (run benchmarks/gpu_wheels.sh and" \
    "carry .whl)" | tee "$OUT/grammar.log"
fi
# the plan confidence's per-token log-sum-exp over Qwen1.5-7B's 151,936 logits, bf16, on the GPU
timeout -k 5 45 python3 benchmarks/confidence_cost.py --device cuda --out "$OUT" 2>&1 \
  | tee "$OUT/confidence.log" || echo "confidence cost run failed"
