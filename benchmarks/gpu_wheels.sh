#!/usr/bin/env bash
# Fetch, on this machine, the wheels that benchmarks/gpu_run.sh needs on the GPU machine and
# that its image lacks: xgrammar (requirements.txt's version) and what it needs beyond torch,
# transformers, numpy and triton (typing-extensions too: pydantic-core needs a recent one, and
# these wheels come first on PYTHONPATH there), and in .whl/dashscope/ the dashscope wheel
# (requirements-tokenizer.txt, hash-checked), from whose qwen.tiktoken gpu_run.sh builds
# Qwen1.5's tokenizer there (not installed). The GPU machine reaches no package index, so they
# travel with the working tree in the git-ignored folder .whl/ (about 10 MB):
#   bash benchmarks/gpu_wheels.sh      # here, once
#   then on the GPU machine, with .whl carried: bash benchmarks/gpu_run.sh
# PYTHON_VERSION is the GPU machine's Python (3.12 in the lent image).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
XGRAMMAR=$(grep -E '^xgrammar==' requirements.txt | cut -d' ' -f1)
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$PYTHON_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "$XGRAMMAR" apache-tvm-ffi==0.1.15.post2 pydantic==2.12.3 pydantic_core==2.41.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
python3 -m pip download --quiet --no-deps --require-hashes -r requirements-tokenizer.txt \
  -d .whl/dashscope
ls -l .whl .whl/dashscope
