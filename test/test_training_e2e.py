"""
End to end: LLaMA-Factory trains a model from the shipped configs; the planner serves it.

The ``trained_model`` fixture (conftest.py) trains a tiny Qwen2 with the real
``llamafactory-cli train``: full SFT from random weights, then LoRA, both with configs derived
from training/config. Here the planner serves base + adapter, and LLaMA-Factory's own greedy
predictions (lora_predict.yaml), post-processed into the seed format, agree with it.
"""

import json
import os
import subprocess
import sys

from planner_training.demo_model import predict_config, run_llamafactory, write_config
import pytest
from robot_llm_planner.cli.postprocess import seed_record
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def _yaml(path):
    with open(path, encoding='utf-8') as stream:
        return yaml.safe_load(stream)


@pytest.mark.parametrize('stage,shipped', [('full', 'full_sft.yaml'), ('lora', 'lora_sft.yaml')])
def test_stages_ran_configs_derived_from_the_shipped_ones(trained_model, stage, shipped):
    config = _yaml(os.path.join(trained_model.directory, 'configs', stage + '.yaml'))
    original = _yaml(os.path.join(ROOT, 'training', 'config', shipped))
    for key in ('stage', 'do_train', 'finetuning_type', 'template', 'lr_scheduler_type'):
        assert config[key] == original[key], key
    if stage == 'lora':
        assert config['lora_target'] == original['lora_target']
    assert 'deepspeed' not in config and not config.get('bf16')
    # LLaMA-Factory logged a falling loss
    with open(os.path.join(config['output_dir'], 'trainer_log.jsonl'), encoding='utf-8') as log:
        losses = [entry['loss'] for entry in map(json.loads, log) if 'loss' in entry]
    if stage == 'full':
        assert losses[-1] < losses[0] / 5


def test_the_adapter_is_a_lora_of_the_base(trained_model):
    adapter = _yaml(os.path.join(trained_model.adapter, 'adapter_config.json'))
    assert adapter['peft_type'] == 'LORA'
    assert os.path.realpath(adapter['base_model_name_or_path']) == \
        os.path.realpath(trained_model.base)


def test_planner_answers_training_commands_with_their_labels(trained_model):
    wrong = {command: (trained_model.predictions[command], label)
             for command, label in trained_model.labels.items()
             if command not in trained_model.correct}
    assert len(trained_model.correct) >= 0.75 * len(trained_model.rows), wrong


def test_llamafactory_predictions_agree_with_the_planner(trained_model, tmp_path):
    config = predict_config(
        trained_model.base, trained_model.adapter,
        os.path.join(trained_model.directory, 'data'), 'demo_lora', str(tmp_path / 'predict'),
        max_new_tokens=96)
    assert config['do_predict'] and config['do_sample'] is False
    path = write_config(config, str(tmp_path / 'predict.yaml'))
    run_llamafactory(path, str(tmp_path / 'predict.log'), 'predict', cwd=ROOT)
    predictions = tmp_path / 'predict' / 'generated_predictions.jsonl'
    done = subprocess.run([sys.executable, '-m', 'robot_llm_planner.cli', 'postprocess',
                           str(predictions)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / 'predict' / 'predict_postprocessed.json', encoding='utf-8') as stream:
        records = json.load(stream)
    assert [r['instruction'] for r in records] == [row['input'] for row in trained_model.rows]
    for record in records:
        command = record['instruction']
        assert record == seed_record(command, trained_model.predictions[command]), command
    correct = [r for r in records if trained_model.labels[r['instruction']]
               == trained_model.predictions[r['instruction']]]
    assert correct and all(r['output_2'] for r in correct)


def test_tokens_no_training_row_contains_keep_their_initial_embeddings(trained_model):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    from planner_training.demo_model import Recipe, seen_token_ids
    directory = trained_model.directory
    initial = load_file(os.path.join(directory, 'init', 'model.safetensors'))
    trained = load_file(os.path.join(directory, 'base', 'model.safetensors'))
    before, after = (weights['model.embed_tokens.weight'] for weights in (initial, trained))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(directory, 'init'))
    with open(os.path.join(directory, 'data', 'demo_train.json'), encoding='utf-8') as stream:
        rows = json.load(stream)
    seen = seen_token_ids(tokenizer, rows + trained_model.rows, Recipe().system)
    unseen = [index for index in range(before.shape[0]) if index not in seen]
    assert unseen and len(seen) > 10
    assert torch.equal(after[unseen], before[unseen])  # given back after stage 1
    changed = [index for index in seen if not torch.equal(after[index], before[index])]
    assert len(changed) > 0.9 * len(seen)  # the rest was trained
