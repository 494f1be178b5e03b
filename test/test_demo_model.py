"""The demo model's recipe: tokenizer, training rows, derived LLaMA-Factory configs, cache."""

import json
import os
import sys

from llamafactory.data.converter import AlpacaDatasetConverter
from llamafactory.data.parser import DatasetAttr
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import (DataArguments, FinetuningArguments, GeneratingArguments,
                                  ModelArguments, TrainingArguments)
from planner_training import dataset, demo_model
from planner_training.demo_model import Recipe
import pytest
from robot_llm_planner.core.plan import NO_TASK, parse_plan
from robot_llm_planner.core.prompt import PromptBuilder
from transformers import AutoTokenizer, HfArgumentParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ['帮我拿一瓶水。', '劳驾把雨伞搁到鞋柜里，好吗？', '把红色的杯子放到厨房的桌子上']


@pytest.fixture(scope='module')
def rows():
    return demo_model.training_rows(Recipe(extra_rows=600), ROOT)


@pytest.fixture(scope='module', params=['data', 'gb2312'])
def tokenizer_dir(request, rows, tmp_path_factory):
    from planner_training.tiny_qwen import build_tokenizer
    directory = str(tmp_path_factory.mktemp('demo_tokenizer_' + request.param))
    texts = demo_model.tokenizer_texts(rows, Recipe(charset=request.param))
    build_tokenizer(texts, directory, vocab_size=100000, split_han=True)
    return directory


def _han(text):
    return [char for char in text if '\u4e00' <= char <= '\u9fff']


def test_every_trained_han_character_is_one_token(tokenizer_dir, rows):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for row in rows[:300] + demo_model.split_rows('manual', ROOT):
        for text in (row['input'], row['output']):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.decode(ids) == text
            # a plan copies the command's characters one for one: no token spans two
            pieces = [tokenizer.decode([i]) for i in ids]
            assert all(len(_han(piece)) <= 1 for piece in pieces), pieces
            if 'gb2312' in tokenizer_dir:
                assert len(ids) == len(text)


