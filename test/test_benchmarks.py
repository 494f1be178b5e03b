"""The benchmarks run end to end on CPU (tiny configs) as smoke tests; the GPU script parses."""

import json
import os
import subprocess
import sys

from helpers import claimed_ros_domain
import pytest
from robot_llm_planner.core.plan import parse_plan
from robot_llm_planner.core.skills import SkillSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_latency_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'latency.py'), '--config', 'tiny',
         '--device', 'cpu', '--runs', '2', '--new-tokens', '6', '--prompt-tokens', '12',
         '--draft-tokens', '2', '--tokens-per-pass', '2=1.741', '--int8', '--out',
         str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'latency.json').read_text())
    assert set(report['paths']) == {'baseline_generate_dynamic', 'engine_fast_path',
                                    'engine_fast_path_int8'}
    for path in report['paths'].values():
        assert path['plan']['p50_ms'] > 0 and path['first_token_ms'] > 0
    assert 'errors' not in report
    assert set(report['phase_s']) == {'build', 'baseline', 'engine', 'drafts_2',
                                      'draft_estimate', 'int8'}
    estimate = report['draft_estimate']['2']
    assert estimate['decode_ms_per_token'] == pytest.approx(
        report['verify_ms_per_pass']['2'] / 1.741, abs=1e-3)
    # the floor: the fp32 weights read once per step at the copy bandwidth (read + written)
    weights = report['params'] * 4
    floor = weights / (report['copy_tb_s'] * 1e12) * 1000.0
    assert abs(report['floor_ms_per_token'] - floor) < 0.05 * floor
    assert report['floor_int8_ms_per_token'] < report['floor_ms_per_token']
    assert set(report['verify_ms_per_pass']) == {'0', '2'}
    assert '| engine_fast_path |' in (tmp_path / 'latency.md').read_text()


def test_a_failed_benchmark_phase_is_recorded_and_the_rest_kept(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import latency
    finally:
        sys.path.pop(0)
    report = {'device': 'd', 'torch': 't', 'transformers': 'x', 'model': 'm',
              'prompt_tokens': 1, 'new_tokens': 2, 'runs': 1, 'date': 'now', 'paths': {}}

    def broken():
        raise RuntimeError('CUDA graph capture failed\nmore')
    assert not latency.phase(report, str(tmp_path), 'engine', broken)
    assert report['errors'] == {'engine': 'RuntimeError: CUDA graph capture failed'}
    saved = json.loads((tmp_path / 'latency.json').read_text())
    assert saved['errors'] == report['errors'] and 'engine' in saved['phase_s']
    assert '**engine failed**: RuntimeError' in (tmp_path / 'latency.md').read_text()


def test_demo_curve_smoke(tmp_path):
    recipe = {'hidden_size': 32, 'layers': 2, 'heads': 2, 'kv_heads': 2,
              'intermediate_size': 64, 'extra_rows': 0, 'train_rows': 40}
    out = tmp_path / 'curve.jsonl'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'demo_curve.py'), '--recipe',
         json.dumps(recipe), '--epochs', '1', '--batch', '8', '--eval-every', '2', '--limit',
         '8', '--threads', '1', '--model-dir', str(tmp_path / 'model'), '--out', str(out)],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line['step'] for line in lines] == [2, 4, 5]  # every 2 steps and the last (40/8)
    assert lines[-1]['rows_seen'] == 40 and lines[-1]['epochs'] == 1.0
    for line in lines:
        assert 0.0 <= line['exact_match'] <= 1.0 and line['loss'] > 0
        assert set(line['by_kind']) == {'object', 'location', 'template', 'none'}
    assert lines[0]['loss'] > lines[-1]['loss']  # it trains
    assert result.stdout.splitlines()[-1] == out.read_text().splitlines()[-1]


def test_confidence_cost_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'confidence_cost.py'), '--repeats',
         '2', '--out', str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'confidence_cost.json').read_text())
    assert set(report['confidence_us']) == {'4374', '151936'}
    assert report['step_us'] > 0 and all(v > 0 for v in report['confidence_us'].values())
    assert '| 151936 |' in (tmp_path / 'confidence_cost.md').read_text()


