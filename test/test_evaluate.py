"""Plan evaluation: metrics on hand-built predictions, the evaluate CLI and its errors."""

import csv
import json
import subprocess
import sys

import pytest

from robot_llm_planner.cli.evaluate import evaluate_rows
from robot_llm_planner.cli.runs import EvaluationError, load_rows, run_names
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.stats import percentile

SYSTEM = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'

# Five predictions whose metrics are worked out by hand below.
ROWS = [
    # exact match, written with ASCII separators and spaces
    {'command': '帮我拿一瓶水。', 'latency_ms': 100,
     'label': '寻找一瓶水；拿起一瓶水。寻找物体，一瓶水；拿起物体，一瓶水',
     'predict': '寻找一瓶水; 拿起一瓶水。寻找物体, 一瓶水; 拿起物体 ,一瓶水'},
    # valid and executable, but the wrong place: nothing matches
    {'command': '去客厅', 'latency_ms': 200,
     'label': '去客厅。移动到，客厅', 'predict': '去厨房。移动到，厨房'},
    # parses, one step right, one step with an unknown action
    {'command': '打开冰箱门再关上', 'latency_ms': 300,
     'label': '打开冰箱门；关上冰箱门。打开，冰箱门；关闭，冰箱门',
     'predict': '打开冰箱门；飞起来。打开，冰箱门；飞行，天空'},
    # output2 cut short: a parse error (step_count_mismatch)
    {'command': '把书放到书架上', 'latency_ms': 400,
     'label': '寻找书；拿起书；把书放到书架上。寻找物体，书；拿起物体，书；放下物体，书，书架上',
     'predict': '寻找书；拿起书。寻找物体，书'},
    # unlabelled: counts for validity only
    {'command': '去客厅吧', 'label': '', 'predict': '去客厅。移动到，客厅'},
]


@pytest.fixture(scope='module')
def skills():
    return SkillSet.load()


def test_hand_computed_metrics(skills):
    metrics = evaluate_rows(ROWS, skills)
    assert metrics['n'] == 5 and metrics['labelled'] == 4
    assert metrics['format_valid'] == pytest.approx(4 / 5)  # all but row 4
    assert metrics['skill_valid'] == pytest.approx(3 / 5)  # rows 1, 2, 5
    assert metrics['grounded_valid'] == pytest.approx(2 / 5)  # not row 2: 厨房 is not in 去客厅
    assert metrics['exact_match'] == pytest.approx(1 / 4)  # row 1 of 4 labelled
    # output1 descriptions: matched 2+0+1+2, predicted 2+1+2+2, expected 2+1+2+3
    assert metrics['description_precision'] == pytest.approx(5 / 7)
    assert metrics['description_recall'] == pytest.approx(5 / 8)
    assert metrics['description_f1'] == pytest.approx(2 / 3)
    # output2 tuples: matched 2+0+1+1, predicted 2+1+2+1, expected 2+1+2+3
    assert metrics['action_precision'] == pytest.approx(4 / 6)
    assert metrics['action_recall'] == pytest.approx(4 / 8)
    assert metrics['action_f1'] == pytest.approx(4 / 7)
    # latencies 100, 200, 300, 400 (nearest rank: a measured latency each)
    assert metrics['latency_count'] == 4
    assert metrics['latency_p50_ms'] == 200
    assert metrics['latency_p90_ms'] == 400
    assert metrics['latency_p99_ms'] == 400


def test_steps_match_as_multisets_and_locations_count(skills):
    rows = [{'command': 'x', 'label': '寻找水；寻找水。寻找物体，水；寻找物体，水',
             'predict': '寻找水。寻找物体，水，厨房'}]
    metrics = evaluate_rows(rows, skills)
    assert metrics['description_precision'] == 1.0 and metrics['description_recall'] == 0.5
    assert metrics['action_precision'] == 0.0 and metrics['action_recall'] == 0.0
    assert metrics['action_f1'] == 0.0
    assert metrics['format_valid'] == 1.0 and metrics['exact_match'] == 0.0


def test_an_output_with_parse_errors_is_never_right(skills):
    # the parser drops an extra argument or a third section; the planner publishes such an
    # output invalid, so it must not count as the right plan or as right steps
    label = '在厨房寻找水。寻找物体，水，厨房'
    rows = [{'command': '在厨房找水', 'label': label, 'predict': label + '，客厅'},
            {'command': '在厨房找水', 'label': label, 'predict': label + '。寻找物体，可乐'}]
    metrics = evaluate_rows(rows, skills)
    assert metrics['format_valid'] == 0.0 and metrics['exact_match'] == 0.0
    # the step with the extra argument is a wrong step; the steps before a third section count
    for kind in ('action', 'description'):
        assert metrics[kind + '_precision'] == 0.5 and metrics[kind + '_recall'] == 0.5
    # a faulty step is as wrong as a well-formed wrong one, never better
    wrong = evaluate_rows([{'command': 'x', 'label': label,
                            'predict': '在厨房寻找可乐。寻找物体，可乐，厨房'}], skills)
    faulty = evaluate_rows([rows[0]], skills)
    for key in ('action_precision', 'description_precision'):
        assert faulty[key] == wrong[key] == 0.0


