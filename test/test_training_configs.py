"""The training workflow files: configs accepted by LLaMA-Factory / accelerate, the scripts."""

import glob
import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'training', 'config')
SCRIPTS = os.path.join(ROOT, 'training', 'scripts')
TRAIN_CONFIGS = ('lora_sft.yaml', 'full_sft.yaml', 'lora_predict.yaml', 'full_predict.yaml')
PATH_KEYS = ('model_name_or_path', 'adapter_name_or_path', 'output_dir', 'export_dir')


def _load(name):
    with open(os.path.join(CONFIG, name), encoding='utf-8') as stream:
        return json.load(stream) if name.endswith('.json') else yaml.safe_load(stream)


def _local(config, tmp_path):
    """Return ``config`` with model and output paths in ``tmp_path`` and CPU instead of a GPU."""
    config = dict(config)
    for key in PATH_KEYS:
        if key in config:
            config[key] = str(tmp_path / key)
            os.makedirs(config[key], exist_ok=True)
    return config


def test_every_config_parses():
    names = sorted(os.listdir(CONFIG))
    assert names == sorted(['accelerate_multi_gpu_config.yaml', 'accelerate_single_config.yaml',
                            'ds_z3_config.json', 'full_predict.yaml', 'full_sft.yaml',
                            'lora_predict.yaml', 'lora_sft.yaml', 'merge_lora.yaml'])
    for name in names:
        assert isinstance(_load(name), dict), name


def _strict_parser():
    """LLaMA-Factory's train parser: the dataclasses get_train_args parses into, no extra keys."""
    from llamafactory.hparams import (DataArguments, FinetuningArguments, GeneratingArguments,
                                      ModelArguments, TrainingArguments)
    from transformers import HfArgumentParser
    return HfArgumentParser([ModelArguments, DataArguments, TrainingArguments,
                             FinetuningArguments, GeneratingArguments])


@pytest.mark.parametrize('name', TRAIN_CONFIGS)
def test_train_configs_keys_are_llamafactory_arguments(name, tmp_path):
    config = _local(_load(name), tmp_path)
    # bf16 is for the GPU; this machine checks the keys on CPU. DeepSpeed is not installed
    # here, so its JSON is checked on its own (test_deepspeed_config).
    config['use_cpu'] = True
    config.pop('deepspeed', None)
    _strict_parser().parse_dict(config, allow_extra_keys=False)
    with pytest.raises(ValueError, match='not used by the HfArgumentParser.*lora_rnak'):
        _strict_parser().parse_dict(dict(config, lora_rnak=8), allow_extra_keys=False)


@pytest.mark.parametrize('name', ['lora_sft.yaml', 'full_sft.yaml'])
def test_train_configs_pass_get_train_args(name, tmp_path):
    from llamafactory.hparams import get_train_args
    config = _local(_load(name), tmp_path)
    config['use_cpu'] = True
    config.pop('deepspeed', None)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    assert finetuning_args.stage == 'sft' and training_args.do_train
    assert data_args.template == 'qwen' and training_args.bf16


def test_predict_config_is_greedy_and_complete(tmp_path):
    config = _local(_load('lora_predict.yaml'), tmp_path)
    config['use_cpu'] = True
    model_args, data_args, training_args, finetuning_args, generating_args = \
        _strict_parser().parse_dict(config, allow_extra_keys=False)
    assert generating_args.do_sample is False
    assert training_args.do_predict and training_args.predict_with_generate
    assert data_args.eval_dataset == ['task2_prompt0_manual']
    assert model_args.adapter_name_or_path and finetuning_args.finetuning_type == 'lora'


def _cli_train_args(monkeypatch, config, *overrides):
    """Parse ``llamafactory-cli train CONFIG key=value ...`` as the CLI does (no model loaded)."""
    from llamafactory.hparams import get_train_args
    monkeypatch.setattr(sys, 'argv', ['llamafactory-cli', os.path.join(CONFIG, config),
                                      'use_cpu=true', *overrides])
    return get_train_args()


