"""
Shared test fixtures: tiny Qwen2 models, tokenizers and LoRA adapters built locally.

Everything is written with ``save_pretrained`` into a temporary directory and loaded through
the same ``from_pretrained`` paths as the real Qwen1.5-7B. Nothing downloads.
"""

import glob
import json
import os
import subprocess
import sys
import urllib.request

from doubles import FakeOpenAIServer
from helpers import free_port, wait_until
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The training side is not installed (a robot never gets it): import it from the checkout.
TRAINING = os.path.join(ROOT, 'training')
sys.path.insert(0, TRAINING)
os.environ['PYTHONPATH'] = os.pathsep.join(
    [TRAINING] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
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
    from planner_training.tiny_qwen import build_model, build_tokenizer
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


# Qwen1.5's vocabulary: 151,646 tokens, an embedding (and logits) of 151,936 rows.
QWEN_VOCAB_ROWS = 151936


@pytest.fixture(scope='session')
def qwen_tokenizer(tmp_path_factory):
    """
    Return a directory with Qwen1.5's real tokenizer, written by `cli qwen-tokenizer`.

    It is built from the dashscope package's qwen.tiktoken, which `make env` installs.
    """
    directory = str(tmp_path_factory.mktemp('qwen_tokenizer'))
    result = subprocess.run([sys.executable, '-m', 'robot_llm_planner.cli', 'qwen-tokenizer',
                             directory], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail('cli qwen-tokenizer failed:\n' + result.stderr[-3000:])
    return directory


@pytest.fixture(scope='session')
def qwen_vocab_model(qwen_tokenizer, tmp_path_factory):
    """Return a random-weight tiny Qwen2 with Qwen1.5's tokenizer and 151,936-row embedding."""
    from planner_training.tiny_qwen import build_model
    directory = str(tmp_path_factory.mktemp('qwen_vocab_model'))
    # tiny_model's shape; with this seed its constrained plans vary (23 distinct of the fifty
    # commands of test_grammar) and use English, byte and multi-character tokens
    build_model(qwen_tokenizer, directory, hidden_size=64, layers=2, seed=0,
                vocab_size=QWEN_VOCAB_ROWS)
    return directory


# The end-to-end training test's model: small enough to train in about a minute on 2 CPU
# cores, trained with the real `llamafactory-cli train` (full SFT from random weights, then
# LoRA) on short commands of the shipped training split, which it learns by heart.
TRAINED_MODEL_RECIPE = {
    'charset': 'data', 'hidden_size': 64, 'layers': 2, 'heads': 4, 'kv_heads': 2,
    'intermediate_size': 256, 'train_rows': 24, 'max_label_chars': 32, 'extra_rows': 0,
    'full_epochs': 60.0, 'full_learning_rate': 1.0e-2, 'full_batch_size': 8,
    'full_warmup': 0.05, 'lora_rows': 0, 'lora_epochs': 5.0, 'lora_learning_rate': 2.0e-3,
    'lora_batch_size': 8}


class TrainedModel:
    """A model trained by LLaMA-Factory in this test run, served by the planner."""

    def __init__(self, model, rows, predictions):
        self.base = model.base
        self.adapter = model.adapter
        self.directory = model.directory
        self.info = model.info
        self.rows = rows                # the training rows {'input', 'output'}
        self.predictions = predictions  # {command: the planner's raw output (greedy)}
        # the training commands the planner answers with exactly their label
        self.correct = [row['input'] for row in rows
                        if predictions[row['input']] == row['output']]
        self.labels = {row['input']: row['output'] for row in rows}


@pytest.fixture(scope='session')
def trained_model(tmp_path_factory):
    """
    Return a :class:`TrainedModel`: base + LoRA adapter trained with llamafactory-cli train.

    ``correct`` lists the training commands it answers with their labels (most of them);
    a test of a decoding feature can check that it leaves those answers unchanged.
    """
    from planner_training.demo_model import load_planner, plan_rows, Recipe, train_demo_model
    model = train_demo_model(Recipe(**TRAINED_MODEL_RECIPE),
                             str(tmp_path_factory.mktemp('trained_model')), echo=None)
    with open(os.path.join(model.directory, 'data', 'demo_lora.json'),
              encoding='utf-8') as stream:
        rows = json.load(stream)
    # One command per call: the same unpadded prompts as LLaMA-Factory's predictions.
    planned = plan_rows(load_planner(model), rows, batch_size=1)
    return TrainedModel(model, rows, {row['command']: row['predict'] for row in planned})


# The API key `llamafactory-cli api` is started with (its API_KEY variable).
API_KEY = 'sk-test-secret-0123456789'


@pytest.fixture(scope='session')
def llamafactory_api(tiny_model, tiny_adapter, tmp_path_factory):
    """Start `llamafactory-cli api` on 127.0.0.1 with the tiny model + adapter; yield its URL."""
    port = free_port()
    env = dict(os.environ, API_HOST='127.0.0.1', API_PORT=str(port), API_KEY=API_KEY,
               CUDA_VISIBLE_DEVICES='')
    log = tmp_path_factory.mktemp('api') / 'api.log'
    cli = os.path.join(os.path.dirname(sys.executable), 'llamafactory-cli')
    with open(log, 'w') as stream:
        process = subprocess.Popen(
            [cli, 'api', '--model_name_or_path', tiny_model, '--adapter_name_or_path',
             tiny_adapter, '--template', 'qwen', '--finetuning_type', 'lora',
             '--infer_backend', 'huggingface'], env=env, stdout=stream, stderr=subprocess.STDOUT)
    url = 'http://127.0.0.1:%d/v1' % port

    def serving():
        if process.poll() is not None:
            pytest.fail('llamafactory-cli api exited:\n' + log.read_text()[-3000:])
        try:
            request = urllib.request.Request(url + '/models',
                                             headers={'Authorization': 'Bearer ' + API_KEY})
            urllib.request.urlopen(request, timeout=2).read()
            return True
        except OSError:
            return False

    try:
        wait_until(serving, 180, lambda: 'llamafactory-cli api did not start:\n'
                   + log.read_text()[-3000:])
    except BaseException:
        process.kill()
        raise
    yield url
    process.terminate()
    process.wait(timeout=30)


# The API key the vLLM server is started with, and the variable the planner reads it from.
VLLM_API_KEY = 'sk-vllm-fleet-secret-5f3a9c'
VLLM_KEY_ENV = 'PLANNER_VLLM_KEY'
# LLaMA-Factory 0.9.2's default system prompt in place of the system message: a server with
# this chat template renders another prompt than the planner's (the test of that check).
OTHER_CHAT_TEMPLATE = (
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|im_start|>user\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


class VllmModel:
    """A tiny base model vLLM's CPU attention runs, two LoRA adapters and chat templates."""

    def __init__(self, directory):
        from planner_training.tiny_qwen import build_model, build_tokenizer
        from planner_training.vllm_server import TRAINING_CHAT_TEMPLATE
        self.base = str(directory / 'base')
        build_tokenizer(project_texts(), self.base, vocab_size=600)
        # head size 32 (vLLM's CPU attention has no kernel for tiny_model's 16)
        build_model(self.base, self.base, hidden_size=64, layers=2, heads=2, kv_heads=1,
                    max_positions=2048, seed=0)
        self.adapters = {name: _build_adapter(self.base, directory / name, seed)
                         for name, seed in (('robot_a', 1), ('robot_b', 2))}
        self.training_template = str(directory / 'training.jinja')
        self.other_template = str(directory / 'other.jinja')
        for path, template in ((self.training_template, TRAINING_CHAT_TEMPLATE),
                               (self.other_template, OTHER_CHAT_TEMPLATE)):
            with open(path, 'w', encoding='utf-8') as stream:
                stream.write(template)


@pytest.fixture(scope='session')
def vllm_model(tmp_path_factory):
    """Return a :class:`VllmModel` (random weights; adapters robot_a and robot_b)."""
    return VllmModel(tmp_path_factory.mktemp('vllm_model'))


@pytest.fixture(scope='session')
def vllm_server(vllm_model, tmp_path_factory):
    """
    Yield a real vLLM server (.venv-vllm, `make vllm-env`) serving both adapters.

    It wants :data:`VLLM_API_KEY` and renders chat messages with the training template.
    """
    from planner_training.vllm_server import VllmServer
    log = str(tmp_path_factory.mktemp('vllm') / 'vllm.log')
    server = VllmServer(vllm_model.base, vllm_model.adapters, log, api_key=VLLM_API_KEY,
                        chat_template=vllm_model.training_template)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def vllm_key(monkeypatch):
    """Return the name of an environment variable that holds the vLLM server's key."""
    monkeypatch.setenv(VLLM_KEY_ENV, VLLM_API_KEY)
    return VLLM_KEY_ENV


@pytest.fixture
def api_key(monkeypatch):
    """Return the name of an environment variable that holds the API server's key."""
    monkeypatch.setenv('PLANNER_TEST_KEY', API_KEY)
    return 'PLANNER_TEST_KEY'


@pytest.fixture
def ros():
    """Yield a ROS test domain (test/planner_harness.py) on a fresh ROS_DOMAIN_ID for one test."""
    from planner_harness import ros_domain  # rclpy only for the tests that use ROS
    with ros_domain() as domain:
        yield domain


@pytest.fixture
def server():
    """Yield an OpenAI-compatible FakeOpenAIServer (test/doubles.py), closed afterwards."""
    fake = FakeOpenAIServer()
    yield fake
    fake.close()
