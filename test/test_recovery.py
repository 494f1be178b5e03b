"""
Recovery: what achieves a missing fact (the core), and reactive py_trees trees that use it.

The core tests build :class:`Action` trees from the shipped skills and from skills files a
robot team could write. The tree tests tick real py_trees trees through the same
:class:`PlanRunner` plan_executor uses, with the simulated household's faults (failed
attempts, a dropped object, a door that closes again) and a clock the test advances; every
message is checked against config/plan_execution.schema.json, and every attempt's start
against the needs of its step (no step starts while a need is false).
"""

import importlib
import json
import os
import sys

import executor_behaviours
import pytest
from robot_llm_planner.core.plan import parse_plan, Step
from robot_llm_planner.core.recovery import (achiever, attempt_bound, Goal, parse_goal,
                                             reactive_plan)
from robot_llm_planner.core.skills import Retry, SkillSet
from robot_llm_planner.core.world import FactError
from robot_llm_planner.execution.behaviours import BehaviourMap, StepContext
from robot_llm_planner.execution.faults import Faults
from robot_llm_planner.execution.runner import PlanRunner
from robot_llm_planner.execution.simulation import SimulationSettings
from robot_llm_planner.execution.tree import CODES, SCHEMA_VERSION, STATUSES
from test_execution import BRING, Clock, events, plan, runner, SKILLS, validator

assert validator  # the schema fixture, shared with test_execution
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIVE = ('拿水给我', '寻找水；拿起水；递给我。寻找物体，水；拿起物体，水；递给，我')
FRIDGE = """
schema_version: 2
skills:
  打开: {required: [target], effects: [open(target)]}
  取出: {required: [target], optional: [location], requires: [open(location), hand_free],
         effects: [held(target)], retry: {attempts: 2, delay_s: 0}}
"""


def needs(action):
    """Return {need: [(inserted action, target, the goal it is for), ...]} of an action."""
    return {str(need.goal): [(a.step.action, a.step.target, str(a.achieves))
                             for a in need.achieve.walk()] if need.achieve else None
            for need in action.needs}


# ---------------------------------------------------------------------- the core
def test_each_need_is_achieved_by_the_skill_whose_effects_make_it_true():
    actions = reactive_plan(SKILLS, parse_plan(BRING[1]).steps)
    assert [needs(action) for action in actions] == [
        {},
        {'found(水)': [('寻找物体', '水', 'found(水)')], 'hand_free': None},
        {},
        # held(last) is the object the plan picked up last: 水
        {'held(水)': [('拿起物体', '水', 'held(水)'), ('寻找物体', '水', 'found(水)')],
         'at(我)': [('移动到', '我', 'at(我)')]}]
    assert [str(goal) for goal in actions[3].effects] == ['not held(水)']
    assert [action.skippable for action in actions] == [True, False, True, False]
    # every action at most its attempts: 4 plan steps and 4 inserted ones, 3 attempts each
    assert attempt_bound(actions) == 8 * 3
    assert achiever(SKILLS, Goal('open', '冰箱')) == Step('打开 冰箱', '打开', '冰箱')
    assert achiever(SKILLS, Goal('held', '杯子', True)).action == '放下物体'
    assert achiever(SKILLS, Goal('hand_free')) is None


def test_recovery_follows_a_robots_own_skills_and_never_loops(tmp_path):
    path = tmp_path / 'skills.yaml'
    path.write_text(FRIDGE + '  看: {required: [target], requires: [at(target)], '
                    'effects: [found(target)]}\n'
                    '  走: {required: [target], requires: [found(target)], '
                    'effects: [at(target)]}\n', encoding='utf-8')
    skills = SkillSet.load(str(path))
    (take,) = reactive_plan(skills, [Step('', '取出', '牛奶', '冰箱')])
    assert needs(take) == {'open(冰箱)': [('打开', '冰箱', 'open(冰箱)')], 'hand_free': None}
    assert take.retry == Retry(2, 0.0) and skills.retry_of('打开') == Retry()
    # 看 needs at(X), which 走 makes true, which needs found(X): the goal 看 is for
    (look,) = reactive_plan(skills, [Step('', '看', '门')])
    assert needs(look) == {'at(门)': [('走', '门', 'at(门)'), ('看', '门', 'found(门)')]}
    assert needs(look.needs[0].achieve.needs[0].achieve) == {'at(门)': None}


