"""
Skill semantics and preconditions: every shipped label runs, impossible plans are refused.

The planner's checks are run through a real remote backend answering from a scripted HTTP
server (:class:`doubles.FakeOpenAIServer`), and ``cli validate`` through its ``main``, so
the test can compare what the two publish for the same answers.
"""

import glob
import io
import json
import os

from doubles import FakeOpenAIServer
from planner_harness import schema_validator
import pytest
from robot_llm_planner.cli import commands as cli
from robot_llm_planner.core.output_check import OutputCheck
from robot_llm_planner.core.plan import parse_plan, Step
from robot_llm_planner.core.planner import Planner
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.world import parse_fact, WorldState
from robot_llm_planner.inference.openai_backend import OpenAIBackend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKILLS = SkillSet.load()

# (command, answer, the precondition error or None)
CASES = [
    ('把水递给我', '把水递给我。递给，我', 'step 1: 递给 needs the robot to hold something'),
    ('把水拿给我', '寻找水；拿起水；把水递给我。寻找物体，水；拿起物体，水；递给，我',
     'step 3: 递给 needs the robot to be at 我 (it has not moved yet)'),
    ('把水拿给妈妈，别给爸爸', '寻找水；拿起水；去爸爸身边；把水递给妈妈。寻找物体，水；拿起物体，水；'
     '移动到，爸爸；递给，妈妈', 'step 4: 递给 needs the robot to be at 妈妈 (it is at 爸爸)'),
    ('拿水', '拿起水。拿起物体，水', 'step 1: 拿起物体 needs 水 to be found first'),
    ('拿一瓶水，那个水瓶', '寻找一瓶水；拿起水瓶。寻找物体，一瓶水；拿起物体，水瓶',
     'step 2: 拿起物体 needs 水瓶 to be found first'),
    ('去厨房把杯子放到桌子上', '去厨房；把杯子放到桌子上。移动到，厨房；放下物体，杯子，桌子上',
     'step 2: 放下物体 needs the robot to hold 杯子 (it holds nothing)'),
    ('把水给我再放到桌子上', '寻找水；拿起水；去我身边；把水递给我；把水放到桌子上。寻找物体，水；'
     '拿起物体，水；移动到，我；递给，我；放下物体，水，桌子上',
     'step 5: 放下物体 needs the robot to hold 水 (it holds nothing)'),
    ('拿书笔杯碗', '寻找书；拿起书；寻找笔；拿起笔；寻找杯；拿起杯；寻找碗；拿起碗。寻找物体，书；'
     '拿起物体，书；寻找物体，笔；拿起物体，笔；寻找物体，杯；拿起物体，杯；寻找物体，碗；'
     '拿起物体，碗',
     'step 8: 拿起物体 needs a free hand (the robot holds 3 objects, the most it can: 书、笔、杯)'),
    # what the data set does: two objects at once, the same object twice, closing twice
    ('先把毛巾拿过来，接着拿充电器给弟弟', '寻找毛巾；拿起毛巾；寻找充电器；拿起充电器；走到弟弟身边；'
     '把充电器递给弟弟。寻找物体，毛巾；拿起物体，毛巾；寻找物体，充电器；拿起物体，充电器；'
     '移动到，弟弟；递给，弟弟', None),
    ('你能先拿药，之后拿一下药吗？', '寻找药；拿起药；寻找药；拿起药。寻找物体，药；拿起物体，药；'
     '寻找物体，药；拿起物体，药', None),
    ('关上冰箱门，接着把冰箱门关上', '关上冰箱门；关上冰箱门。关闭，冰箱门；关闭，冰箱门', None),
    ('去厨房拿一个苹果', '去厨房；在厨房寻找一个苹果；拿起一个苹果。移动到，厨房；'
     '寻找物体，一个苹果，厨房；拿起物体，一个苹果，厨房', None),
]


def _labels():
    paths = sorted(glob.glob(os.path.join(ROOT, 'training', 'data', 'task2_prompt0_*.json')))
    rows = []
    for path in paths:
        with open(path, encoding='utf-8') as stream:
            rows += [(os.path.basename(path), row) for row in json.load(stream)]
    return rows


def test_every_shipped_label_satisfies_the_preconditions():
    labels = _labels()
    planned = 0
    for name, row in labels:
        plan = parse_plan(row['output'], row['input'])
        if plan.no_task:
            continue
        planned += 1
        assert SKILLS.check_preconditions(plan) == [], (name, row['input'], row['output'])
    # the four shipped splits: train, validation, test and the hand-written commands
    assert {name for name, _ in labels} == {'task2_prompt0_%s.json' % split for split in (
        'train', 'validation', 'test', 'manual')}
    assert planned > 3500


