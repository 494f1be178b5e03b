"""The benchmarks run end to end on CPU (tiny configs) as smoke tests; the GPU script parses."""

import json
import os
import subprocess
import sys

import pytest

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
        help_text = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'benchmarks', name), '--help'],
            capture_output=True, text=True, cwd=ROOT).stdout
        for option in options:
            assert option in help_text, (name, option)


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
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'ros_overhead.py'), '--commands',
         '4', '--max-new-tokens', '2', '--timeout', '60', '--out', str(tmp_path)],
        capture_output=True, text=True)
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
