"""
Shared test fixtures: tiny Qwen2 models, tokenizers and LoRA adapters built locally.

Everything is written with ``save_pretrained`` into a temporary directory and loaded through
the same ``from_pretrained`` paths as the real Qwen1.5-7B. Nothing downloads.
"""

import glob
import json
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')

SAMPLE_COMMANDS = ['帮我拿一瓶水。', '把红色的杯子放到厨房的桌子上', '去客厅', '打开冰箱门',
                   '能不能帮我把遥控器拿给爸爸', '关上卧室的窗户吧']


def project_texts():
    """Return the project's own command and plan texts (training data, skills, prompts)."""
    texts = list(SAMPLE_COMMANDS)
    texts += ['寻找一瓶水；拿起水瓶。寻找物体，一瓶水；拿起物体，水瓶',
              'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.',
              'You are a helpful assistant.']
    with open(os.path.join(ROOT, 'config', 'skills.yaml'), encoding='utf-8') as stream:
        texts += list(yaml.safe_load(stream)['skills'])
    # Only the shipped prompt0 files: a local `make-dataset` must not change the fixtures.
    for path in sorted(glob.glob(os.path.join(ROOT, 'training', 'data', 'task*_prompt0_*.json'))):
        with open(path, encoding='utf-8') as stream:
            rows = json.load(stream)
        if isinstance(rows, list):
            for row in rows[:2000]:
                if isinstance(row, dict):
                    texts += [str(row.get(key, '')) for key in ('instruction', 'input', 'output')]
    return [text for text in texts if text]


def _build(directory, hidden_size, layers, seed):
    from robot_llm_planner.tiny_qwen import build_model, build_tokenizer
    build_tokenizer(project_texts(), str(directory), vocab_size=600)
    build_model(str(directory), str(directory), hidden_size=hidden_size, layers=layers, seed=seed)
    return str(directory)


def _build_adapter(base, directory, seed):
    import torch
    from peft import get_peft_model, LoraConfig
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type='CAUSAL_LM',
                        target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])
    get_peft_model(model, config).save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
    """Return a directory with a random-weight tiny Qwen2 model and its tokenizer."""
    return _build(tmp_path_factory.mktemp('tiny_qwen'), hidden_size=64, layers=2, seed=0)


@pytest.fixture(scope='session')
def tiny_adapter(tiny_model, tmp_path_factory):
    """Return a LoRA adapter (non-zero weights, so it changes outputs) for ``tiny_model``."""
    return _build_adapter(tiny_model, tmp_path_factory.mktemp('tiny_lora'), seed=1)


@pytest.fixture(scope='session')
def other_model(tmp_path_factory):
    """Return a different tiny base (other hidden size): adapters of tiny_model don't fit."""
    return _build(tmp_path_factory.mktemp('other_qwen'), hidden_size=32, layers=2, seed=2)
