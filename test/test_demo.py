"""
make demo: sample commands, plan tables, stopping the node; its ROS path end to end.

The end-to-end run serves the tiny test model from a pre-filled cache, so nothing trains.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

from planner_training import demo, demo_model
import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_samples_cover_training_heldout_and_nonsense():
    samples = demo.sample_commands(ROOT)
    kinds = [kind for kind, _, _ in samples]
    for kind in ('training', 'held-out object', 'held-out place', 'held-out phrasing'):
        assert kinds.count(kind) >= 2, kinds
    assert kinds[-1] == 'nonsense' and samples[-1][2] is None
    assert samples[-3][0] == 'held-out, no task' and samples[-3][2] == '无法执行'
    assert len(samples) <= demo.MAX_SAMPLES  # planner_node's queue.max_size: none rejected
    test = {row['input']: row['output'] for row in demo_model.split_rows('test', ROOT)}
    for kind, command, label in samples:
        if kind.startswith('held-out'):
            assert test[command] == label


def test_plan_table_shows_steps_status_latency_and_label():
    answer = {'status': 'ok', 'raw_output': '寻找一瓶水；拿起一瓶水。寻找物体，一瓶水；拿起物体，一瓶水',
              'timing': {'total_ms': 812.0, 'inference_ms': 800.0, 'tokens_generated': 30},
              'confidence': 0.9731,
              'steps': [{'action': '寻找物体', 'target': '一瓶水', 'location': '',
                         'confidence': 0.9731},
                        {'action': '拿起物体', 'target': '一瓶水', 'location': '',
                         'confidence': None}]}
    text = demo.format_plan_table('seed example', '帮我拿一瓶水。', answer['raw_output'], answer)
    assert '帮我拿一瓶水。' in text and 'status ok' in text and '812 ms' in text
    assert 'confidence 0.97' in text
    assert [line.split() for line in text.splitlines()[2:5]] == [
        ['#', 'action', 'target', 'location', 'confidence'], ['1', '寻找物体', '一瓶水', '0.97'],
        ['2', '拿起物体', '一瓶水', '-']]
    assert 'matches the label' in text and '拿起物体' in text
    wrong = demo.format_plan_table('x', '帮我拿一瓶水。', '去厨房。移动到，厨房', answer)
    assert 'differs from the label' in wrong and 'label: 去厨房' in wrong
    assert 'no answer' in demo.format_plan_table('x', '去厨房', None, {})


def test_confidence_summary_counts_right_and_wrong_plans_by_the_threshold():
    right, wrong = '去客厅。移动到，客厅', '去客。移动到，客'
    rows = [{'command': '去客厅', 'predict': predict, 'label': right, 'status': 'ok',
             'errors': [], 'confidence': confidence}
            for predict, confidence in ((right, 0.9), (right, 0.5), (wrong, 0.3), (wrong, 0.7))]
    assert demo.confidence_summary(rows) == (
        '   plan confidence: validation.min_confidence 0.6 would keep 1 of the 2 right plans '
        'and hold back 1 of the 2 wrong ones (docs/confidence.md)')


def test_samples_include_a_plan_the_demo_model_makes_impossible():
    kind, command, label = demo.sample_commands(ROOT)[-2]
    assert (kind, command) == ('held-out, planned impossibly', demo.IMPOSSIBLE)
    assert label and label != '无法执行'


def _execution(step, status, action='', target='', code='', reason='', state=None):
    return {'plan_id': 'p', 'step': step, 'steps': 2, 'action': action, 'target': target,
            'location': '', 'status': status, 'code': code, 'reason': reason, 'state': state}


def test_execution_is_shown_step_by_step_with_the_state():
    empty = {'place': '', 'found': [], 'held': [], 'open': [], 'closed': []}
    found = dict(empty, found=['水'])
    held = dict(found, held=['水'])
    messages = [_execution(None, 'RUNNING', state=empty),
                _execution(0, 'RUNNING', '寻找物体', '水', state=empty),
                _execution(0, 'SUCCESS', '寻找物体', '水', state=found),
                _execution(1, 'RUNNING', '拿起物体', '水', state=found),
                _execution(1, 'SUCCESS', '拿起物体', '水', state=held),
                _execution(None, 'SUCCESS', state=held)]
    assert demo.format_execution(messages).splitlines() == [
        '    plan RUNNING', '    step 1 寻找物体 水: RUNNING',
        '    step 1 寻找物体 水: SUCCESS  (place unknown, holds nothing, found 水)',
        '    step 2 拿起物体 水: RUNNING',
        '    step 2 拿起物体 水: SUCCESS  (place unknown, holds 水, found 水)',
        '    plan SUCCESS  (place unknown, holds 水, found 水)']
    assert demo.execution_line('training', '拿水', messages) == (
        '[training] 拿水: SUCCESS, 2 steps (place unknown, holds 水, found 水)')
    failed = messages[:4] + [_execution(None, 'FAILURE', code='step_failed',
                                        reason='simulated failure', state=found)]
    assert demo.execution_line('x', '拿水', failed) == (
        '[x] 拿水: FAILURE (step_failed: simulated failure)')
    assert demo.execution_line('x', '拿水', messages[:2]) == '[x] 拿水: did not end'


def test_a_retried_attempt_and_a_recovery_step_are_shown():
    retried = dict(_execution(1, 'RETRYING', '拿起物体', '水', code='step_failed',
                              reason='simulated failure of 拿起物体 (simulation.fail) '
                              '(attempt 1 of 3)'), attempt=1)
    dropped = dict(_execution(1, 'RUNNING', '递给', '我', reason='reported by x'),
                   changed=['not held(水)'])
    found = dict(_execution(1, 'SUCCESS', '递给', '我', state={
        'place': '我', 'found': ['水'], 'held': [], 'open': [], 'closed': []}),
        recovery={'action': '寻找物体', 'target': '水', 'location': '', 'achieves': 'found(水)'})
    assert demo.format_execution([retried, dropped, found]).splitlines() == [
        '    step 2 拿起物体 水: RETRYING  (simulated failure of 拿起物体 (simulation.fail) '
        '(attempt 1 of 3))',
        '    step 2: the world changed: not held(水)',
        '    step 2, recovery 寻找物体 水 for found(水): SUCCESS  (at 我, holds nothing, found 水)']


def test_plan_table_of_a_command_without_a_task():
    answer = {'status': 'rejected', 'raw_output': '无法执行', 'steps': [],
              'timing': {'total_ms': 30.0, 'inference_ms': 29.0, 'tokens_generated': 5},
              'errors': [{'code': 'not_a_task', 'message': 'the model answered 无法执行',
                          'step': None}]}
    text = demo.format_plan_table('held-out, no task', '月亮上有笔吗？', '无法执行', answer)
    assert 'status rejected' in text and 'matches the label' in text
    assert 'error not_a_task' in text and 'action' not in text
    planned = demo.format_plan_table('x', '月亮上有笔吗？', '去厨房。移动到，厨房', answer)
    assert 'differs from the label' in planned
    empty = dict(answer, raw_output='')  # no steps either, but not the no-task answer
    assert 'differs from the label' in demo.format_plan_table('x', '你好', '无法执行', empty)


def test_plan_table_of_an_invalid_answer_shows_the_model_output_not_empty_rows():
    raw = '紫色；' * 100  # output1 steps only, cut at max_new_tokens
    answer = {'status': 'invalid', 'raw_output': raw,
              'steps': [{'action': '', 'target': '', 'location': ''}] * 100,
              'errors': [{'code': 'no_actions', 'message': 'the output has no output2 section'}]}
    text = demo.format_plan_table('nonsense', '紫色的大象今天会唱歌吗？', None, answer)
    assert '#  action' not in text and 'error no_actions' in text
    shown = text.split('model: ')[1]
    assert shown.startswith('紫色；') and shown.endswith(' ...')
    assert len(shown) == demo.MAX_SHOWN_CHARS + 4


def test_stop_node_interrupts_and_waits():
    script = ('import signal, sys, time\n'
              'signal.signal(signal.SIGINT, lambda *a: sys.exit(0))\n'
              'print("up", flush=True)\n'
              'time.sleep(60)\n')
    process = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == b'up'
    assert demo.stop_node(process, timeout=10) == 0


def _fill_cache(cache, base, adapter):
    """Put ``base`` and ``adapter`` where the demo's default recipe looks for its model."""
    directory = demo_model.model_directory(cache_dir=cache, root=ROOT)
    shutil.copytree(base, os.path.join(directory, 'base'))
    shutil.copytree(adapter, os.path.join(directory, 'adapter'))
    with open(os.path.join(directory, demo_model.DONE_FILE), 'w', encoding='utf-8') as stream:
        json.dump({'train_seconds': 1.0}, stream)
    return directory