@pytest.mark.parametrize('text,message', [
    ('held', 'held needs a thing'), ('held()', 'held needs a thing'),
    ('grasped(杯子)', "unknown predicate 'grasped'"), ('hand_free(杯子)', 'takes no argument'),
    (3, 'is not a fact about a thing'), ('found 杯子', 'is not a fact about a thing')])
def test_reported_facts_are_checked(text, message):
    with pytest.raises(FactError, match=message):
        parse_goal(text)


def test_a_behaviour_reports_a_fact_through_its_context():
    world = SKILLS.initial_state()
    world.held.append('遥控器')
    context = StepContext('p', 0, SKILLS, world, None)
    context.report_fact('held(遥控器)', False)
    context.report_fact('not closed( 冰箱 )', False)
    assert (world.held, world.closed) == ([], {'冰箱'})
    with pytest.raises(FactError, match='hand_free'):
        context.report_fact('hand_free', True)


# ---------------------------------------------------------------------- reactive trees
def false_starts(messages, plan_json, skills=SKILLS):
    """Return how many attempts started while a need of theirs was false (the benchmark's)."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        benchmark = importlib.import_module('recovery')
    finally:
        sys.path.pop(0)
    return benchmark.false_starts(messages, json.loads(plan_json), skills)


def tick_all(plan_runner, ticks=60):
    """Tick a second apart until the runner is idle; return the raw messages."""
    messages = []
    for _ in range(ticks):
        messages += plan_runner.tick()
        plan_runner.clock.now += 1.0
        if plan_runner.idle:
            break
    return messages


def test_a_pick_that_fails_twice_then_works_is_retried_and_the_plan_succeeds(validator):
    retrying = runner(fail='拿起物体=水*2')
    retrying.submit(plan('r1', BRING))
    messages = tick_all(retrying)
    assert [e for e in events(messages, validator) if e[1] == 1] == [
        ('r1', 1, 'RUNNING', '', ''),
        ('r1', 1, 'RETRYING', 'step_failed',
         'simulated failure of 拿起物体 水 (simulation.fail) (attempt 1 of 3)'),
        ('r1', 1, 'RUNNING', '', ''),
        ('r1', 1, 'RETRYING', 'step_failed',
         'simulated failure of 拿起物体 水 (simulation.fail) (attempt 2 of 3)'),
        ('r1', 1, 'RUNNING', '', ''), ('r1', 1, 'SUCCESS', '', '')]
    assert [m['attempt'] for m in messages if m['step'] == 1] == [1, 1, 2, 2, 3, 3]
    assert messages[-1]['status'] == 'SUCCESS' and messages[-1]['state']['place'] == '我'
    assert false_starts(messages, plan('r1', BRING)) == 0


def test_a_pick_that_always_fails_ends_in_failure_with_the_fact_and_what_was_tried(validator):
    clock = Clock()
    failing = runner(fail='拿起物体=水', clock=clock)
    failing.submit(plan('r2', BRING))
    bound = failing.current.max_attempts * (0.0 + 0.5) + 1.0  # attempts x (step + delay)
    messages = tick_all(failing)
    end = messages[-1]
    assert (end['step'], end['status'], end['code'], end['unmet']) == (
        None, 'FAILURE', 'step_failed', 'held(水)')
    assert end['reason'] == 'simulated failure of 拿起物体 水 (simulation.fail) (attempt 3 of 3)'
    assert end['tried'] == [{'action': '拿起物体', 'target': '水', 'location': '',
                             'attempts': 3, 'achieves': ''}]
    assert clock.now <= bound
    assert [e[1:3] for e in events(messages, validator)][-2:] == [
        (1, 'FAILURE'), (None, 'FAILURE')]


def test_a_dropped_object_is_found_and_picked_again(validator):
    dropping = runner(faults=Faults(disturbances='drop=水*1'))
    dropping.submit(plan('r3', BRING))
    messages = tick_all(dropping)
    assert messages[-1]['status'] == 'SUCCESS', events(messages, validator)
    changed = [(m['step'], m['changed'], m['reason']) for m in messages if m['changed']]
    assert changed == [(2, ['not held(水)'], 'reported by simulation.disturbances'),
                       (2, ['not found(水)'], 'reported by simulation.disturbances')]
    inserted = [(m['step'], m['recovery']['action'], m['recovery']['achieves'], m['status'])
                for m in messages if m['recovery']]
    assert inserted == [(3, '寻找物体', 'found(水)', 'RUNNING'),
                        (3, '寻找物体', 'found(水)', 'SUCCESS'),
                        (3, '拿起物体', 'held(水)', 'RUNNING'),
                        (3, '拿起物体', 'held(水)', 'SUCCESS')]
    assert messages[-1]['state']['held'] == []
    assert false_starts(messages, plan('r3', BRING)) == 0
    # the linear tree of the same plan stops at the hand-over
    linear = runner(faults=Faults(disturbances='drop=水*1'), recovery=False)
    linear.submit(plan('r4', BRING))
    messages = tick_all(linear)
    assert events(messages, validator)[-1] == (
        'r4', None, 'FAILURE', 'step_failed', 'step 4: 递给 needs the robot to hold something')
    assert false_starts(messages, plan('r4', BRING)) == 1  # the check sees such a start


def test_a_need_lost_while_a_step_runs_stops_it_and_starts_it_over(validator):
    # published without the preconditions check: recovery inserts the move to 我, and the
    # water slips out of the hand as the move begins
    moving = runner(duration=2.0, faults=Faults(disturbances='drop=水*1'))
    given = plan('r5', GIVE, preconditions=False)
    moving.submit(given)
    messages = tick_all(moving)
    assert messages[-1]['status'] == 'SUCCESS'
    move = [(m['status'], m['code'], m['attempt']) for m in messages
            if m['recovery'] and m['recovery']['action'] == '移动到']
    assert move == [('RUNNING', '', 1), ('RETRYING', 'interrupted', 1), ('RUNNING', '', 2),
                    ('SUCCESS', '', 2)]
    interrupted = next(m for m in messages if m['code'] == 'interrupted')
    assert interrupted['reason'] == 'interrupted: held(水) no longer holds (attempt 1 of 3)'
    assert false_starts(messages, given) == 0
    events(messages, validator)


def test_a_step_never_starts_in_the_tick_recovery_undid_one_of_its_needs(validator):
    # the move recovery inserts for at(我) shakes the water loose as it arrives, in the tick
    # the hand-over would start: the water is picked up again first
    shaky = runner('移动到=executor_behaviours:shaky_arrival')
    given = plan('r11', GIVE, preconditions=False)
    shaky.submit(given)
    messages = tick_all(shaky)
    assert messages[-1]['status'] == 'SUCCESS', events(messages, validator)
    assert [(m['status'], (m['recovery'] or {}).get('action'), m['attempt'], m['changed'])
            for m in messages if m['step'] == 2] == [
        ('RUNNING', '移动到', 1, []), ('RUNNING', None, 0, ['not held(水)']),
        ('SUCCESS', '移动到', 1, []),
        ('RUNNING', '拿起物体', 1, []), ('SUCCESS', '拿起物体', 1, []),
        ('RUNNING', None, 1, []), ('SUCCESS', None, 1, [])]
    assert false_starts(messages, given) == 0
    # the benchmark's check counts a hand-over started in the state the move left behind
    moved = next(m for m in messages if m['recovery'] and m['status'] == 'SUCCESS')
    act = next(m for m in messages if m['step'] == 2 and m['recovery'] is None
               and m['attempt'] == 1)
    assert false_starts([dict(act, state=moved['state'])], given) == 1


def test_an_effect_the_behaviour_reported_itself_is_not_applied_again(validator):
    gripping = runner('拿起物体=executor_behaviours:reporting_grip')
    gripping.submit(plan('r12', BRING))
    messages = tick_all(gripping)
    assert [(m['status'], m['changed'], m['state']['held']) for m in messages
            if m['step'] == 1] == [('RUNNING', [], []), ('RUNNING', ['held(水)'], ['水']),
                                   ('SUCCESS', [], ['水'])]  # one 水 in the hand, not two
    assert messages[-1]['status'] == 'SUCCESS' and messages[-1]['state']['held'] == []
    events(messages, validator)


def test_an_interrupted_last_attempt_ends_the_step_at_once(validator):
    # one attempt per skill: the move recovery inserts loses the water as it begins
    once = SkillSet(list(SKILLS), 'one attempt', SKILLS.max_held, Retry(1, 0.5))
    clock = Clock()
    moving = PlanRunner(once, BehaviourMap(once), SimulationSettings(
        2.0, Faults(disturbances='drop=水*1'), clock), clock=clock)
    moving.submit(plan('r13', GIVE, preconditions=False))
    messages = tick_all(moving)
    reason = 'interrupted: held(水) no longer holds (attempt 1 of 1, none left)'
    assert events(messages, validator)[-3:] == [
        ('r13', 2, 'FAILURE', 'interrupted', reason),
        ('r13', 2, 'FAILURE', 'interrupted', '移动到 我 (for at(我)): ' + reason),
        ('r13', None, 'FAILURE', 'interrupted', '移动到 我 (for at(我)): ' + reason)]
    assert (messages[-1]['unmet'], messages[-1]['tried']) == ('held(水)', [
        {'action': '移动到', 'target': '我', 'location': '', 'attempts': 1,
         'achieves': 'at(我)'}])
    assert not any(m['status'] == 'RETRYING' for m in messages)  # no retry was left
    assert [m['recovery']['action'] for m in messages if m['recovery']] == ['移动到'] * 2


def test_a_lost_need_nothing_makes_true_ends_the_step_without_a_retry(validator):
    filling = runner('拿起物体=executor_behaviours:filled_hands')
    filling.submit(plan('r14', BRING))
    messages = tick_all(filling)
    assert [e[2:] for e in events(messages, validator) if e[1] == 1][-1] == (
        'FAILURE', 'precondition_unmet', '拿起物体 水 needs hand_free: no skill makes it true')
    assert not any(m['status'] == 'RETRYING' for m in messages)


@pytest.mark.parametrize('recovery', [True, False])
def test_an_attempt_without_a_result_is_stopped_after_its_timeout(validator, recovery):
    del executor_behaviours.EVENTS[:]
    bounded = SkillSet(list(SKILLS), 'a timeout', SKILLS.max_held, Retry(2, 0.0, 3.0))
    clock = Clock()
    stuck = PlanRunner(bounded, BehaviourMap(bounded, '移动到=executor_behaviours:never_ends'),
                       SimulationSettings(0.0, Faults(), clock), recovery=recovery,
                       clock=clock)
    stuck.submit(plan('r15', BRING))
    messages = tick_all(stuck)
    reason = 'no result within retry.timeout_s = 3 s'
    assert [e[2:] for e in events(messages, validator) if e[1] == 2] == [
        ('RUNNING', '', ''), ('RETRYING', 'step_failed', reason + ' (attempt 1 of 2)'),
        ('RUNNING', '', ''), ('FAILURE', 'step_failed', reason + ' (attempt 2 of 2)'),
    ] if recovery else [('RUNNING', '', ''), ('FAILURE', 'step_failed', reason)]
    assert (messages[-1]['status'], messages[-1]['reason']) == ('FAILURE', messages[-2]['reason'])
    assert executor_behaviours.EVENTS == [('移动到 我', 'INVALID')] * (2 if recovery else 1)
    # the plan ends in the tick at 7 s (3 s, the next tick, 3 s) or at 3 s; tick_all adds 1 s
    assert clock.now == (8.0 if recovery else 4.0)


def test_a_step_whose_effects_hold_is_skipped(validator):
    skipping = runner()
    skipping.submit(plan('r6', ('去厨房再去厨房', '去厨房；去厨房。移动到，厨房；移动到，厨房')))
    assert events(tick_all(skipping), validator)[-2:] == [
        ('r6', 1, 'SUCCESS', '', 'skipped: its effects already hold: at(厨房)'),
        ('r6', None, 'SUCCESS', '', '')]


def test_a_door_that_closes_again_is_opened_before_taking_out(tmp_path, validator):
    path = tmp_path / 'skills.yaml'
    path.write_text(FRIDGE, encoding='utf-8')
    skills = SkillSet.load(str(path))
    clock = Clock()
    simulation = SimulationSettings(0.0, Faults(disturbances='close=冰箱*1'), clock)
    fridge = PlanRunner(skills, BehaviourMap(skills), simulation, clock=clock)
    message = {'id': 'r7', 'status': 'ok', 'command': '从冰箱拿牛奶', 'steps': [
        {'action': '打开', 'target': '冰箱', 'location': ''},
        {'action': '取出', 'target': '牛奶', 'location': '冰箱'}]}
    fridge.submit(json.dumps(message, ensure_ascii=False))
    messages = tick_all(fridge)
    assert [(m['step'], m['status'], m['code'], (m['recovery'] or {}).get('action'))
            for m in messages if m['step'] == 1] == [
        (1, 'RUNNING', '', None), (1, 'RUNNING', '', None),   # the attempt; the door closes
        (1, 'RETRYING', 'step_failed', None),
        (1, 'RUNNING', '', '打开'), (1, 'SUCCESS', '', '打开'),
        (1, 'RUNNING', '', None), (1, 'SUCCESS', '', None)]
    assert messages[-1]['status'] == 'SUCCESS' and messages[-1]['state']['held'] == ['牛奶']
    assert false_starts(messages, json.dumps(message), skills) == 0
    # with no door opened first, recovery opens it before the first attempt
    fridge.submit(json.dumps(dict(message, id='r8', steps=message['steps'][1:]),
                             ensure_ascii=False))
    first = tick_all(fridge)
    assert [(m['status'], (m['recovery'] or {}).get('action')) for m in first
            if m['step'] == 0] == [('RUNNING', '打开'), ('SUCCESS', '打开'),
                                   ('RUNNING', None), ('SUCCESS', None)]
    events(messages + first, validator)


def test_an_unachievable_need_fails_the_step_before_it_starts(validator):
    # published without the preconditions check: nothing found it, and finding always fails
    lost = runner(fail='寻找物体=水')
    take = ('拿水', '拿起水。拿起物体，水')
    lost.submit(plan('r9', take, preconditions=False))
    messages = tick_all(lost)
    end = messages[-1]
    assert (end['status'], end['code']) == ('FAILURE', 'precondition_unmet')
    assert end['unmet'] == 'found(水)'
    assert end['reason'] == ('拿起物体 水 needs found(水): 寻找物体 水 did not: simulated failure '
                             'of 寻找物体 水 (simulation.fail) (attempt 3 of 3)')
    assert end['tried'] == [{'action': '寻找物体', 'target': '水', 'location': '',
                             'attempts': 3, 'achieves': 'found(水)'}]
    assert not any(m['recovery'] is None and m['status'] == 'RUNNING' and m['step'] == 0
                   for m in messages)  # the pick never started
    assert [(m['status'], m['attempt']) for m in messages if m['recovery']] == [
        ('RUNNING', 1), ('RETRYING', 1), ('RUNNING', 2), ('RETRYING', 2), ('RUNNING', 3),
        ('FAILURE', 3)]
    events(messages, validator)


def test_fault_entries_and_rates_are_checked_and_seeded():
    with pytest.raises(ValueError, match="simulation.disturbances: 'melt' is not a disturb"):
        Faults(disturbances='melt=冰')
    with pytest.raises(ValueError, match='fail_rate must be from 0 to 1'):
        Faults(fail_rate=1.5)
    step = Step('', '拿起物体', '杯子')

    def draws(seed):
        faults = Faults(fail_rate=0.5, seed=seed)
        return [faults.failure(step) for _ in range(200)]

    assert draws(7) == draws(7) and draws(7) != draws(8)  # the same seed, the same failures
    assert 60 < sum(bool(reason) for reason in draws(7)) < 140
    assert 'simulated failure of 拿起物体 杯子 (simulation.fail_rate 0.5)' in draws(7)


def test_a_plan_stopped_between_attempts_ends_the_waiting_step(validator):
    waiting = runner(fail='拿起物体=水')
    waiting.submit(plan('r10', BRING))
    before = waiting.tick()  # the clock stands still: the pick waits for its second attempt
    assert [(m['step'], m['status']) for m in before][-1] == (1, 'RETRYING')
    assert events(waiting.shutdown(), validator) == [
        ('r10', 1, 'FAILURE', 'shutting_down', 'the executor shut down'),
        ('r10', None, 'FAILURE', 'shutting_down', 'the executor shut down')]


def test_the_schema_has_every_status_and_code_the_executor_writes(validator):
    properties = validator.schema['properties']
    assert properties['status']['enum'] == list(STATUSES)
    assert set(properties['code']['enum']) == {''} | set(CODES)
    assert properties['schema_version'] == {'const': SCHEMA_VERSION}