def test_gpu_run_script_parses_and_passes_only_known_options():
    # the one prepared GPU run cannot run here; a renamed option would only show on the GPU
    script = os.path.join(ROOT, 'benchmarks', 'gpu_run.sh')
    assert subprocess.run(['bash', '-n', script]).returncode == 0
    text = open(script, encoding='utf-8').read().replace('\\\n', ' ')
    calls = [line for line in text.splitlines() if 'python3 benchmarks/' in line]
    assert len(calls) == 3  # latency.py, grammar_overhead.py, confidence_cost.py
    for line in calls:
        name = line.split('python3 benchmarks/')[1].split()[0]
        options = [word for word in line.split() if word.startswith('--')]
        if name == 'latency.py':  # and the lengths it is given in a variable
            given = [line.split('LENGTHS=(')[1].split(')')[0] for line in text.splitlines()
                     if 'LENGTHS=(' in line]
            options += [word for words in given for word in words.split()
                        if word.startswith('--')]
            assert {'--tokenizer', '--prompt-tokens', '--new-tokens'} <= set(options)
        help_text = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'benchmarks', name), '--help'],
            capture_output=True, text=True, cwd=ROOT).stdout
        for option in options:
            assert option in help_text, (name, option)
    # Qwen1.5's tokenizer is built there by the command line, from the carried wheel
    build = [line for line in text.splitlines() if 'robot_llm_planner.cli qwen-tokenizer' in line]
    assert len(build) == 1
    help_text = subprocess.run([sys.executable, '-m', 'robot_llm_planner.cli', 'qwen-tokenizer',
                                '--help'], capture_output=True, text=True).stdout
    for option in [word for word in build[0].split() if word.startswith('--')]:
        assert option in help_text, option


def _benchmark_module(name):
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_plan_lengths_smoke(tmp_path, qwen_tokenizer, tiny_model):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'plan_lengths.py'), '--tokenizer',
         qwen_tokenizer, '--baseline-tokenizer', tiny_model, '--splits', 'test',
         '--acceptance-limit', '20', '--draft-tokens', '0', '4', '--out', str(tmp_path)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'plan_lengths.json').read_text())
    qwen = report['tokenizers']['Qwen1.5']
    assert qwen['size'] == 151646 and report['tokenizers']['baseline']['size'] < 1000
    plans = qwen['lengths']['test']['plan_tokens']
    assert plans['count'] == 525 and 2 <= plans['p50'] <= plans['p90'] <= plans['max']
    accepted = qwen['acceptance']
    assert accepted['0']['tokens_per_pass'] < 1 < accepted['4']['tokens_per_pass']
    assert '| Qwen1.5 (151646 tokens) | test |' in (tmp_path / 'plan_lengths.md').read_text()


def test_latency_takes_its_lengths_from_a_tokenizer(tmp_path, qwen_tokenizer):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'latency.py'), '--config', 'tiny',
         '--device', 'cpu', '--runs', '1', '--tokenizer', qwen_tokenizer, '--draft-tokens',
         '--out', str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'latency.json').read_text())
    lengths = report['lengths_from']['test split']
    assert report['prompt_tokens'] == lengths['prompt_tokens']['p50'] > 0
    assert report['new_tokens'] == lengths['plan_tokens']['p50'] > 0
    assert 'errors' not in report


@pytest.mark.slow
def test_the_lookup_replay_counts_the_passes_the_decoder_takes(trained_model):
    # where the trained model answers with the label, replaying the label through the decode
    # loop's n-gram index gives exactly the decoder's forward passes, for every k
    from robot_llm_planner.core.backend import GenerationConfig
    from robot_llm_planner.core.prompt import PromptBuilder
    from robot_llm_planner.inference.transformers_backend import TransformersBackend
    plan_lengths = _benchmark_module('plan_lengths')
    rows = [row for row in trained_model.rows if row['input'] in trained_model.correct][:10]
    assert len(rows) == 10
    compared = 0
    for k in (2, 4):
        backend = TransformersBackend(trained_model.base, trained_model.adapter, device='cpu',
                                      fast_path='on', draft_tokens=k)
        backend.load()
        stop = backend.stop_ids[0]
        for row in rows:
            generation = backend.generate([row['input']], PromptBuilder(),
                                          GenerationConfig(max_new_tokens=96))[0]
            if generation.text != row['output']:
                continue  # greedy without the grammar wrote something else
            answer = backend.tokenizer.encode(row['output'], add_special_tokens=False)
            replayed = plan_lengths.lookup_passes(backend.encode(row['input'], PromptBuilder()),
                                                  answer + [stop], stop, k, 96)
            assert replayed == 1 + generation.stats['decode_passes'], (k, row['input'])
            compared += 1
    assert compared >= 10


