"""`cli postprocess`: LLaMA-Factory predictions to the seed's output_1 / output_2 format."""

import json
import subprocess
import sys

import pytest
from robot_llm_planner.cli.postprocess import command_from_prompt

SYSTEM = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'


def _prompt(query):
    return ('<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n'
            '<|im_start|>assistant\n' % (SYSTEM, query))


def _run(*args):
    return subprocess.run([sys.executable, '-m', 'robot_llm_planner.cli', 'postprocess', *args],
                          capture_output=True, text=True)


def test_seed_example(tmp_path):
    pred = tmp_path / 'generated_predictions.jsonl'
    row = {'prompt': _prompt('帮我拿一瓶水。'), 'label': '',
           'predict': '寻找一瓶水；拿起水瓶。寻找物体, 一瓶水；拿起物体, 水瓶'}
    pred.write_text(json.dumps(row, ensure_ascii=False) + '\n', encoding='utf-8')
    result = _run(str(pred))
    assert result.returncode == 0, result.stderr
    out = tmp_path / 'predict_postprocessed.json'
    assert json.loads(out.read_text(encoding='utf-8')) == [{
        'instruction': '帮我拿一瓶水。', 'output_1': ['寻找一瓶水', '拿起水瓶'],
        'output_2': ['寻找物体, 一瓶水', '拿起物体, 水瓶']}]
    assert '帮我拿一瓶水' in out.read_text(encoding='utf-8')  # ensure_ascii=False


def test_no_task_answer_is_kept_not_emptied(tmp_path):
    pred = tmp_path / 'generated_predictions.jsonl'
    rows = [{'prompt': _prompt('今天天气怎么样？'), 'label': '无法执行', 'predict': '无法执行'},
            {'prompt': _prompt('去客厅'), 'label': '', 'predict': ''}]
    pred.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows),
                    encoding='utf-8')
    result = _run(str(pred))
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / 'predict_postprocessed.json').read_text(encoding='utf-8'))
    assert records == [
        {'instruction': '今天天气怎么样？', 'output_1': ['无法执行'], 'output_2': []},
        {'instruction': '去客厅', 'output_1': [], 'output_2': []}]


def test_dataset_by_index_and_bad_lines(tmp_path):
    pred = tmp_path / 'p.jsonl'
    lines = [json.dumps({'prompt': _prompt('请执行\n去厨房'), 'predict': '去厨房。移动到，厨房',
                         'label': ''}, ensure_ascii=False),
             '{not json',
             json.dumps({'prompt': 'x', 'predict': '寻找水', 'label': ''})]
    pred.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    dataset = tmp_path / 'd.json'
    dataset.write_text(json.dumps([{'instruction': '请执行', 'input': '去厨房', 'output': ''},
                                   {'instruction': '', 'input': 'b', 'output': ''},
                                   {'instruction': '', 'input': '找水', 'output': ''}],
                                  ensure_ascii=False), encoding='utf-8')
    out = tmp_path / 'out.json'
    result = _run(str(pred), '--dataset', str(dataset), '-o', str(out))
    assert result.returncode == 1
    assert 'line 2' in result.stderr
    records = json.loads(out.read_text(encoding='utf-8'))
    assert records[0] == {'instruction': '去厨房', 'output_1': ['去厨房'], 'output_2': ['移动到, 厨房']}
    assert records[1]['error'].startswith('line 2:')
    assert records[2] == {'instruction': '找水', 'output_1': ['寻找水'], 'output_2': []}


def test_command_from_prompt_variants():
    assert command_from_prompt(_prompt('帮我拿一瓶水。')) == '帮我拿一瓶水。'
    assert command_from_prompt(_prompt('你是机器人\n帮我拿水'), '你是机器人') == '帮我拿水'
    legacy = 'system\nYou are a helpful assistant.\nuser\n帮我拿水\nassistant\n'
    assert command_from_prompt(legacy) == '帮我拿水'


def test_missing_file_is_a_clear_error(tmp_path):
    result = _run(str(tmp_path / 'missing.jsonl'))
    assert result.returncode == 2
    assert 'missing.jsonl' in result.stderr


def test_non_utf8_predictions_are_a_clear_error(tmp_path):
    pred = tmp_path / 'generated_predictions.jsonl'
    row = json.dumps({'prompt': _prompt('去客厅'), 'predict': '去客厅。移动到，客厅', 'label': ''},
                     ensure_ascii=False)
    pred.write_bytes((row + '\n').encode('utf-8') + (row + '\n').encode('gbk'))
    result = _run(str(pred))
    assert result.returncode == 2
    assert '%s: line 2 is not UTF-8 text' % pred in result.stderr
    assert not (tmp_path / 'predict_postprocessed.json').exists()


@pytest.mark.parametrize('content,problem', [
    (b'[{"input": "x"', 'not valid JSON'), ('[{"input": "去客厅"}]'.encode('gbk'), 'not UTF-8 text')])
def test_broken_dataset_is_a_clear_error(tmp_path, content, problem):
    pred = tmp_path / 'p.jsonl'
    pred.write_text(json.dumps({'prompt': 'x', 'predict': '寻找水'}) + '\n', encoding='utf-8')
    dataset = tmp_path / 'd.json'
    dataset.write_bytes(content)
    result = _run(str(pred), '--dataset', str(dataset))
    assert result.returncode == 2
    assert '%s: the dataset is %s' % (dataset, problem) in result.stderr
    assert not (tmp_path / 'predict_postprocessed.json').exists()


@pytest.mark.parametrize('content', ['', '\n  \n'])
def test_empty_predictions_are_an_error_and_overwrite_nothing(tmp_path, content):
    pred = tmp_path / 'generated_predictions.jsonl'
    pred.write_text(content, encoding='utf-8')
    out = tmp_path / 'predict_postprocessed.json'
    out.write_text('["earlier"]\n', encoding='utf-8')
    result = _run(str(pred))
    assert result.returncode == 2
    assert '%s: no prediction rows' % pred in result.stderr
    assert out.read_text(encoding='utf-8') == '["earlier"]\n'
