"""
Plans executed by py_trees in-process: the tree, the simulated household, the policies.

Real py_trees trees are ticked; the plans are /action_plan messages made by the planner's own
output checks (:class:`OutputCheck`), with preconditions off where a test needs an impossible
plan to reach the executor. Time is a clock the test advances. Every message is checked
against config/plan_execution.schema.json.
"""

import json

import executor_behaviours
import jsonschema
import py_trees
import pytest
from robot_llm_planner.core.output_check import OutputCheck
from robot_llm_planner.core.skills import package_share_path, SkillSet
from robot_llm_planner.execution.behaviours import (BehaviourError, BehaviourMap, load_factory,
                                                    parse_mapping)
from robot_llm_planner.execution.faults import Faults, parse_rules, Rule
from robot_llm_planner.execution.runner import PlanRunner
from robot_llm_planner.execution.simulation import SimulationSettings

SKILLS = SkillSet.load()
BRING = ('把水拿给我', '寻找水；拿起水；走到我身边；把水递给我。寻找物体，水；拿起物体，水；移动到，我；递给，我')
FETCH = ('去厨房拿杯子', '去厨房；在厨房寻找杯子；拿起杯子。移动到，厨房；寻找物体，杯子，厨房；'
         '拿起物体，杯子，厨房')
HAND_ONLY = ('把水递给我', '把水递给我。递给，我')


def plan(request_id, command_answer, preconditions=True):
    """Return the /action_plan JSON the planner publishes for this answer."""
    command, answer = command_answer
    result = OutputCheck(SKILLS, preconditions=preconditions).check(command, answer)
    return json.dumps(result.message(request_id), ensure_ascii=False)