def test_task1_runs_have_no_action_metrics_and_are_not_executable(skills):
    rows = [{'command': 'a', 'label': '寻找一瓶水；拿起一瓶水', 'predict': '寻找一瓶水；拿起一瓶水'},
            {'command': 'b', 'label': '去客厅', 'predict': ''}]
    metrics = evaluate_rows(rows, skills)
    assert metrics['format_valid'] == 0.5 and metrics['skill_valid'] == 0.0
    assert metrics['exact_match'] == 0.5
    assert metrics['description_precision'] == 1.0
    assert metrics['description_recall'] == pytest.approx(2 / 3)
    assert metrics['action_precision'] is None and metrics['action_f1'] is None
    assert metrics['latency_count'] == 0 and metrics['latency_p50_ms'] is None


def test_empty_predictions_score_zero_not_undefined(skills):
    rows = [{'command': 'a', 'label': '去客厅。移动到，客厅', 'predict': '\n\n'}]
    metrics = evaluate_rows(rows, skills)
    assert metrics['format_valid'] == 0.0 and metrics['exact_match'] == 0.0
    for key in ('description', 'action'):
        assert metrics[key + '_precision'] == 0.0 and metrics[key + '_recall'] == 0.0
        assert metrics[key + '_f1'] == 0.0


def test_no_task_rows(skills):
    rows = [{'command': '你好', 'label': '无法执行', 'predict': '无法执行'},
            {'command': '唱首歌', 'label': '无法执行', 'predict': '去客厅。移动到，客厅'},
            {'command': '去客厅', 'label': '去客厅。移动到，客厅', 'predict': '无法执行'},
            {'command': '去厨房', 'label': '去厨房。移动到，厨房', 'predict': '去厨房。移动到，厨房'}]
    metrics = evaluate_rows(rows, skills)
    assert metrics['labelled'] == 4 and metrics['no_task_labelled'] == 2
    assert metrics['exact_match'] == 0.5  # rows 1 and 4
    assert metrics['no_task_recall'] == 0.5 and metrics['false_refusals'] == 0.5
    assert metrics['format_valid'] == 1.0 and metrics['skill_valid'] == 1.0  # refusals too
    assert metrics['grounded_valid'] == 0.75  # row 2 goes to 客厅, which 唱首歌 does not name
    # row 2's step counts against precision, row 3's refusal against recall
    assert metrics['description_precision'] == 0.5 and metrics['description_recall'] == 0.5
    assert metrics['action_precision'] == 0.5 and metrics['action_recall'] == 0.5
    tasks_only = evaluate_rows(rows[3:], skills)
    assert tasks_only['no_task_labelled'] == 0 and tasks_only['no_task_recall'] is None
    assert tasks_only['false_refusals'] == 0.0


def test_percentile_edges():
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile([0, 10], 0.9) == 10  # nearest rank, not between the two


def _prompt(query):
    return ('<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n'
            '<|im_start|>assistant\n' % (SYSTEM, query))


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows),
                    encoding='utf-8')
    return path


def _llamafactory_run(path, rows):
    return _write_jsonl(path, [{'prompt': _prompt(r['command']), 'predict': r['predict'],
                                'label': r['label']} for r in rows])


def test_load_both_formats(tmp_path):
    lf = _llamafactory_run(tmp_path / 'lora' / 'generated_predictions.jsonl', ROWS[:2])
    rows = load_rows(str(lf))
    assert [r['command'] for r in rows] == ['帮我拿一瓶水。', '去客厅']
    assert 'latency_ms' not in rows[0]
    planner = _write_jsonl(tmp_path / 'planner.jsonl', ROWS)
    assert load_rows(str(planner))[0]['latency_ms'] == 100.0
    assert run_names([str(lf), str(planner), str(planner)]) == [
        'lora', 'planner', 'planner (2)']


def test_instruction_is_stripped_before_the_grounding_check(tmp_path, skills):
    from planner_training.dataset import load_prompts
    instruction = load_prompts(None, skills)['prompt3']['task2']
    assert '机器人' in instruction
    command = '帮我找遥控器'
    made_up = {'command': command, 'label': '寻找遥控器。寻找物体，遥控器',
               'predict': '寻找机器人。寻找物体，机器人'}  # the target is only in the instruction
    right = dict(made_up, predict=made_up['label'])
    run = _write_jsonl(tmp_path / 'prompt3' / 'generated_predictions.jsonl', [
        {'prompt': _prompt(instruction + '\n' + row['command']), 'predict': row['predict'],
         'label': row['label']} for row in (made_up, right)])
    rows = load_rows(str(run), instruction)
    assert [row['command'] for row in rows] == [command, command]
    assert evaluate_rows(rows, skills)['grounded_valid'] == pytest.approx(1 / 2)
    # a prompt0 run (no instruction in its prompts) is read the same with or without it
    prompt0 = _llamafactory_run(tmp_path / 'prompt0' / 'generated_predictions.jsonl', ROWS)
    assert load_rows(str(prompt0), instruction) == load_rows(str(prompt0))
    out = tmp_path / 'out'
    result = _evaluate(str(run), '--instruction', instruction, '--out', str(out))
    assert result.returncode == 0, result.stderr
    assert '| valid, arguments in the command | 50.0% |' in result.stdout
    assert '| skill valid | 100.0% |' in result.stdout


