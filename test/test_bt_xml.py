"""
Plans as BehaviorTree.CPP v4 XML, loaded and ticked by BehaviorTree.CPP itself.

The C++ side is test/btcpp/skill_runner.cpp: a robot's application in miniature that
registers the ``Skill`` node with its ports declared in C++ and prints what reaches each tick
(built against BehaviorTree.CPP 4.8.2 by :mod:`btcpp_harness`). The XML comes from
``cli bt-xml`` and from /action_plan messages of a planner answering over a real remote
backend (:class:`doubles.FakeOpenAIServer`).
"""

import io
import json
import os
import subprocess
import xml.etree.ElementTree as ElementTree

from btcpp_harness import skill_runner
from planner_harness import schema_validator
import pytest
from robot_llm_planner.cli import commands as cli
from robot_llm_planner.core.bt_xml import (BtXmlError, nodes_model_xml, plan_to_bt_xml,
                                           recovery_bt_xml, unsafe_value)
from robot_llm_planner.core.plan import parse_plan, Step
from robot_llm_planner.core.planner import Planner
from robot_llm_planner.core.skills import Retry, SkillSet
from robot_llm_planner.inference.openai_backend import OpenAIBackend

SKILLS = SkillSet.load()
# UTF-8 everywhere, and every character XML escapes.
COMMAND = '把"小熊"<玩具> & 书放到R&D 的\'桌子\'上，再拿给我'
ANSWER = ('寻找"小熊"<玩具> & 书；拿起"小熊"<玩具> & 书；把它放到R&D 的\'桌子\'上；寻找"小熊"<玩具> & 书；'
          '拿起"小熊"<玩具> & 书；走到我身边；递给我。'
          '寻找物体，"小熊"<玩具> & 书；拿起物体，"小熊"<玩具> & 书；'
          '放下物体，"小熊"<玩具> & 书，R&D 的\'桌子\'上；寻找物体，"小熊"<玩具> & 书；'
          '拿起物体，"小熊"<玩具> & 书；移动到，我；递给，我')


def _message(request_id='plan-1', command=COMMAND, answer=ANSWER, status='ok'):
    plan = parse_plan(answer, command)
    return {'id': request_id, 'command': command, 'status': status,
            'steps': [{'index': i, 'description': s.description, 'action': s.action,
                       'target': s.target, 'location': s.location}
                      for i, s in enumerate(plan.steps)]}


def _expected_ticks(message):
    return [[s['description'], s['action'], s['target'], s['location']]
            for s in message['steps']]