@pytest.mark.slow
def test_demo_plans_the_samples_with_the_cached_model_over_ros(tiny_model, tiny_adapter,
                                                               tmp_path):
    directory = _fill_cache(str(tmp_path / 'cache'), tiny_model, tiny_adapter)
    process = subprocess.Popen(
        [sys.executable, '-m', 'planner_training.demo', '--cache', str(tmp_path / 'cache'),
         '--skip-accuracy'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding='utf-8')
    watchdog = threading.Timer(900, process.kill)  # a hung demo fails instead of hanging
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip('\n'))
            # a wrong cache key would train the real demo model for minutes: stop at once
            assert 'demo model: training into' not in line, '\n'.join(lines)
        code = process.wait(timeout=60)
    finally:
        watchdog.cancel()
        if process.poll() is None:  # SIGTERM: the demo stops its node and trainer first
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    output = '\n'.join(lines)
    assert code == 0, output
    assert 'demo model: reusing %s' % directory in output
    assert 'base %s' % os.path.join(directory, 'base') in output
    kinds = [kind for kind, _, _ in demo.sample_commands(ROOT)]
    tables = lines[:next(i for i, line in enumerate(lines) if line.startswith('== 4.'))]
    headers = [line for line in tables if line.startswith('[')]
    assert [line[1:].split('] ')[0] for line in headers] == kinds, output
    assert not any('status no answer' in line for line in lines), output
    # the random tiny model plans nothing ok: plan_executor runs nothing, and says so
    assert '== 4. plan_executor runs the 0 ok plans in the simulated household' in output
    assert 'simulation.fail:=拿起物体*1' in output  # the pick the demo shows retried
    assert 'plan_executor exited with 0' in output
    assert 'planner_node exited with 0' in output