def _evaluate(*args):
    return subprocess.run([sys.executable, '-m', 'robot_llm_planner.cli', 'evaluate', *args],
                          capture_output=True, text=True)


def test_cli_writes_table_csv_and_chart(tmp_path):
    lf = _llamafactory_run(tmp_path / 'lora-task2_prompt0' / 'generated_predictions.jsonl',
                           ROWS)
    planner = _write_jsonl(tmp_path / 'planner.jsonl', ROWS[:3])
    out = tmp_path / 'results'
    result = _evaluate(str(lf), str(planner), '--out', str(out))
    assert result.returncode == 0, result.stderr
    assert '| metric | lora-task2_prompt0 | planner |' in result.stdout
    assert '| plan exact match | 25.0% | 33.3% |' in result.stdout
    assert '| latency p50 (ms) | n/a | 200.0 |' in result.stdout
    assert result.stdout.split('wrote')[0] in (out / 'results.md').read_text(encoding='utf-8')
    with open(out / 'results.csv', encoding='utf-8') as stream:
        table = list(csv.DictReader(stream))
    assert [row['run'] for row in table] == ['lora-task2_prompt0', 'planner']
    assert float(table[0]['description_f1']) == pytest.approx(2 / 3, abs=1e-5)
    assert table[0]['latency_p50_ms'] == '' and float(table[1]['latency_p90_ms']) == 300
    assert (out / 'results.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    named = _evaluate(str(lf), '--names', 'LoRA', '--out', str(out))
    assert named.returncode == 0 and '| metric | LoRA |' in named.stdout


@pytest.mark.parametrize('content,message', [
    (None, 'cannot read'),
    ('', 'has no predictions'),
    ('{"predict": "a", "label": "b"}\n{not json\n', 'line 2 is not JSON'),
    ('{"predict": "a"}\n', 'line 1: expected an object with string "predict" and "label"'),
    ('[1, 2]\n', 'line 1: expected an object'),
    ('{"predict": "a", "label": "b", "latency_ms": "fast"}\n', '"latency_ms" must be a number'),
])
def test_missing_or_malformed_run_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / 'run.jsonl'
    if content is not None:
        path.write_text(content, encoding='utf-8')
    with pytest.raises(EvaluationError, match=message):
        load_rows(str(path))
    result = _evaluate(str(path), '--out', str(tmp_path / 'out'))
    assert result.returncode == 2
    assert str(path) in result.stderr and message.split(':')[0] in result.stderr
    assert 'Traceback' not in result.stderr


def test_names_must_match_runs(tmp_path):
    run = _write_jsonl(tmp_path / 'a.jsonl', ROWS)
    result = _evaluate(str(run), '--names', 'a', 'b', '--out', str(tmp_path / 'out'))
    assert result.returncode == 2 and 'got 2 names for 1 runs' in result.stderr


@pytest.mark.slow
def test_planner_run_over_a_split_side_by_side(tmp_path, trained_model):
    split = tmp_path / 'train_split.json'
    split.write_text(json.dumps([{'instruction': '', 'input': row['input'],
                                  'output': row['output']} for row in trained_model.rows],
                                ensure_ascii=False), encoding='utf-8')
    earlier = _write_jsonl(tmp_path / 'earlier.jsonl', ROWS)
    out = tmp_path / 'out'
    result = _evaluate(str(earlier), '--split', str(split), '--model', trained_model.base,
                       '--adapter', trained_model.adapter, '--device', 'cpu',
                       '--run-name', 'trained', '--out', str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = len(trained_model.correct) / len(trained_model.rows)
    assert '| metric | earlier | trained |' in result.stdout
    assert '| plan exact match | 25.0%% | %.1f%% |' % (100 * expected) in result.stdout
    rows = load_rows(str(out / 'trained.jsonl'))
    assert [row['command'] for row in rows] == [row['input'] for row in trained_model.rows]
    assert all(row['latency_ms'] > 0 for row in rows)
    # what each validation.min_confidence would keep: every right plan passes the other checks
    table = 'right plans kept (of %d)' % len(trained_model.correct)
    assert 'by validation.min_confidence (trained)' in result.stdout and table in result.stdout
    assert '## trained: plans by validation.min_confidence' in (out / 'results.md').read_text(
        encoding='utf-8')
    with open(out / 'trained.jsonl', encoding='utf-8') as stream:
        planned = [json.loads(line) for line in stream]
    assert all(0.0 < row['confidence'] <= 1.0 and isinstance(row['errors'], list)
               for row in planned)


def test_split_without_a_model_is_a_clear_error(tmp_path):
    split = tmp_path / 's.json'
    split.write_text('[{"instruction": "", "input": "去客厅", "output": ""}]', encoding='utf-8')
    result = _evaluate('--split', str(split), '--out', str(tmp_path / 'out'))
    assert result.returncode == 2 and 'give --model' in result.stderr