def test_the_system_prompt_stays_short(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(PromptBuilder().token_ids(tokenizer, '')) <= 30


def test_prompt_ids_equal_llamafactory_qwen_template(tokenizer_dir):
    ours = AutoTokenizer.from_pretrained(tokenizer_dir)
    theirs = AutoTokenizer.from_pretrained(tokenizer_dir)
    template = get_template_and_fix_tokenizer(theirs, DataArguments(template='qwen'))
    converter = AlpacaDatasetConverter(DatasetAttr('file', 'commands'), DataArguments())
    for command in COMMANDS:
        example = converter({'instruction': '', 'input': command, 'output': ''})
        messages = example['_prompt'] + [{'role': 'assistant', 'content': ''}]
        expected, _ = template.encode_oneturn(theirs, messages, None)
        assert PromptBuilder().token_ids(ours, command) == expected


def test_training_rows_never_use_evaluation_commands(rows):
    key = dataset.command_key
    held = set()
    for split in ('validation', 'test'):
        held |= {key(row['input']) for row in demo_model.split_rows(split, ROOT)}
    assert not {key(row['input']) for row in rows} & held
    assert len({key(row['input']) for row in rows}) == len(rows)
    shipped = demo_model.split_rows('train', ROOT)
    assert len(rows) > len(shipped)
    assert {row['input'] for row in shipped} <= {row['input'] for row in rows}
    # the extra rows avoid the manual commands too (a few of which the shipped split has)
    manual = {key(row['input']) for row in demo_model.split_rows('manual', ROOT)}
    shipped_keys = {key(row['input']) for row in shipped}
    assert not {key(row['input']) for row in rows} & manual - shipped_keys


def test_extra_rows_keep_labels_consistent_and_no_heldout_item(rows):
    with open(os.path.join(ROOT, 'training', 'data', 'dataset_meta.json'),
              encoding='utf-8') as stream:
        heldout = json.load(stream)['heldout']
    words = heldout['objects'] + heldout['rooms'] + heldout['furniture']
    shipped_chars = set()
    for row in demo_model.split_rows('train', ROOT):
        shipped_chars.update(row['input'] + row['output'])
    substituted = no_task = 0
    for row in rows:
        plan = parse_plan(row['output'])
        no_task += plan.no_task
        assert plan.ok or plan.no_task, row
        for step in plan.steps:  # names are still copied from the command
            assert step.target in row['input'] and step.location in row['input'], row
        assert not any(word in row['input'] for word in words), row
        substituted += not set(row['input']) <= shipped_chars
    assert substituted > 100
    assert len(rows) // 25 < no_task < len(rows) // 15  # about one in 21 has no task


def test_extra_no_task_sets_the_share_of_generated_commands_without_a_task():
    shipped = sum(row['output'] == NO_TASK for row in demo_model.split_rows('train', ROOT))

    def generated(share):
        rows = demo_model.training_rows(Recipe(extra_rows=600, extra_no_task=share), ROOT)
        return sum(row['output'] == NO_TASK for row in rows) - shipped

    every, half, none = generated(1.0), generated(0.5), generated(0.0)
    assert shipped == 150 and every >= 20 and none == 0
    assert abs(half - every / 2) <= 1


def test_fresh_share_sets_how_many_random_name_characters_are_new():
    shipped_chars = set()
    for row in demo_model.split_rows('train', ROOT):
        shipped_chars.update(row['input'] + row['output'])

    def new_characters(share):
        rows = demo_model.training_rows(Recipe(extra_rows=600, fresh_share=share), ROOT)
        return sum(char not in shipped_chars for row in rows for char in row['input'])

    none, half, every = new_characters(0.0), new_characters(0.5), new_characters(1.0)
    assert none < half < every
    assert none < every / 10  # with 0.0 the random names reuse the names' characters


def test_verb_substitution_swaps_only_frame_verbs_and_keeps_every_plan(rows):
    from planner_training import vocabulary
    plain = demo_model.training_rows(Recipe(extra_rows=600, verb_substitution=0.0), ROOT)
    swapped = demo_model.training_rows(Recipe(extra_rows=600, verb_substitution=1.0), ROOT)
    outputs = [row['output'] for row in plain]
    assert [row['output'] for row in swapped] == outputs == [row['output'] for row in rows]
    heldout_chars = set(''.join(vocabulary.HELDOUT_OBJECTS + vocabulary.HELDOUT_ROOMS +
                                vocabulary.HELDOUT_FURNITURE + ('取', '搁', '带', '前往')))
    changed = 0
    for before, after in zip(plain, swapped):
        old, new = before['input'], after['input']
        assert len(old) == len(new)
        differences = [i for i in range(len(old)) if old[i] != new[i]]
        changed += bool(differences)
        for i in differences:
            clause = old[:i].split('，')[-1]
            assert old[i] in '放收拿递送' and old[i + 1] in '到在给过', (old, new)
            assert '把' in clause or '将' in clause, (old, new)
            assert new[i] not in heldout_chars, (old, new)
    assert changed > 100
    # the default (0.5) swaps some of them: fewer commands differ from the plain rows
    assert 0 < sum(a['input'] != b['input'] for a, b in zip(plain, rows)) < changed


@pytest.mark.parametrize('planted', [False, True])
def test_the_initial_model_copies_only_with_the_copy_circuit(planted, rows, tmp_path):
    from planner_training.copy_circuit import copy_accuracy
    from transformers import Qwen2ForCausalLM
    recipe = Recipe(copy_circuit=planted, rope_theta=1.0e6 if planted else 10000.0)
    folder = demo_model.build_initial_model(
        recipe, demo_model.tokenizer_texts(rows[:300], recipe), str(tmp_path))
    model = Qwen2ForCausalLM.from_pretrained(folder)
    assert model.config.rope_parameters['rope_theta'] == recipe.rope_theta
    accuracy = copy_accuracy(model)
    assert accuracy > 0.9 if planted else accuracy < 0.05


def _strict_parser():
    return HfArgumentParser([ModelArguments, DataArguments, TrainingArguments,
                             FinetuningArguments, GeneratingArguments])


def test_stage_configs_are_llamafactory_arguments_for_cpu(tmp_path):
    configs = demo_model.stage_configs(Recipe(), str(tmp_path))
    for name, shipped in (('full', 'full_sft.yaml'), ('lora', 'lora_sft.yaml')):
        config = configs[name]
        original = demo_model.shipped_config(shipped)
        assert config['finetuning_type'] == original['finetuning_type']
        assert config['template'] == original['template'] == 'qwen'
        assert 'deepspeed' not in config and 'bf16' not in config
        assert config['disable_gradient_checkpointing'] is True
        assert 'eval_dataset' not in config
        _strict_parser().parse_dict(dict(config, use_cpu=True), allow_extra_keys=False)
    assert configs['lora']['model_name_or_path'] == configs['full']['output_dir']
    predict = demo_model.predict_config('base', 'adapter', 'data', 'demo_lora', 'out')
    assert predict['do_predict'] and predict['do_sample'] is False
    assert predict['per_device_eval_batch_size'] == 1
    _strict_parser().parse_dict(dict(predict, use_cpu=True), allow_extra_keys=False)


def test_cache_key_follows_recipe_and_data(rows):
    lora = rows[:10]
    key = demo_model.cache_key(Recipe(), rows, lora, ROOT)
    assert key == demo_model.cache_key(Recipe(), rows, lora, ROOT)
    assert key != demo_model.cache_key(Recipe(hidden_size=96), rows, lora, ROOT)
    assert key != demo_model.cache_key(Recipe(), rows[:-1], lora, ROOT)


def test_a_cached_model_is_reused_without_training(tmp_path, monkeypatch):
    recipe = Recipe(extra_rows=0, train_rows=4, lora_rows=0)
    rows = demo_model.training_rows(recipe, ROOT)
    key = demo_model.cache_key(recipe, rows, demo_model.shipped_rows(recipe, ROOT), ROOT)
    directory = tmp_path / key
    for name, marker in (('base', 'config.json'), ('adapter', 'adapter_config.json')):
        (directory / name).mkdir(parents=True)
        (directory / name / marker).write_text('{}')
    (directory / demo_model.DONE_FILE).write_text(json.dumps({'train_seconds': 12.5}))

    def no_training(*args, **kwargs):
        raise AssertionError('trained although cached')
    monkeypatch.setattr(demo_model, 'run_llamafactory', no_training)
    lines = []
    model = demo_model.train_demo_model(recipe, str(tmp_path), ROOT, echo=lines.append)
    assert model.cached and model.train_seconds == 12.5
    assert model.base == str(directory / 'base') and model.adapter == str(directory / 'adapter')
    assert 'reusing' in lines[0]


def test_an_interrupted_training_run_stops_the_trainer(tmp_path, monkeypatch):
    # Ctrl-C (or SIGTERM, which the demo turns into SystemExit) while the trainer runs must
    # not leave llamafactory-cli training in the background. The trainer here is a stand-in
    # process that logs a loss and then waits: what run_llamafactory is tested for is its
    # handling of the child process.
    pid_file = tmp_path / 'pid'
    trainer = ("import os, sys, time; open(%r, 'w').write(str(os.getpid())); "
               "print(\"{'loss': 1.5}\", flush=True); time.sleep(120)" % str(pid_file))
    monkeypatch.setattr(demo_model, 'llamafactory_cli', lambda: [sys.executable, '-c', trainer])

    def interrupt(line):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        demo_model.run_llamafactory('unused.yaml', str(tmp_path / 'log'), 'full SFT', interrupt)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # gone, and reaped
        os.kill(pid, 0)


def _train_bytes(tmp_path, name, recipe, monkeypatch, outer_env):
    """Train ``recipe`` with ``outer_env`` set (another CPU's kernels); return weight bytes."""
    with monkeypatch.context() as patch:
        for variable, value in outer_env.items():
            patch.setenv(variable, value)
        model = demo_model.train_demo_model(recipe, str(tmp_path / name), echo=None)
    with open(os.path.join(model.base, 'model.safetensors'), 'rb') as stream:
        base = stream.read()
    with open(os.path.join(model.adapter, 'adapter_model.safetensors'), 'rb') as stream:
        return base, stream.read()


@pytest.mark.slow
def test_pinned_kernels_train_the_same_bytes_whatever_kernels_the_cpu_would_pick(
        tmp_path, monkeypatch):
    # This CPU's own kernels (AVX-512 where it has them) against those of another CPU kind:
    # PyTorch's scalar kernels and MKL's AVX2 reproducibility branch. Unpinned, the floats
    # differ (as between an AMD EPYC and an Intel Xeon); pinned, every byte is the same.
    from conftest import TRAINED_MODEL_RECIPE
    fields = dict(TRAINED_MODEL_RECIPE, full_epochs=4.0, lora_epochs=1.0)
    other_cpu = {'ATEN_CPU_CAPABILITY': 'default', 'MKL_CBWR': 'AVX2'}
    pinned = Recipe(**fields)
    assert pinned.pinned_kernels and pinned.threads == 2  # the default recipe is pinned
    here = _train_bytes(tmp_path, 'pinned-here', pinned, monkeypatch, {})
    there = _train_bytes(tmp_path, 'pinned-there', pinned, monkeypatch, other_cpu)
    assert here == there
    unpinned = Recipe(**dict(fields, pinned_kernels=False))
    here = _train_bytes(tmp_path, 'unpinned-here', unpinned, monkeypatch, {})
    there = _train_bytes(tmp_path, 'unpinned-there', unpinned, monkeypatch, other_cpu)
    assert here[0] != there[0] and here[1] != there[1]


def test_the_reproducible_environment_pins_threads_and_kernels():
    env = demo_model.reproducible_environment(Recipe(threads=3))
    assert env['OMP_NUM_THREADS'] == env['MKL_NUM_THREADS'] == '3'
    assert env['MKL_CBWR'] == 'COMPATIBLE' and env['ATEN_CPU_CAPABILITY'] == 'avx2'
    assert 'MKL_CBWR' not in demo_model.reproducible_environment(Recipe(pinned_kernels=False))