def _bt_xml(capsys, monkeypatch, stdin, *argv):
    monkeypatch.setattr('sys.stdin', io.StringIO(stdin))
    code = cli.main(['bt-xml', *argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- the XML itself
def test_a_plan_is_a_sequence_of_skill_nodes_in_plan_order():
    message = _message()
    root = ElementTree.fromstring(plan_to_bt_xml('plan-1', message['steps']).encode('utf-8'))
    assert root.tag == 'root' and root.attrib == {'BTCPP_format': '4',
                                                  'main_tree_to_execute': 'plan-1'}
    (tree,) = list(root)
    assert (tree.tag, tree.attrib) == ('BehaviorTree', {'ID': 'plan-1'})
    (sequence,) = list(tree)
    assert sequence.tag == 'Sequence'
    assert [[n.tag, n.get('name'), n.get('action'), n.get('target'), n.get('location')]
            for n in sequence] == [['Skill'] + tick for tick in _expected_ticks(message)]
    assert all(set(node.attrib) == {'name', 'action', 'target', 'location'} for node in sequence)


def test_values_blackboard_readers_would_misread_are_refused():
    steps = [Step('找', '寻找物体', '杯子'), Step('拿', '拿起物体', '{杯子}')]
    assert unsafe_value(steps) == ("step 2: the target '{杯子}' holds { or }, which "
                                   'BehaviorTree.CPP reads as a blackboard reference')
    for bad in (Step('放', '放下物体', '杯子', '桌}上'), Step('a\x01', '寻找物体', '杯子'),
                Step('拿', '拿起物体', '杯\x0b子')):
        with pytest.raises(BtXmlError):
            plan_to_bt_xml('p', [bad])
    with pytest.raises(BtXmlError, match='a plan without steps has no behavior tree'):
        plan_to_bt_xml('p', [])
    # line breaks and tabs are characters XML keeps in an attribute when escaped
    root = ElementTree.fromstring(plan_to_bt_xml('p\x02', [Step('a\nb', '寻找物体', 'x\ty')]))
    assert root.get('main_tree_to_execute') == 'p'
    assert root.find('./BehaviorTree/Sequence/Skill').get('name') == 'a\nb'


def test_recovery_xml_reads_the_steps_as_plan_executor_does():
    with pytest.raises(BtXmlError, match='step 2 is not an object with string action'):
        steps = [{'action': '寻找物体', 'target': '水'}, {'action': '递给', 'target': None}]
        recovery_bt_xml('p', steps, SKILLS)
    with pytest.raises(BtXmlError, match="step 1: '飞行' is not a skill of this robot"):
        recovery_bt_xml('p', [{'action': '飞行', 'target': '水'}], SKILLS)


def test_the_nodes_model_lists_the_ports_and_skills():
    root = ElementTree.fromstring(nodes_model_xml(SKILLS).encode('utf-8'))
    (action,) = root.findall('./TreeNodesModel/Action')
    assert action.get('ID') == 'Skill'
    ports = {port.get('name'): port for port in action.findall('input_port')}
    assert list(ports) == ['action', 'target', 'location']
    assert {port.get('type') for port in ports.values()} == {'std::string'}
    assert all(name in ports['action'].text for name in SKILLS.names())


def test_cli_bt_xml_writes_ok_plans_and_says_why_others_have_no_tree(capsys, monkeypatch,
                                                                     tmp_path):
    good = _message('a/1')
    lines = [json.dumps(good, ensure_ascii=False), '',
             json.dumps(_message('b', status='invalid'), ensure_ascii=False),
             'not json', json.dumps(_message('c', answer='拿。拿起物体，{x}', command='拿{x}')),
             json.dumps(_message('a/1'), ensure_ascii=False)]
    stdin = '\n'.join(lines) + '\n'
    code, out, err = _bt_xml(capsys, monkeypatch, stdin)
    assert code == 1
    assert out == recovery_bt_xml('a/1', good['steps'], SKILLS) * 2
    assert _bt_xml(capsys, monkeypatch, stdin, '--linear')[1] == plan_to_bt_xml(
        'a/1', good['steps']) * 2
    assert err.splitlines() == [
        'bt-xml: line 3 (id b) is invalid, not an ok plan: no tree',
        'bt-xml: line 4 is not JSON: Expecting value: line 1 column 1 (char 0)',
        "bt-xml: line 5 (id c): step 1: the target '{x}' holds { or }, which BehaviorTree.CPP "
        'reads as a blackboard reference']
    out_dir = tmp_path / 'trees'
    code, out, err = _bt_xml(capsys, monkeypatch, lines[0] + '\n' + lines[-1] + '\n', '--out',
                             str(out_dir), '--linear')
    assert (code, err) == (0, '')
    assert out.split() == [str(out_dir / 'a_1.xml'), str(out_dir / 'a_1-2.xml')]
    assert (out_dir / 'a_1.xml').read_text(encoding='utf-8') == plan_to_bt_xml(
        'a/1', good['steps'])
    code, out, err = _bt_xml(capsys, monkeypatch, '', '--nodes-model')
    assert (code, out, err) == (0, nodes_model_xml(SKILLS), '')
    code, out, err = _bt_xml(capsys, monkeypatch, '', str(tmp_path / 'missing.jsonl'))
    assert code == 2 and 'missing.jsonl' in err


@pytest.fixture
def server(server):
    """Return the conftest's FakeOpenAIServer, answering this file's commands."""
    server.answers.update({COMMAND: ANSWER, '拿{x}': '拿{x}。寻找物体，{x}'})
    return server


def test_message_bt_xml_adds_the_tree_to_ok_plans(server):
    validator = schema_validator()
    planner = Planner(OpenAIBackend(server.url, 'fake'), SKILLS, bt_xml=True)
    planner.load()
    ok, unsafe = planner.plan_batch([COMMAND, '拿{x}'])
    message = ok.message('req-7')
    validator.validate(message)
    assert message['status'] == 'ok'
    # the structure plan_executor runs, as `cli bt-xml` writes it by default
    assert message['bt_xml'] == recovery_bt_xml('req-7', message['steps'], SKILLS)
    # the plan comes from the cache the second time; the tree is named after the new request
    again = planner.plan(COMMAND)
    assert again.timing['cached'] and 'main_tree_to_execute="req-8"' in again.message(
        'req-8')['bt_xml']
    refused = unsafe.message('req-9')
    validator.validate(refused)
    assert refused['status'] == 'invalid' and 'bt_xml' not in refused
    assert [e['code'] for e in refused['errors']] == ['bt_xml_unsafe_value']
    plain = Planner(OpenAIBackend(server.url, 'fake'), SKILLS).plan(COMMAND).message('r')
    assert plain['status'] == 'ok' and 'bt_xml' not in plain
    assert Planner(OpenAIBackend(server.url, 'fake'), SKILLS).plan('拿{x}').status == 'ok'
    linear = Planner(OpenAIBackend(server.url, 'fake'), SKILLS, bt_xml=True, bt_xml_linear=True)
    message = linear.plan(COMMAND).message('req-10')
    assert message['bt_xml'] == plan_to_bt_xml('req-10', message['steps'])


# ---------------------------------------------------------------------- BehaviorTree.CPP
@pytest.fixture(scope='module')
def runner():
    return skill_runner()


def _tick(runner, xml, tmp_path, *argv):
    path = tmp_path / 'plan.xml'
    path.write_text(xml, encoding='utf-8')
    result = subprocess.run([runner, str(path), *argv], capture_output=True, text=True,
                            timeout=60)
    lines = result.stdout.splitlines()
    ticks = [json.loads(line)[:4] for line in lines if line.startswith('[')]
    status = [line for line in lines if line.startswith('status ')]
    return result.returncode, ticks, status, result.stderr


def _results(runner, xml, tmp_path, *faults):
    """Return (exit status, [(name, action, target, its status, unmet needs)], final status)."""
    path = tmp_path / 'plan.xml'
    path.write_text(xml, encoding='utf-8')
    result = subprocess.run([runner, str(path), *faults], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode in (0, 1), result.stderr
    ticks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('[')]
    return (result.returncode, [(t[0], t[1], t[2], t[4], t[5]) for t in ticks],
            result.stdout.splitlines()[-1])


def test_behaviortree_cpp_ticks_every_step_in_order_with_its_values(
        runner, capsys, monkeypatch, tmp_path):
    message = _message()
    code, xml, err = _bt_xml(capsys, monkeypatch, json.dumps(message, ensure_ascii=False),
                             '--linear')
    assert (code, err) == (0, '')
    code, ticks, status, stderr = _tick(runner, xml, tmp_path)
    assert (code, status, stderr) == (0, ['status SUCCESS'], '')
    assert ticks == _expected_ticks(message)
    assert ticks[2][3] == "R&D 的'桌子'上" and ticks[0][3] == ''  # escaped, and empty


def test_a_failing_skill_stops_the_sequence(runner, tmp_path):
    message = _message()
    code, ticks, status, _ = _tick(runner, plan_to_bt_xml('p', message['steps']), tmp_path,
                                   '移动到')
    assert (code, status) == (1, ['status FAILURE'])
    assert ticks == _expected_ticks(message)[:6]  # the hand-over never runs


REMOTE = ('把遥控器拿给我', '寻找遥控器；拿起遥控器；走到我身边；把遥控器递给我。寻找物体，遥控器；拿起物体，遥控器；'
          '移动到，我；递给，我')


def _recovery_xml(capsys, monkeypatch):
    message = _message('remote-1', *REMOTE)
    code, xml, err = _bt_xml(capsys, monkeypatch, json.dumps(message, ensure_ascii=False))
    assert (code, err) == (0, '') and '<ReactiveSequence' in xml
    return xml


def test_behaviortree_cpp_retries_a_pick_that_fails_twice_and_the_plan_succeeds(
        runner, capsys, monkeypatch, tmp_path):
    code, ticks, status = _results(runner, _recovery_xml(capsys, monkeypatch), tmp_path,
                                   '拿起物体*2')
    assert (code, status) == (0, 'status SUCCESS')
    assert [(t[0], t[3]) for t in ticks] == [
        ('寻找遥控器', 'SUCCESS'), ('拿起遥控器', 'FAILURE'), ('拿起遥控器', 'FAILURE'),
        ('拿起遥控器', 'SUCCESS'), ('走到我身边', 'SUCCESS'), ('把遥控器递给我', 'SUCCESS')]
    assert all(t[4] == '' for t in ticks)  # no Skill started with a need false


def test_behaviortree_cpp_recovers_with_the_tree_an_action_plan_message_carries(
        runner, server, tmp_path):
    server.answers[REMOTE[0]] = REMOTE[1]
    planner = Planner(OpenAIBackend(server.url, 'fake'), SKILLS, bt_xml=True)
    message = planner.plan(REMOTE[0]).message('req-1')
    assert message['status'] == 'ok', message['errors']
    code, ticks, status = _results(runner, message['bt_xml'], tmp_path, 'drop=遥控器')
    assert (code, status) == (0, 'status SUCCESS')
    assert [t[1:4] for t in ticks][-3:] == [
        ('寻找物体', '遥控器', 'SUCCESS'), ('拿起物体', '遥控器', 'SUCCESS'), ('递给', '我', 'SUCCESS')]
    linear = Planner(OpenAIBackend(server.url, 'fake'), SKILLS, bt_xml=True, bt_xml_linear=True)
    code, ticks, status = _results(runner, linear.plan(REMOTE[0]).message('req-2')['bt_xml'],
                                   tmp_path, 'drop=遥控器')
    assert (code, status) == (1, 'status FAILURE')


def test_behaviortree_cpp_ends_a_pick_that_always_fails_after_its_attempts(
        runner, capsys, monkeypatch, tmp_path):
    code, ticks, status = _results(runner, _recovery_xml(capsys, monkeypatch), tmp_path,
                                   '拿起物体')
    assert (code, status) == (1, 'status FAILURE')
    assert [(t[1], t[3]) for t in ticks] == [('寻找物体', 'SUCCESS')] + [
        ('拿起物体', 'FAILURE')] * SKILLS.retry_of('拿起物体').attempts


def test_behaviortree_cpp_finds_and_picks_a_dropped_object_again(
        runner, capsys, monkeypatch, tmp_path):
    code, ticks, status = _results(runner, _recovery_xml(capsys, monkeypatch), tmp_path,
                                   'drop=遥控器')
    assert (code, status) == (0, 'status SUCCESS')
    assert [(t[0], t[3], t[4]) for t in ticks] == [
        ('寻找遥控器', 'SUCCESS', ''), ('拿起遥控器', 'SUCCESS', ''), ('走到我身边', 'SUCCESS', ''),
        ('寻找物体 遥控器 (for found(遥控器))', 'SUCCESS', ''),
        ('拿起物体 遥控器 (for held(遥控器))', 'SUCCESS', ''), ('把遥控器递给我', 'SUCCESS', '')]
    # the linear tree hands over what it no longer holds
    code, ticks, status = _results(runner, plan_to_bt_xml('p', _message('p', *REMOTE)['steps']),
                                   tmp_path, 'drop=遥控器')
    assert (code, ticks[-1][3:]) == (1, ('FAILURE', ' held(last)'))


def test_behaviortree_cpp_starts_no_skill_in_the_tick_recovery_undid_one_of_its_needs(
        runner, tmp_path):
    # no move in the plan: recovery inserts it for at(我), and the remote slips out of the
    # hand as the move ends, in the tick the hand-over would start
    message = _message('give-1', '把遥控器给我', '寻找遥控器；拿起遥控器；把遥控器递给我。寻找物体，遥控器；'
                       '拿起物体，遥控器；递给，我')
    xml = recovery_bt_xml('give-1', message['steps'], SKILLS)
    code, ticks, status = _results(runner, xml, tmp_path, 'slip=遥控器')
    assert (code, status) == (0, 'status SUCCESS')
    assert [(t[0], t[3], t[4]) for t in ticks] == [
        ('寻找遥控器', 'SUCCESS', ''), ('拿起遥控器', 'SUCCESS', ''),
        ('移动到 我 (for at(我))', 'SUCCESS', ''),
        ('寻找物体 遥控器 (for found(遥控器))', 'SUCCESS', ''),
        ('拿起物体 遥控器 (for held(遥控器))', 'SUCCESS', ''), ('把遥控器递给我', 'SUCCESS', '')]


def test_behaviortree_cpp_halts_a_skill_without_a_result_after_its_timeout(runner, tmp_path):
    bounded = SkillSet(list(SKILLS), 'a timeout', SKILLS.max_held, Retry(2, 0.0, 0.2))
    xml = recovery_bt_xml('remote-2', _message('remote-2', *REMOTE)['steps'], bounded)
    assert xml.count('<Timeout msec="200">') == 16  # 2 tries each of 4 steps, 4 inserted
    code, ticks, status = _results(runner, xml, tmp_path, 'hang=移动到*1')
    assert (code, status) == (0, 'status SUCCESS')
    assert [(t[1], t[3]) for t in ticks] == [
        ('寻找物体', 'SUCCESS'), ('拿起物体', 'SUCCESS'), ('移动到', 'RUNNING'), ('移动到', 'HALTED'),
        ('移动到', 'SUCCESS'), ('递给', 'SUCCESS')]
    # a skill that never ends: two attempts, each halted, and the tree ends in FAILURE
    code, ticks, status = _results(runner, xml, tmp_path, 'hang=移动到')
    assert (code, status) == (1, 'status FAILURE')
    assert [(t[1], t[3]) for t in ticks][2:] == [('移动到', 'RUNNING'), ('移动到', 'HALTED')] * 2
    # without a timeout_s, no Timeout
    assert '<Timeout' not in recovery_bt_xml('remote-2', _message('remote-2', *REMOTE)['steps'],
                                             SkillSet(list(SKILLS)))


def test_behaviortree_cpp_reads_braces_as_a_blackboard_reference(runner, tmp_path):
    # why bt-xml refuses { and }: written as is, the value never reaches the node
    xml = plan_to_bt_xml('p', [Step('找', '寻找物体', 'KEY')]).replace('"KEY"', '"{杯子}"')
    code, ticks, _, stderr = _tick(runner, xml, tmp_path)
    assert code != 0 and ticks == []
    assert stderr


def test_the_nodes_model_matches_what_behaviortree_cpp_writes(runner):
    result = subprocess.run([runner, '--nodes-model'], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr

    def ports(text):
        root = ElementTree.fromstring(text.encode('utf-8'))
        return {(node.tag, node.get('ID'), port.tag, port.get('name'), port.get('type'))
                for node in root.find('TreeNodesModel') for port in node}

    assert ports(nodes_model_xml(SKILLS)) == ports(result.stdout)


def test_the_example_application_is_the_one_the_docs_show():
    # docs/behavior_trees.md shows the Skill node a robot registers: the one tested here
    with open(os.path.join(os.path.dirname(__file__), 'btcpp', 'skill_runner.cpp'),
              encoding='utf-8') as stream:
        source = stream.read()
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'docs',
                           'behavior_trees.md'), encoding='utf-8') as stream:
        docs = stream.read()
    start = source.index('  static BT::PortsList providedPorts()')
    block = source[start:source.index('  }\n', start) + 4]
    assert block in docs