@pytest.mark.parametrize('command,answer,error', CASES)
def test_impossible_plans_name_the_step_and_the_reason(command, answer, error):
    plan = parse_plan(answer, command)
    assert plan.ok and SKILLS.validate(plan) == []
    errors = SKILLS.check_preconditions(plan)
    if error is None:
        assert errors == []
        return
    assert [(e.code, e.message) for e in errors] == [('precondition_failed', error)]
    assert errors[0].step == int(error.split()[1].rstrip(':')) - 1


def test_the_state_follows_the_effects():
    plan = parse_plan(CASES[8][1])  # two objects held, the one picked up last is handed over
    state = SKILLS.initial_state()
    for index, step in enumerate(plan.steps):
        assert SKILLS.unmet(state, step, index) is None
        SKILLS.apply_effects(state, step)
    assert state.describe() == {'place': '弟弟', 'found': ['充电器', '毛巾'], 'held': ['毛巾'],
                                'open': [], 'closed': []}
    twice = SKILLS.initial_state()
    for step in parse_plan(CASES[9][1]).steps + [Step('', '放下物体', '药', '桌上')]:
        SKILLS.apply_effects(twice, step)
    assert twice.held == ['药']  # one of the two was put down
    doors = SKILLS.initial_state()
    for action in ('打开', '关闭', '打开'):
        SKILLS.apply_effects(doors, Step('', action, '冰箱门'))
    assert (doors.opened, doors.closed) == ({'冰箱门'}, set())


def test_every_fact_of_the_vocabulary(tmp_path):
    # a robot's own semantics: a fridge must be open to take from it, the robot must be where
    # a door is to open it, and an empty optional argument is not checked
    path = tmp_path / 'skills.yaml'
    path.write_text(
        'state: {max_held: 1}\n'
        'skills:\n'
        '  开: {required: [target], optional: [location], requires: [at(location), '
        'not open(target)], effects: [open(target)]}\n'
        '  关: {required: [target], requires: [open(target)], effects: [closed(target)]}\n'
        '  取: {required: [target], requires: [not closed(target), hand_free, '
        'not held(target)], effects: [held(target), found(target)]}\n'
        '  丢: {required: [target], requires: [held(last), found(target)], '
        'effects: [not held(last), not found(target)]}\n'
        '  走: {required: [target], requires: [not at(target), not held(last)], '
        'effects: [at(target)]}\n', encoding='utf-8')
    skills = SkillSet.load(str(path))
    assert skills.max_held == 1

    def failure(text):
        errors = skills.check_preconditions(parse_plan(text))
        return errors[0].message if errors else None

    assert failure('a。开，门') is None  # no location: at(location) is not checked
    assert failure('a；b。走，厨房；开，门，厨房') is None
    assert failure('a。开，门，厨房') == 'step 1: 开 needs the robot to be at 厨房 (it has not ' \
        'moved yet)'
    assert failure('a；b。开，门；开，门') == 'step 2: 开 needs 门 not to be open'
    assert failure('a。关，门') == 'step 1: 关 needs 门 to be open'
    assert failure('a；b；c。开，门；关，门；取，门') == 'step 3: 取 needs 门 not to be closed'
    assert failure('a；b。取，杯；取，碗') == (
        'step 2: 取 needs a free hand (the robot holds 1 object, the most it can: 杯)')
    assert failure('a；b。取，杯；走，厨房') == 'step 2: 走 needs the robot to hold nothing ' \
        '(it holds 杯)'
    assert failure('a；b。走，厨房；走，厨房') == 'step 2: 走 needs the robot not to be at 厨房 ' \
        '(it is at 厨房)'
    assert failure('a；b；c。取，杯；丢，杯；丢，杯') == 'step 3: 丢 needs the robot to hold ' \
        'something'
    assert failure('a；b；c。取，杯；丢，杯；取，杯') is None


def test_facts_read_back_as_written():
    for text in ('at(target)', 'not held(last)', 'hand_free', 'not closed(location)'):
        assert str(parse_fact(text)) == text
    assert parse_fact('  not   found( target ) ') == parse_fact('not found(target)')
    assert WorldState().describe() == {'place': '', 'found': [], 'held': [], 'open': [],
                                       'closed': []}