class Clock:
    """Seconds the test advances by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture(scope='module')
def validator():
    with open(package_share_path('config', 'plan_execution.schema.json'),
              encoding='utf-8') as stream:
        schema = json.load(stream)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def runner(mapping='', default=None, duration=0.0, fail='', clock=None, faults=None,
           **kwargs):
    behaviours = BehaviourMap(SKILLS, mapping, *(() if default is None else (default,)))
    clock = clock or Clock()
    simulation = SimulationSettings(duration, faults or Faults(fail), clock)
    return PlanRunner(SKILLS, behaviours, simulation, clock=clock, **kwargs)


def events(messages, validator):
    for message in messages:
        validator.validate(message)
    return [(m['plan_id'], m['step'], m['status'], m['code'], m['reason']) for m in messages]


def run_out(plan_runner, validator, ticks=20):
    """Tick ``ticks`` times, a second apart; return the events."""
    messages = []
    for _ in range(ticks):
        messages += plan_runner.tick()
        plan_runner.clock.now += 1.0
    return events(messages, validator)


def test_a_plan_runs_step_by_step_in_the_simulated_household(validator):
    clock = Clock()
    simulated = runner(duration=1.0, clock=clock)
    messages, note = simulated.submit(plan('p1', BRING))
    assert note == '' and events(messages, validator) == [('p1', None, 'RUNNING', '', '')]
    seen = []
    for second in range(6):
        ticked = simulated.tick()
        seen += ticked
        clock.now += 1.0
    assert events(seen, validator) == [
        ('p1', 0, 'RUNNING', '', ''), ('p1', 0, 'SUCCESS', '', ''),
        ('p1', 1, 'RUNNING', '', ''), ('p1', 1, 'SUCCESS', '', ''),
        ('p1', 2, 'RUNNING', '', ''), ('p1', 2, 'SUCCESS', '', ''),
        ('p1', 3, 'RUNNING', '', ''), ('p1', 3, 'SUCCESS', '', ''),
        ('p1', None, 'SUCCESS', '', '')]
    # each step takes its second: one step ends per tick after the first
    assert [m['state']['held'] for m in seen if m['status'] == 'SUCCESS'] == [
        [], ['水'], ['水'], [], []]
    assert seen[-1]['state']['place'] == '我' and seen[-1]['steps'] == 4
    assert seen[0]['action'] == '寻找物体' and seen[0]['target'] == '水'
    assert simulated.idle


def test_a_failing_step_stops_the_linear_tree_and_says_why(validator):
    failing = runner(fail='拿起物体=水', recovery=False)
    failing.submit(plan('p2', BRING))
    assert run_out(failing, validator) == [
        ('p2', 0, 'RUNNING', '', ''), ('p2', 0, 'SUCCESS', '', ''),
        ('p2', 1, 'RUNNING', '', ''),
        ('p2', 1, 'FAILURE', 'step_failed', 'simulated failure of 拿起物体 水 (simulation.fail)'),
        ('p2', None, 'FAILURE', 'step_failed',
         'simulated failure of 拿起物体 水 (simulation.fail)')]


def test_the_household_refuses_a_step_whose_preconditions_do_not_hold(validator):
    # a plan the planner would refuse, published with validation.preconditions off
    simulated = runner(recovery=False)
    simulated.submit(plan('p3', HAND_ONLY, preconditions=False))
    assert run_out(simulated, validator) == [
        ('p3', 0, 'RUNNING', '', ''),
        ('p3', 0, 'FAILURE', 'step_failed', 'step 1: 递给 needs the robot to hold something'),
        ('p3', None, 'FAILURE', 'step_failed', 'step 1: 递给 needs the robot to hold something')]


def test_plugged_behaviours_run_their_skills_and_the_state_follows(validator):
    mapping = '移动到=executor_behaviours:navigate_to'
    plugged = runner(mapping, recovery=False)
    plugged.submit(plan('p4', FETCH))
    messages = []
    for _ in range(5):
        messages += plugged.tick()
    assert [m['status'] for m in messages if m['step'] is None] == ['SUCCESS']
    assert messages[-1]['state'] == {'place': '厨房', 'found': ['杯子'], 'held': ['杯子'],
                                     'open': [], 'closed': []}
    # a place the robot's map does not have: the plugged behaviour's reason
    plugged.submit(plan('p5', ('去阳台', '去阳台。移动到，阳台')))
    assert run_out(plugged, validator)[-1] == (
        'p5', None, 'FAILURE', 'step_failed', 'no pose for 阳台 on the map')


def test_queue_policy_runs_plans_in_turn_and_refuses_one_too_many(validator):
    executor_behaviours.RELEASED['done'] = False
    queued = runner('拿起物体=executor_behaviours:gripper', policy='queue', max_queued=1)
    first, _ = queued.submit(plan('q1', BRING))
    second, note = queued.submit(plan('q2', BRING))
    assert (second, note) == ([], 'plan q2 waits behind 1')
    third, _ = queued.submit(plan('q3', BRING))
    assert events(third, validator) == [
        ('q3', None, 'FAILURE', 'queue_full', '1 plans are waiting already '
         '(execution.max_queued)')]
    before = events(first + queued.tick() + queued.tick(), validator)
    assert before[-1] == ('q1', 1, 'RUNNING', '', '')  # holding on to the gripper
    executor_behaviours.RELEASED['done'] = True
    after = run_out(queued, validator)
    assert [e for e in after if e[1] is None] == [
        ('q1', None, 'SUCCESS', '', ''), ('q2', None, 'RUNNING', '', ''),
        ('q2', None, 'SUCCESS', '', '')]
    assert queued.idle


def test_preempt_policy_stops_the_running_behaviour_and_starts_the_new_plan(validator):
    executor_behaviours.RELEASED['done'] = False
    del executor_behaviours.EVENTS[:]
    preempting = runner('拿起物体=executor_behaviours:gripper', policy='preempt')
    preempting.submit(plan('a', BRING))
    run_out(preempting, validator, ticks=3)
    assert executor_behaviours.EVENTS == [('拿起物体 水', 'initialise')]
    messages, _ = preempting.submit(plan('b', FETCH))
    assert events(messages, validator) == [
        ('a', 1, 'FAILURE', 'preempted', 'preempted by plan b'),
        ('a', None, 'FAILURE', 'preempted', 'preempted by plan b'),
        ('b', None, 'RUNNING', '', '')]
    # the gripper was told to stop (py_trees_ros action clients cancel their goal here)
    assert executor_behaviours.EVENTS[-1] == ('拿起物体 水', 'INVALID')
    # a plan that cannot start preempts nothing
    unknown = json.loads(plan('c', FETCH))
    unknown['steps'][1]['action'] = '飞行'
    messages, _ = preempting.submit(json.dumps(unknown, ensure_ascii=False))
    assert [m['code'] for m in messages] == ['not_executable']
    assert preempting.current.plan['id'] == 'b'
    executor_behaviours.RELEASED['done'] = True
    assert run_out(preempting, validator)[-1] == ('b', None, 'SUCCESS', '', '')


def test_messages_that_cannot_run_get_a_clear_answer(validator):
    simulated = runner()
    assert simulated.submit('not json')[0][0]['code'] == 'not_executable'
    messages, note = simulated.submit(json.dumps({'status': 'ok'}))
    assert note == 'not an /action_plan message: no "id"' and messages[0]['plan_id'] == ''
    invalid = plan('i1', HAND_ONLY)  # refused by the planner: not this executor's business
    assert simulated.submit(invalid) == ([], 'plan i1 is invalid: not executed')
    unknown = json.loads(plan('u1', FETCH))
    unknown['steps'][0]['action'] = '飞行'
    messages, _ = simulated.submit(json.dumps(unknown, ensure_ascii=False))
    assert events(messages, validator) == [
        ('u1', None, 'FAILURE', 'not_executable', "step 1: '飞行' is not a skill of this robot "
         '(known: %s)' % '、'.join(SKILLS.names()))]
    for steps, reason in (([], 'the plan has no steps'), ([{'action': '移动到', 'target': 3}],
                          'step 1 is not an object with string action, target, location')):
        messages, _ = simulated.submit(json.dumps(dict(unknown, id='m1', steps=steps)))
        assert events(messages, validator) == [('m1', None, 'FAILURE', 'not_executable', reason)]
    no_default = runner('移动到=executor_behaviours:navigate_to', default='')
    messages, _ = no_default.submit(plan('n1', FETCH))
    assert events(messages, validator) == [
        ('n1', None, 'FAILURE', 'not_executable', 'step 2: no behaviour runs 寻找物体 '
         '(behaviours.default is empty and behaviours.skills does not name it)')]
    assert simulated.idle and no_default.idle


@pytest.mark.parametrize('mapping,reason', [
    ('拿起物体=executor_behaviours:raising_factory',
     "step 2: the behaviour factory of 拿起物体 raised KeyError: '水'"),
    ('拿起物体=executor_behaviours:not_a_behaviour',
     'step 2: the behaviour factory of 拿起物体 returned str, not a py_trees behaviour'),
])
def test_a_broken_factory_fails_the_plan_before_it_starts(validator, mapping, reason):
    messages, _ = runner(mapping).submit(plan('f1', BRING))
    assert events(messages, validator) == [('f1', None, 'FAILURE', 'behaviour_error', reason)]


def test_a_behaviour_that_raises_ends_the_plan(validator):
    crashing = runner('拿起物体=executor_behaviours:crashing')
    crashing.submit(plan('c1', BRING))
    assert run_out(crashing, validator)[-2:] == [
        ('c1', 1, 'FAILURE', 'behaviour_error', 'a behaviour raised RuntimeError: gripper '
         'driver crashed'),
        ('c1', None, 'FAILURE', 'behaviour_error', 'a behaviour raised RuntimeError: gripper '
         'driver crashed')]
    assert crashing.idle


def test_shutdown_stops_the_running_plan_and_drops_the_waiting_ones(validator):
    executor_behaviours.RELEASED['done'] = False
    stopping = runner('拿起物体=executor_behaviours:gripper')
    stopping.submit(plan('s1', BRING))
    stopping.submit(plan('s2', BRING))
    stopping.tick()
    assert events(stopping.shutdown(), validator) == [
        ('s1', 1, 'FAILURE', 'shutting_down', 'the executor shut down'),
        ('s1', None, 'FAILURE', 'shutting_down', 'the executor shut down'),
        ('s2', None, 'FAILURE', 'shutting_down', 'the executor shut down')]
    assert stopping.idle


@pytest.mark.parametrize('mapping,message', [
    ('移动到', "'移动到': write skill=package.module:callable"),
    ('飞行=executor_behaviours:navigate_to', '飞行 is not a skill of'),
    ('移动到=executor_behaviours:navigate_to; 移动到=executor_behaviours:gripper',
     'skill 移动到 is given twice'),
    ('移动到=executor_behaviours', "'executor_behaviours' is not a behaviour factory name"),
    ('移动到=no_such_module_here:go', 'cannot import no_such_module_here '
     "\\(ModuleNotFoundError: No module named 'no_such_module_here'\\)"),
    ('移动到=executor_behaviours:missing', 'executor_behaviours has no missing'),
    ('移动到=executor_behaviours:NOT_CALLABLE', 'is not callable'),
])
def test_behaviour_mappings_are_checked_when_the_map_is_built(mapping, message):
    with pytest.raises(BehaviourError, match=message):
        BehaviourMap(SKILLS, mapping)


def test_mapping_and_failure_texts():
    assert parse_mapping(' 移动到 = a.b:c ,递给=d:e;\n', SKILLS) == {'移动到': 'a.b:c', '递给': 'd:e'}
    assert load_factory('executor_behaviours:Gripper') is executor_behaviours.Gripper
    assert parse_rules('拿起物体=一瓶 水; 递给, 拿起物体=遥控器*2') == [
        Rule('拿起物体', '一瓶 水'), Rule('递给', ''), Rule('拿起物体', '遥控器', 2)]
    with pytest.raises(ValueError, match="'=水': write name, name=target or name=target"):
        parse_rules('=水')
    with pytest.raises(ValueError, match="'拿起物体\\*0': the count after \\* must be"):
        parse_rules('拿起物体*0')
    behaviours = BehaviourMap(SKILLS, '递给=executor_behaviours:gripper')
    assert behaviours.factory('递给') is executor_behaviours.gripper
    assert behaviours.factory('飞行') is None
    assert behaviours.names['移动到'] == 'robot_llm_planner.execution.simulation:simulated_skill'


def test_the_tree_is_a_sequence_with_memory_of_one_behaviour_per_step():
    simulated = runner(duration=5.0)
    simulated.submit(plan('t1', BRING))
    root = simulated.current.tree.root
    assert isinstance(root, py_trees.composites.Sequence) and root.memory
    assert [child.name for child in root.children] == ['1 寻找物体 水', '2 拿起物体 水',
                                                       '3 移动到 我', '4 递给 我']
    assert all(len(child.children) == 1 for child in root.children)
