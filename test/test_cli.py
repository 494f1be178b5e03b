"""The offline command line: option validation, stdin commands and `cli plan` exit codes."""

import io
import json

import pytest
from robot_llm_planner.cli import commands as cli

# What the scripted OpenAI-compatible server answers (a real HTTP server, the real remote
# backend and planner behind `cli plan`).
ANSWERS = {'去厨房': '去厨房。移动到，厨房', '今天天气怎么样': '无法执行', '跳个舞': '跳舞。跳舞，我'}


@pytest.fixture
def server(server):
    """Return the conftest's FakeOpenAIServer, answering this file's commands."""
    server.answers.update(ANSWERS)
    return server


def _plan(capsys, monkeypatch, stdin, *argv, server=None):
    monkeypatch.setattr('sys.stdin', io.StringIO(stdin))
    remote = ['--backend', 'openai', '--base-url', server.url, '--remote-model', 'fake',
              '--no-constrained'] if server is not None else []
    code = cli.main(['plan', *remote, *argv])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


@pytest.mark.parametrize('argv,message', [
    (['plan', '--timeout', '0', 'x'], 'argument --timeout: expected a number > 0'),
    (['plan', '--timeout', '-5', 'x'], 'argument --timeout: expected a number > 0'),
    (['plan', '--timeout', 'nan', 'x'], 'argument --timeout: expected a number > 0'),
    (['plan', '--max-new-tokens', '0', 'x'],
     'argument --max-new-tokens: expected an integer >= 1'),
    (['plan', '--draft-tokens', '-1', 'x'], 'argument --draft-tokens: expected an integer >= 0'),
    (['plan', '--draft-tokens', 'two', 'x'], 'argument --draft-tokens: expected an integer >= 0'),
    (['evaluate', '--batch', '0'], 'argument --batch: expected an integer >= 1'),
    (['evaluate', '--max-new-tokens', '-3'], 'argument --max-new-tokens'),
])
def test_numeric_options_are_checked_by_argparse(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_numeric_options_at_their_limits_are_accepted():
    args = cli.build_parser().parse_args(['plan', '--timeout', '0.5', '--max-new-tokens', '1',
                                          '--draft-tokens', '0', 'x'])
    assert (args.remote_timeout_s, args.max_new_tokens, args.draft_tokens) == (0.5, 1, 0)
    assert cli.build_parser().parse_args(['evaluate', '--batch', '1']).batch == 1


def test_blank_stdin_lines_are_skipped(capsys, monkeypatch, server):
    code, lines, err = _plan(capsys, monkeypatch, '去厨房\n\n   \n去厨房\r\n\n', server=server)
    assert code == 0, err
    assert [(m['id'], m['command'], m['status']) for m in lines] == [
        ('cli-1', '去厨房', 'ok'), ('cli-2', '去厨房', 'ok')]


def test_plan_exit_codes(capsys, monkeypatch, server):
    assert _plan(capsys, monkeypatch, '', '去厨房', server=server)[0] == 0
    code, lines, _ = _plan(capsys, monkeypatch, '', '去厨房', '今天天气怎么样', server=server)
    assert code == 1  # a no-task answer is `rejected`: not ok
    assert [m['status'] for m in lines] == ['ok', 'rejected']
    code, lines, _ = _plan(capsys, monkeypatch, '', '跳个舞', server=server)
    assert (code, lines[0]['status']) == (1, 'invalid')
    code, lines, _ = _plan(capsys, monkeypatch, '', '', server=server)  # an empty argument
    assert (code, lines[0]['status']) == (1, 'rejected')


def test_plan_exit_code_2_when_the_planner_cannot_load(capsys, monkeypatch, tmp_path):
    missing = str(tmp_path / 'nope')
    code, lines, err = _plan(capsys, monkeypatch, '', '--model', missing, '--device', 'cpu',
                             '去厨房')
    assert (code, lines) == (2, [])
    assert 'plan: model.path: model directory %s does not exist' % missing in err
