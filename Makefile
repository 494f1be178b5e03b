# robot_llm_planner: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
ACTIVATE := source $(VENV)/bin/activate
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
# Nothing may reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: env build test demo clean btcpp-source vllm-env

env: $(STAMP)  ## create .venv with every pinned dependency (idempotent)

# requirements-tokenizer.txt: the dashscope wheel for its qwen.tiktoken alone (cli
# qwen-tokenizer), installed without its API-client dependencies.
$(STAMP): requirements.txt requirements-train.txt requirements-dev.txt requirements-tokenizer.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	$(VENV)/bin/pip install --quiet --no-deps --require-hashes -r requirements-tokenizer.txt
	touch $(STAMP)

# The BehaviorTree.CPP source test/test_bt_xml.py builds (once, cached in .cache/btcpp) to load
# the plans' XML: the sdist of behaviortreepy pinned with its hash (downloaded, not installed).
BTCPP_SOURCE := .cache/btcpp/behaviortreepy-0.1.4.tar.gz

btcpp-source: $(BTCPP_SOURCE)  ## download the pinned BehaviorTree.CPP source for the XML test

$(BTCPP_SOURCE): requirements-btcpp.txt | $(STAMP)
	mkdir -p .cache/btcpp
	$(VENV)/bin/pip download --quiet --no-deps --no-binary :all: --require-hashes \
	  -r requirements-btcpp.txt -d .cache/btcpp
	touch $(BTCPP_SOURCE)

# The vLLM server of the fleet tests and benchmark, in its own environment (it pins another
# torch): every package pinned with its hash, installed without dependency resolution.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

vllm-env: $(VLLM_STAMP)  ## create .venv-vllm with the pinned vLLM CPU build (idempotent)

$(VLLM_STAMP): requirements-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --no-deps --require-hashes -r requirements-vllm.txt
	touch $(VLLM_STAMP)

build: env  ## colcon build into install/ and check colcon sees an ament_python package
	$(ACTIVATE) && colcon list | tee /dev/stderr | grep -q 'robot_llm_planner.*(ros.ament_python)'
	$(ACTIVATE) && colcon build --event-handlers console_direct- summary+

test: build $(BTCPP_SOURCE) $(VLLM_STAMP)  ## build, source the install and run the whole test suite with the linters
	$(ACTIVATE) && source install/setup.bash && \
	  pytest -p no:cacheprovider --durations=30 test

demo: build  ## train the tiny demo model on CPU (cached), serve it over ROS 2, plan samples
	$(ACTIVATE) && source install/setup.bash && PYTHONPATH=training:$$PYTHONPATH python -m planner_training.demo

clean:
	rm -rf build install log .cache