def test_preconditions_benchmark_smoke(tiny_model, tiny_adapter, tmp_path):
    out = tmp_path / 'preconditions.json'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'preconditions.py'), '--base',
         tiny_model, '--adapter', tiny_adapter, '--limit', '4', '--out', str(out)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text(encoding='utf-8'))
    assert report['commands'] == len(report['rows']) == 4
    assert [line['min_confidence'] for line in report['table']] == [0.0, 0.3, 0.6]
    assert 'validation.preconditions caught' in result.stdout


def test_preconditions_benchmark_counts():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import preconditions
    finally:
        sys.path.pop(0)

    def row(right, ok, kept, confidence, unmet=''):
        return {'right': right, 'ok': ok, 'ok_with_preconditions': kept,
                'confidence': confidence, 'unmet': unmet}
    rows = [row(True, True, True, 0.9), row(True, True, True, 0.2),
            row(False, True, False, 0.8, '拿起物体 found(target)'),
            row(False, True, False, 0.1, '递给 held(last)'),
            row(False, True, True, 0.7), row(False, False, False, 0.9)]
    report = preconditions.summary(rows)
    assert (report['ok'], report['right'], report['wrong']) == (5, 2, 3)
    assert (report['wrong_caught'], report['right_kept']) == (2, 2)
    assert report['table'][0] == {'min_confidence': 0.0, 'without': {'ok': 5, 'wrong': 3},
                                  'with': {'ok': 3, 'wrong': 1}}
    assert report['table'][2] == {'min_confidence': 0.6, 'without': {'ok': 3, 'wrong': 2},
                                  'with': {'ok': 2, 'wrong': 1}}
    assert report['reasons'] == [('拿起物体 found(target)', 1), ('递给 held(last)', 1)]
    assert preconditions.unmet_fact(SkillSet.load(), parse_plan(
        '找；拿。寻找物体，水；拿起物体，杯子')) == '拿起物体 found(target)'
    assert '| 0.6 | 2 of 3 (66.7 %) | 1 of 2 (50.0 %) |' in preconditions.markdown(report)


@pytest.mark.slow
def test_vs_llamafactory_smoke(tiny_model, tiny_adapter, tmp_path):
    # LLaMA-Factory's ChatModel and two planners on the tiny model, two commands
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'vs_llamafactory.py'), '--model',
         tiny_model, '--adapter', tiny_adapter, '--limit', '2', '--runs', '2',
         '--max-new-tokens', '6', '--variant', 'defaults', '--variant', 'slow path',
         'fast_path=off', 'draft_tokens=0', '--out', str(tmp_path)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'vs_llamafactory.json').read_text())
    assert list(report['paths']) == ['LLaMA-Factory', 'defaults', 'slow path']
    assert report['paths']['slow path']['settings'] == {'fast_path': 'off', 'draft_tokens': 0}
    assert report['paths']['defaults']['settings'] == {}
    for path in report['paths'].values():
        assert path['p50_ms'] > 0 and path['p90_ms'] >= path['p50_ms'] and path['speedup'] > 0
    # the random model's 6 tokens are no plan (the grammar's are the start of one, also no
    # complete plan): nothing counts where LLaMA-Factory's answer is valid
    assert [row['valid'] for row in report['answers']] == [False, False]
    assert report['valid_llamafactory_answers'] == 0
    for name in ('defaults', 'slow path'):
        same = sum(row[name] == row['llamafactory'] for row in report['answers'])
        assert report['paths'][name]['identical'] == same
        assert report['paths'][name]['identical_where_valid'] == 0
    assert report['answers'][0]['defaults'] == report['answers'][0]['slow path']
    assert '| LLaMA-Factory | - |' in (tmp_path / 'vs_llamafactory.md').read_text()