def test_full_predict_config_passes_the_cli_parser(tmp_path, monkeypatch):
    model, output = str(tmp_path / 'full'), str(tmp_path / 'predict')
    os.makedirs(model)
    model_args, data_args, training_args, finetuning_args, generating_args = _cli_train_args(
        monkeypatch, 'full_predict.yaml', 'model_name_or_path=' + model, 'output_dir=' + output)
    assert finetuning_args.finetuning_type == 'full' and model_args.adapter_name_or_path is None
    assert model_args.model_name_or_path == model and training_args.output_dir == output
    assert training_args.do_predict and training_args.predict_with_generate
    assert not training_args.do_train and generating_args.do_sample is False
    assert data_args.eval_dataset == ['task2_prompt0_manual']
    # What the README said before: lora_predict.yaml with finetuning_type=full keeps its adapter.
    with pytest.raises(ValueError, match='Adapter is only valid for the LoRA method'):
        _cli_train_args(monkeypatch, 'lora_predict.yaml', 'finetuning_type=full',
                        'model_name_or_path=' + model, 'output_dir=' + output)


def test_full_predict_differs_from_lora_predict_only_in_the_model():
    lora, full = _load('lora_predict.yaml'), _load('full_predict.yaml')
    assert full['model_name_or_path'] == _load('full_sft.yaml')['output_dir']
    assert full['output_dir'] != lora['output_dir']
    assert full['finetuning_type'] == 'full' and 'adapter_name_or_path' not in full
    changed = {'model_name_or_path', 'adapter_name_or_path', 'finetuning_type', 'output_dir'}
    assert {k: v for k, v in full.items() if k not in changed} == \
        {k: v for k, v in lora.items() if k not in changed}