def test_the_demo_restores_the_sigterm_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    environment = dict(os.environ)
    try:
        with pytest.raises(OSError):  # no repository there: it stops before any training
            demo.main(['--root', str(tmp_path / 'nowhere'), '--cache', str(tmp_path / 'cache')])
    finally:
        # demo.main pins the kernels of its own process in os.environ (ATEN_CPU_CAPABILITY
        # and the rest): not for the later tests of this one
        os.environ.clear()
        os.environ.update(environment)
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_sigterm_stops_the_demo_and_its_node(tiny_model, tiny_adapter, tmp_path):
    _fill_cache(str(tmp_path / 'cache'), tiny_model, tiny_adapter)
    process = subprocess.Popen(
        [sys.executable, '-m', 'planner_training.demo', '--cache', str(tmp_path / 'cache'),
         '--skip-accuracy'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding='utf-8')
    watchdog = threading.Timer(600, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:  # the node is up and planning: kill the demo now
            lines.append(line)
            if line.startswith('== 3.'):
                break
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, ''.join(lines)  # planner_node
        process.send_signal(signal.SIGTERM)
        lines += process.stdout.readlines()
        code = process.wait(timeout=60)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    output = ''.join(lines)
    assert code == 128 + signal.SIGTERM, output
    assert 'planner_node exited with 0' in output, output
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, 'left running: %s' % alive
