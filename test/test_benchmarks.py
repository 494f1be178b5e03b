"""The latency benchmark runs end to end on CPU (a tiny config) as a smoke test."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_latency_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'latency.py'), '--config', 'tiny',
         '--device', 'cpu', '--runs', '2', '--new-tokens', '6', '--prompt-tokens', '12',
         '--draft-tokens', '2', '--out', str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'latency.json').read_text())
    assert set(report['paths']) == {'baseline_generate_dynamic', 'engine_fast_path'}
    for path in report['paths'].values():
        assert path['plan']['p50_ms'] > 0 and path['first_token_ms'] > 0
    assert report['floor_ms_per_token'] > 0 and report['copy_tb_s'] > 0
    assert set(report['verify_ms_per_pass']) == {'0', '2'}
    assert '| engine_fast_path |' in (tmp_path / 'latency.md').read_text()
