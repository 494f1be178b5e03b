"""The offline command line: option validation, stdin commands and `cli plan` exit codes."""

import io
import json

import pytest
from robot_llm_planner import cli, settings
from robot_llm_planner.backend import Backend, Generation, ModelLoadError
from robot_llm_planner.planner import Planner
from robot_llm_planner.skills import SkillSet

ANSWERS = {'去厨房': '去厨房。移动到，厨房', '今天天气怎么样': '无法执行', '跳个舞': '跳舞。跳舞，我'}


class FakeBackend(Backend):
    """Answers each command from ANSWERS; counts the commands it was given."""

    name = 'fake'

    def __init__(self, fail_load=False):
        self.fail_load = fail_load
        self.commands = []

    def load(self):
        if self.fail_load:
            raise ModelLoadError('model.path: model directory /nope does not exist')

    def generate(self, commands, prompt, config):
        self.commands += commands
        return [Generation(ANSWERS[command]) for command in commands]

    def describe(self):
        return {'backend': 'fake', 'base': '', 'adapter': ''}


@pytest.fixture
def fake(monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(settings, 'build_planner',
                        lambda _settings: Planner(backend, SkillSet.load()))
    return backend


def _plan(capsys, monkeypatch, stdin, *argv):
    monkeypatch.setattr('sys.stdin', io.StringIO(stdin))
    code = cli.main(['plan', *argv])
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
    assert (args.timeout, args.max_new_tokens, args.draft_tokens) == (0.5, 1, 0)
    assert cli.build_parser().parse_args(['evaluate', '--batch', '1']).batch == 1


def test_blank_stdin_lines_are_skipped(capsys, monkeypatch, fake):
    code, lines, err = _plan(capsys, monkeypatch, '去厨房\n\n   \n去厨房\r\n\n')
    assert code == 0, err
    assert [(m['id'], m['command'], m['status']) for m in lines] == [
        ('cli-1', '去厨房', 'ok'), ('cli-2', '去厨房', 'ok')]


def test_plan_exit_codes(capsys, monkeypatch, fake):
    assert _plan(capsys, monkeypatch, '', '去厨房')[0] == 0
    code, lines, _ = _plan(capsys, monkeypatch, '', '去厨房', '今天天气怎么样')
    assert code == 1  # a no-task answer is `rejected`: not ok
    assert [m['status'] for m in lines] == ['ok', 'rejected']
    code, lines, _ = _plan(capsys, monkeypatch, '', '跳个舞')
    assert (code, lines[0]['status']) == (1, 'invalid')
    code, lines, _ = _plan(capsys, monkeypatch, '', '')  # an explicit empty argument
    assert (code, lines[0]['status']) == (1, 'rejected')


def test_plan_exit_code_2_when_the_planner_cannot_load(capsys, monkeypatch):
    backend = FakeBackend(fail_load=True)
    monkeypatch.setattr(settings, 'build_planner',
                        lambda _settings: Planner(backend, SkillSet.load()))
    code, lines, err = _plan(capsys, monkeypatch, '', '去厨房')
    assert (code, lines) == (2, [])
    assert 'plan: model.path: model directory /nope does not exist' in err
