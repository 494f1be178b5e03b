"""
The planner's health rules and the model fingerprint, ROS-free.

:func:`health` and :func:`key_values` turn a status dict into what /diagnostics shows; the
statuses here are built field by field as the service builds them, so every rule is checked
on its own. The fingerprint is taken of real files written here.
"""

import shutil

import pytest
from robot_llm_planner.core import fingerprint as fingerprint_module
from robot_llm_planner.core.fingerprint import fingerprint
from robot_llm_planner.core.stats import percentile
from robot_llm_planner.serving.health import (ERROR, health, key_values, memory_figures, OK,
                                              RecentPlans, WARN)


def status(**changes):
    """Return a status of an idle, active planner with ``changes`` applied."""
    base = {'state': 'ready', 'lifecycle': 'active', 'queue_depth': 0, 'queue_max_size': 10,
            'queue_policy': 'fifo', 'in_flight': 0, 'error': '', 'retrying': False,
            'backend_error': '', 'recent': RecentPlans().summary(), 'node': '/planner_node',
            'model': {'backend': 'transformers', 'base': '/models/qwen', 'adapter': ''},
            'model_hash': {'base': 'abcdef012345', 'adapter': ''}, 'device': 'cpu',
            'dtype': 'float32', 'counts': {'ok': 0, 'invalid': 0, 'error': 0, 'rejected': 0},
            'memory': {'rss_mb': 812.5}}
    base.update(changes)
    return base


def test_percentile_is_the_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.95) == 5.0
    values = list(range(1, 101))
    assert (percentile(values, 0.5), percentile(values, 0.95)) == (50, 95)
    assert percentile([3, 1, 2], 0.5) == 2


def test_recent_plans_count_latency_and_throughput_over_the_window():
    recent = RecentPlans(size=3)
    assert recent.summary() == {'plans': 0, 'invalid': 0, 'latency_p50_ms': None,
                                'latency_p95_ms': None, 'tokens_per_s': None}
    # one batch of two commands: one generate() call of 0.5 s made 30 tokens
    recent.add([('ok', {'total_ms': 600.0, 'inference_ms': 500.0, 'tokens_generated': 20}),
                ('invalid', {'total_ms': 610.0, 'inference_ms': 500.0,
                             'tokens_generated': 10})])
    recent.add([('ok', {'total_ms': 1.0, 'inference_ms': 0.0, 'tokens_generated': 0,
                        'cached': True})])  # a cached plan: counted, but generated nothing
    assert recent.summary() == {'plans': 3, 'invalid': 1, 'latency_p50_ms': 600.0,
                                'latency_p95_ms': 610.0, 'tokens_per_s': 60.0}
    recent.add([('ok', {'total_ms': 2000.0, 'inference_ms': 1500.0, 'tokens_generated': 30})])
    summary = recent.summary()  # the oldest plan left the window of 3
    assert (summary['plans'], summary['invalid'], summary['latency_p95_ms']) == (3, 1, 2000.0)
    assert summary['tokens_per_s'] == 30.0  # 60 tokens in 2 s


@pytest.mark.parametrize('changes,level,message', [
    ({}, OK, 'ready: planning commands'),
    ({'state': 'inactive', 'lifecycle': 'inactive'}, OK,
     'inactive: commands are answered rejected'),
    ({'state': 'unconfigured', 'lifecycle': 'unconfigured'}, OK,
     'unconfigured: no model loaded; commands are answered rejected'),
    ({'queue_depth': 8}, OK, 'ready: planning commands'),
    ({'queue_depth': 9, 'state': 'busy'}, WARN, 'queue above 80 %: 9 of 10 commands waiting'),
    ({'state': 'error', 'error': 'cannot load the model: x does not exist'}, ERROR,
     'cannot load the model: x does not exist'),
    ({'state': 'error', 'error': 'unreachable; retrying in 2 s', 'retrying': True}, WARN,
     'unreachable; retrying in 2 s'),
    ({'backend_error': 'HTTP 502'}, ERROR, 'the backend failed the last plan: HTTP 502'),
    ({'recent': {'plans': 3, 'invalid': 3}}, OK, 'ready: planning commands'),
    ({'recent': {'plans': 4, 'invalid': 2}}, OK, 'ready: planning commands'),
    ({'recent': {'plans': 4, 'invalid': 3}}, WARN, '3 of the last 4 plans were invalid'),
    ({'recent': {'plans': 10, 'invalid': 6}, 'queue_depth': 10}, WARN,
     'queue above 80 %: 10 of 10 commands waiting; 6 of the last 10 plans were invalid'),
])
def test_health_levels(changes, level, message):
    assert health(status(**changes)) == (level, message)


def test_key_values_show_the_status_as_strings():
    rows = key_values(status(error='', memory={'rss_mb': 900.0, 'cuda_allocated_mb': 14800.2,
                                               'cuda_reserved_mb': 15360.0}))
    values = dict(rows)
    assert [key for key, _ in rows][:3] == ['lifecycle state', 'planner state', 'backend']
    assert values['model'] == '/models/qwen' and values['model hash'] == 'abcdef012345'
    assert values['adapter'] == '-' and values['adapter hash'] == '-'
    assert (values['queue depth'], values['queue capacity']) == ('0', '10')
    assert values['answers ok'] == '0' and values['plan latency p50 (ms)'] == '-'
    assert values['GPU memory allocated (MB)'] == '14800.2'
    assert values['process RSS (MB)'] == '900.0'
    assert 'error' not in values
    assert dict(key_values(status(state='error', error='boom')))['error'] == 'boom'
    assert all(isinstance(value, str) for _, value in rows)


def test_memory_figures_read_this_process():
    figures = memory_figures('cpu')
    assert figures['rss_mb'] > 10
    assert 'cuda_allocated_mb' not in figures


def test_fingerprint_follows_the_content_not_the_path(tmp_path):
    model = tmp_path / 'model'
    model.mkdir()
    (model / 'config.json').write_text('{"hidden_size": 64}')
    (model / 'model.safetensors').write_bytes(b'\x01' * 1000)
    first = fingerprint(str(model))
    assert len(first) == 12 and int(first, 16) >= 0
    copy = tmp_path / 'copy'
    shutil.copytree(model, copy)
    assert fingerprint(str(copy)) == first  # the same weights elsewhere
    (copy / 'model.safetensors').write_bytes(b'\x01' * 999 + b'\x02')
    assert fingerprint(str(copy)) != first  # retrained weights under the same name
    assert fingerprint('') == '' and fingerprint(str(tmp_path / 'missing')) == ''
    assert fingerprint('%s, %s' % (model, copy)) == '%s,%s' % (first, fingerprint(str(copy)))


def test_fingerprint_samples_large_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint_module, 'WHOLE_FILE_BYTES', 4096)
    monkeypatch.setattr(fingerprint_module, 'SAMPLE_BYTES', 16)
    path = tmp_path / 'weights.bin'
    data = bytearray(10000)
    path.write_bytes(bytes(data))
    before = fingerprint(str(path))
    data[100] = 1  # between the samples (0-16, 4992-5008, 9984-10000): not seen
    path.write_bytes(bytes(data))
    assert fingerprint(str(path)) == before
    data[5000] = 1  # in the middle sample
    path.write_bytes(bytes(data))
    assert fingerprint(str(path)) != before