def _steps_per_run(config, gpus, train_rows):
    batch = config['per_device_train_batch_size'] * config['gradient_accumulation_steps'] * gpus
    return int(config['num_train_epochs'] * -(-train_rows // batch))


@pytest.mark.parametrize('name,gpus', [('lora_sft.yaml', 1), ('lora_sft.yaml', 4),
                                       ('full_sft.yaml', 2), ('full_sft.yaml', 8)])
def test_sft_configs_validate_several_times(name, gpus):
    config = _load(name)
    with open(os.path.join(ROOT, 'training', 'data', 'dataset_info.json'),
              encoding='utf-8') as stream:
        train_file = json.load(stream)[config['dataset']]['file_name']
    with open(os.path.join(ROOT, 'training', 'data', train_file), encoding='utf-8') as stream:
        rows = len(json.load(stream))
    assert config['eval_strategy'] == 'steps'
    assert _steps_per_run(config, gpus, rows) // config['eval_steps'] >= 3
    assert config['save_total_limit'] >= 1


def test_full_sft_checkpoints_rarely():
    full, lora = _load('full_sft.yaml'), _load('lora_sft.yaml')
    assert full['save_steps'] > full['eval_steps'] and full['save_total_limit'] == 1
    assert full['save_only_model'] is True
    assert lora['save_steps'] == lora['eval_steps']


def test_merge_config_passes_get_infer_args(tmp_path):
    from llamafactory.hparams import get_infer_args
    config = _local(_load('merge_lora.yaml'), tmp_path)
    model_args, _, finetuning_args, _ = get_infer_args(config)
    assert model_args.export_dir == config['export_dir'] and model_args.export_size == 5
    with pytest.raises(ValueError, match='export_dri'):
        get_infer_args(dict(config, export_dri='x'))


def test_configs_fit_together():
    with open(os.path.join(ROOT, 'training', 'data', 'dataset_info.json'),
              encoding='utf-8') as stream:
        registered = json.load(stream)
    lora, full = _load('lora_sft.yaml'), _load('full_sft.yaml')
    predict, merge = _load('lora_predict.yaml'), _load('merge_lora.yaml')
    for config in (lora, full, predict, _load('full_predict.yaml')):
        assert config['dataset_dir'] == './training/data'
        for key in ('dataset', 'eval_dataset'):
            if key in config:
                assert config[key] in registered, config[key]
    for config in (full, predict, merge):
        assert config['model_name_or_path'] == lora['model_name_or_path']
    assert predict['adapter_name_or_path'] == merge['adapter_name_or_path'] == lora['output_dir']
    assert os.path.isfile(os.path.join(ROOT, full['deepspeed']))


def test_deepspeed_config():
    config = _load('ds_z3_config.json')
    assert config['zero_optimization']['stage'] == 3
    # "auto" lets the HF Trainer fill these from the LLaMA-Factory config.
    for key in ('train_batch_size', 'train_micro_batch_size_per_gpu',
                'gradient_accumulation_steps'):
        assert config[key] == 'auto'
    assert config['bf16']['enabled'] == 'auto'
    assert config['zero_optimization']['stage3_gather_16bit_weights_on_model_save'] is True


@pytest.mark.parametrize('name,processes,distributed', [
    ('accelerate_single_config.yaml', 1, 'NO'),
    ('accelerate_multi_gpu_config.yaml', 4, 'MULTI_GPU'),
])
def test_accelerate_configs_load_with_accelerate(name, processes, distributed):
    from accelerate.commands.config.config_args import load_config_from_file
    config = load_config_from_file(os.path.join(CONFIG, name))  # refuses unknown keys
    assert config.num_processes == processes
    assert config.distributed_type.value == distributed


def _scripts():
    return sorted(glob.glob(os.path.join(SCRIPTS, '*.sh')))


def test_scripts_are_valid_bash_with_strict_mode():
    names = [os.path.basename(path) for path in _scripts()]
    assert names == ['common.sh', 'download_model.sh', 'full_sft.sh', 'lora_sft.sh',
                     'merge_lora.sh', 'postprocess.sh', 'predict.sh']
    for path in _scripts():
        result = subprocess.run(['bash', '-n', path], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        if not path.endswith('common.sh'):
            with open(path, encoding='utf-8') as stream:
                assert 'set -euo pipefail' in stream.read(), path
            assert os.stat(path).st_mode & stat.S_IXUSR, path


def _fake_tools(tmp_path):
    """Put stand-ins for the launchers and hub clients first in PATH; they print their call."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    for tool in ('accelerate', 'llamafactory-cli', 'hf', 'modelscope'):
        path = bin_dir / tool
        path.write_text('#!/usr/bin/env bash\necho "%s $* FORCE_TORCHRUN=${FORCE_TORCHRUN:-} '
                        'NPROC_PER_NODE=${NPROC_PER_NODE:-} PWD=$PWD"\n' % tool)
        path.chmod(0o755)
    return str(bin_dir) + os.pathsep + os.environ['PATH']


def _script(tmp_path, name, *args, **env):
    environment = dict(os.environ, PATH=_fake_tools(tmp_path), **env)
    return subprocess.run(['bash', os.path.join(SCRIPTS, name), *args], capture_output=True,
                          text=True, env=environment, cwd=str(tmp_path))


def test_lora_sft_picks_accelerate_config_by_gpu_count(tmp_path):
    four = _script(tmp_path, 'lora_sft.sh', 'dataset=task2_prompt3_train',
                   CUDA_VISIBLE_DEVICES='0,1,2,3')
    assert four.returncode == 0, four.stderr
    assert '--num_processes 4' in four.stdout
    assert 'accelerate_multi_gpu_config.yaml' in four.stdout
    assert 'launcher.py %s dataset=task2_prompt3_train' % os.path.join(
        CONFIG, 'lora_sft.yaml') in four.stdout
    assert 'PWD=%s' % ROOT in four.stdout  # configs' relative paths start at the root
    one = _script(tmp_path, 'lora_sft.sh', CUDA_VISIBLE_DEVICES='2')
    assert one.returncode == 0, one.stderr
    assert '--num_processes 1' in one.stdout and 'accelerate_single_config.yaml' in one.stdout


def test_full_sft_uses_torchrun_on_every_gpu(tmp_path):
    result = _script(tmp_path, 'full_sft.sh', CUDA_VISIBLE_DEVICES='0,1')
    assert result.returncode == 0, result.stderr
    assert 'llamafactory-cli train %s' % os.path.join(CONFIG, 'full_sft.yaml') in result.stdout
    assert 'FORCE_TORCHRUN=1 NPROC_PER_NODE=2' in result.stdout


def test_merge_script_and_a_missing_config(tmp_path):
    result = _script(tmp_path, 'merge_lora.sh', 'export_dir=/tmp/x')
    assert result.returncode == 0, result.stderr
    assert 'llamafactory-cli export %s export_dir=/tmp/x' % os.path.join(
        CONFIG, 'merge_lora.yaml') in result.stdout
    missing = _script(tmp_path, 'lora_sft.sh', 'nope.yaml')
    assert missing.returncode == 2 and 'no such config file: nope.yaml' in missing.stderr


def test_predict_script_takes_the_full_predict_config(tmp_path):
    # predict.sh checks LLaMA-Factory's metrics extra first: requirements-train.txt pins
    # these three, so a missing one is an error of the environment, not a reason to skip
    import jieba  # noqa: F401
    import nltk  # noqa: F401
    import rouge_chinese  # noqa: F401
    config = os.path.join(CONFIG, 'full_predict.yaml')
    result = _script(tmp_path, 'predict.sh', config, 'eval_dataset=task2_prompt0_test')
    assert result.returncode == 0, result.stderr
    assert 'launcher.py %s eval_dataset=task2_prompt0_test' % config in result.stdout


def test_postprocess_script_runs_outside_the_repository(tmp_path):
    predict = tmp_path / 'predict'
    predict.mkdir()
    (predict / 'generated_predictions.jsonl').write_text(json.dumps(
        {'prompt': '<|im_start|>user\n去客厅<|im_end|>\n', 'predict': '去客厅。移动到，客厅',
         'label': ''}, ensure_ascii=False) + '\n', encoding='utf-8')
    # The package is found only from the repository root (no PYTHONPATH, not installed).
    environment = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run(['bash', os.path.join(SCRIPTS, 'postprocess.sh'), 'predict'],
                            capture_output=True, text=True, env=environment, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    with open(predict / 'predict_postprocessed.json', encoding='utf-8') as stream:
        assert json.load(stream) == [{'instruction': '去客厅', 'output_1': ['去客厅'],
                                      'output_2': ['移动到, 客厅']}]
    missing = subprocess.run(['bash', os.path.join(SCRIPTS, 'postprocess.sh'), 'nowhere'],
                             capture_output=True, text=True, env=environment,
                             cwd=str(tmp_path))
    assert missing.returncode == 2 and 'no predictions: nowhere/' in missing.stderr


def test_download_script_uses_the_chosen_hub(tmp_path):
    target = str(tmp_path / 'model')
    hf = _script(tmp_path, 'download_model.sh', target)
    assert hf.returncode == 0, hf.stderr
    assert 'hf download Qwen/Qwen1.5-7B --local-dir %s' % target in hf.stdout
    ms = _script(tmp_path, 'download_model.sh', target, 'qwen/Qwen1.5-7B', SOURCE='modelscope')
    assert ms.returncode == 0, ms.stderr
    assert 'modelscope download --model qwen/Qwen1.5-7B --local_dir %s' % target in ms.stdout
    bad = _script(tmp_path, 'download_model.sh', target, SOURCE='ftp')
    assert bad.returncode == 2 and 'SOURCE must be huggingface or modelscope' in bad.stderr