def test_vs_llamafactory_refuses_a_bad_variant(tmp_path):
    for words, message in ((['x', 'no_such_field=1'], 'not FIELD=VALUE'),
                           (['x', 'draft_tokens=-1'], 'draft_tokens'),
                           (['x', 'constrained=yes'], 'true or false')):
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'benchmarks', 'vs_llamafactory.py'), '--model',
             str(tmp_path), '--variant'] + words + ['--out', str(tmp_path)],
            capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_ros_overhead_smoke(tmp_path):
    # planner_node as a subprocess with a tiny model, a few commands over real topics
    with claimed_ros_domain() as domain_id:
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'benchmarks', 'ros_overhead.py'), '--commands',
             '4', '--max-new-tokens', '2', '--timeout', '60', '--domain-id', str(domain_id),
             '--out', str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'ros_overhead.json').read_text())
    assert report['commands'] == 4 and len(report['rows']) == 4
    for row in report['rows']:
        assert row['round_trip_ms'] > row['inference_ms'] > 0
        assert row['overhead_ms'] == pytest.approx(row['round_trip_ms'] - row['inference_ms'])
    assert report['overhead_ms']['p99'] >= report['overhead_ms']['p50'] > 0
    assert '| overhead (round trip - inference - parse) |' in (
        tmp_path / 'ros_overhead.md').read_text()


def test_token_cost_smoke(tiny_model, tiny_adapter, tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'token_cost.py'), '--model',
         tiny_model, '--adapter', tiny_adapter, '--limit', '2', '--runs', '1',
         '--max-new-tokens', '12', '--draft-tokens', '3', '--out', str(tmp_path)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'token_cost.json').read_text())
    assert report['same_tokens'] is True
    before, after = report['paths']['per row (before)'], report['paths']['batched (after)']
    for path in (before, after):
        assert path['decode_ms_p50'] > 0 and path['tokens_per_plan'] > 0
        assert path['us_per_kept_token']['model forward passes'] > 0
    # before: a bitmask fill and a mask pass for every kept token; after: none for a token
    # the grammar allows
    assert before['us_per_kept_token']['bitmask fill'] > 0
    assert before['us_per_kept_token']['mask pass'] > 0
    assert 'bitmask fill' not in after['us_per_kept_token']
    assert before['tokens_per_plan'] == after['tokens_per_plan']
    assert '| plan decode p50 ms (not instrumented) |' in (
        tmp_path / 'token_cost.md').read_text()


def test_recovery_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'recovery.py'), '--limit', '40',
         '--rates', '0', '0.3', '--out', str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'recovery.json').read_text())
    assert report['plans'] == 40 and report['retry']['拿起物体'] == [3, 0.5, 300.0]
    rows = {(row['condition'], row['mode']): row for row in report['rows']}
    assert set(rows) == {(condition, mode) for mode in ('linear', 'reactive') for condition in
                         ('fail_rate 0', 'fail_rate 0.3', 'drop*1', 'drop*1, fail_rate 0.2')}
    # without faults both trees run every plan, the same steps
    assert rows['fail_rate 0', 'linear']['completed'] == 40
    assert rows['fail_rate 0', 'reactive']['completed'] == 40
    for condition in ('fail_rate 0.3', 'drop*1'):
        linear, reactive = rows[condition, 'linear'], rows[condition, 'reactive']
        assert reactive['completed'] > linear['completed']
        assert reactive['false_starts'] == 0 and reactive['hung'] == 0
    assert rows['drop*1', 'reactive']['recovery_steps'] > 0
    assert rows['drop*1', 'linear']['false_starts'] > 0  # it hands over what fell
    assert '| fail_rate 0.3 | reactive |' in (tmp_path / 'recovery.md').read_text()