def test_the_answer_check_publishes_an_impossible_plan_invalid():
    validator = schema_validator()
    command, answer, error = CASES[0]
    on = OutputCheck(SKILLS).check(command, answer)
    assert on.status == 'invalid'
    message = on.message('p-1')
    validator.validate(message)
    assert message['errors'] == [{'code': 'precondition_failed', 'message': error, 'step': 0}]
    off = OutputCheck(SKILLS, preconditions=False).check(command, answer)
    assert off.status == 'ok' and off.errors == []
    # a plan that is not made of this robot's skills is not simulated: its own error says why
    unknown = OutputCheck(SKILLS).check('跳舞给我看', '跳舞；递给我。跳舞，我；递给，我')
    assert [e.code for e in unknown.errors] == ['unknown_action']


@pytest.fixture
def server():
    fake = FakeOpenAIServer()
    fake.answers.update({command: answer for command, answer, _ in CASES})
    yield fake
    fake.close()


def _validate(capsys, monkeypatch, stdin, *argv):
    monkeypatch.setattr('sys.stdin', io.StringIO(stdin))
    code = cli.main(['validate', *argv])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def _essentials(message):
    return (message['command'], message['status'], message['steps'], message['errors'])


@pytest.mark.parametrize('preconditions', [True, False])
def test_the_planner_and_cli_validate_publish_the_same_answer(capsys, monkeypatch, server,
                                                              preconditions):
    planner = Planner(OpenAIBackend(server.url, 'fake'), SKILLS, cache_size=0,
                      preconditions=preconditions)
    planner.load()
    commands = [command for command, _, _ in CASES]
    planned = [result.message('r') for result in planner.plan_batch(commands)]
    stdin = ''.join(json.dumps({'command': c, 'output': a}, ensure_ascii=False) + '\n'
                    for c, a, _ in CASES)
    flag = '--preconditions' if preconditions else '--no-preconditions'
    code, validated, err = _validate(capsys, monkeypatch, stdin, flag)
    assert err == ''
    assert [_essentials(m) for m in validated] == [_essentials(m) for m in planned]
    impossible = [error is not None for _, _, error in CASES]
    statuses = ['invalid' if bad and preconditions else 'ok' for bad in impossible]
    assert [m['status'] for m in planned] == statuses
    assert code == (1 if preconditions else 0)
    validator = schema_validator()
    for message in validated:
        validator.validate(message)


def test_cli_validate_reads_run_files_and_answers_every_line(capsys, monkeypatch, tmp_path):
    lines = [
        json.dumps({'command': '拿水', 'predict': '拿起水。拿起物体，水', 'id': 'run-7',
                    'confidence': 0.5}, ensure_ascii=False),
        '',  # blank lines are no answers
        'not json',
        json.dumps({'output': '去厨房。移动到，厨房'}),
        json.dumps({'prompt': '<|im_start|>user\n去厨房<|im_end|>\n<|im_start|>assistant\n',
                    'predict': '去厨房。移动到，厨房', 'confidence': 0.5}, ensure_ascii=False),
        json.dumps({'command': '去厨房', 'output': '去厨房。移动到，厨房', 'confidence': 2}),
        json.dumps({'command': ' ', 'output': '去厨房。移动到，厨房'}),
    ]
    path = tmp_path / 'run.jsonl'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    code, messages, err = _validate(capsys, monkeypatch, '', str(path), '--min-confidence',
                                    '0.6')
    assert code == 1
    assert [(m['id'], m['status'], [e['code'] for e in m['errors']]) for m in messages] == [
        ('run-7', 'invalid', ['precondition_failed']),
        ('validate-2', 'rejected', ['invalid_request']),
        ('validate-3', 'rejected', ['invalid_request']),
        ('validate-4', 'invalid', ['low_confidence']),
        ('validate-5', 'rejected', ['invalid_request']),
        ('validate-6', 'rejected', ['empty_command'])]
    assert messages[0]['confidence'] == 0.5 and messages[3]['command'] == '去厨房'
    assert 'validate: line 2: not JSON' in err
    assert 'validate: line 3: "command" (or "prompt") is missing' in err
    assert 'validate: line 5: "confidence" must be a number from 0 to 1 or null, got 2' in err
    code, messages, _ = _validate(capsys, monkeypatch, lines[4] + '\n')
    assert (code, messages[0]['status']) == (0, 'ok')


def test_cli_validate_exit_code_2_for_a_broken_skills_file(capsys, monkeypatch, tmp_path):
    path = tmp_path / 'skills.yaml'
    path.write_text('skills: {拿起: {required: [target], requires: [grasped(target)]}}\n',
                    encoding='utf-8')
    code, messages, err = _validate(capsys, monkeypatch, '{}\n', '--skills', str(path))
    assert (code, messages) == (2, [])
    assert "unknown predicate 'grasped'" in err
    code, messages, err = _validate(capsys, monkeypatch, '', str(tmp_path / 'nope.jsonl'))
    assert (code, messages) == (2, []) and 'cannot read the input' in err
