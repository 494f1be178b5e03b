"""
One plan as a py_trees tree, and the /plan_execution messages its run produces.

The tree is a ``Sequence`` with memory whose children are one
:class:`~.reactive.PlanStep` per plan step, in plan order: reactive, with recovery
(``execution.recovery``, the default), or linear (each step's behaviour tried once), as
:mod:`.reactive` describes. Each step's behaviour comes from its skill's factory; an inserted
recovery step gets one from the same factory. The plan's symbolic state follows the skills'
``effects`` as actions succeed, whatever behaviour ran them, and the facts behaviours report
(:meth:`~.behaviours.StepContext.report_fact`).

A /plan_execution message (config/plan_execution.schema.json)::

    {schema_version, plan_id, command, step, steps, action, target, location, status,
     code, reason, state, stamp, attempt, recovery, unmet, tried, changed}

``step`` is the step's index (null for a message about the whole plan), ``status`` RUNNING,
SUCCESS, RETRYING (an attempt failed or was interrupted; the action is not over) or FAILURE,
``code`` empty or why (:data:`CODES`), ``state`` the symbolic state after the event (null when
the plan never ran), ``attempt`` the attempt's number (0: none ran), ``recovery`` the inserted
step a message is about (null: the plan's own step), ``unmet`` the fact a failed step lacked,
``tried`` what ran for it, ``changed`` the facts a behaviour reported.
"""

import time
from typing import Callable, Dict, List, Optional

import py_trees
from robot_llm_planner.core.message import message_steps
from robot_llm_planner.core.plan import Step
from robot_llm_planner.core.recovery import Action, attempt_bound, Goal, parse_goal, \
    reactive_plan
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.world import FactError, WorldState
from robot_llm_planner.execution.behaviours import BehaviourMap, StepContext
from robot_llm_planner.execution.reactive import build_step, FAILURE, RETRYING, RUNNING, \
    SUCCESS

SCHEMA_VERSION = 2
STATUSES = (RUNNING, SUCCESS, RETRYING, FAILURE)  # config/plan_execution.schema.json's
# Why a step or plan ended other than by running to success.
CODES = {
    'step_failed': 'a step failed: the behaviour returned FAILURE (reason: its feedback)',
    'precondition_unmet': 'a fact the step needs does not hold and recovery could not make '
                          'it true (unmet: the fact; tried: what ran)',
    'interrupted': 'a running attempt was stopped: a fact it needs stopped holding (RETRYING, '
                   'or FAILURE when it was the last attempt)',
    'preempted': 'a newer plan took over (execution.policy preempt)',
    'queue_full': 'execution.max_queued plans were already waiting',
    'not_executable': 'the plan cannot be run here (no steps, an unknown skill, no behaviour)',
    'behaviour_error': 'a behaviour factory, setup or tick raised an exception',
    'shutting_down': 'the executor stopped before the plan ended',
    'invalid_parameters': 'the executor has invalid parameters and runs no plan',
}
_STATUS = {py_trees.common.Status.RUNNING: RUNNING, py_trees.common.Status.SUCCESS: SUCCESS,
           py_trees.common.Status.FAILURE: FAILURE}


def execution_message(plan: dict, status: str, step: Optional[int] = None, code: str = '',
                      reason: str = '', state: Optional[WorldState] = None,
                      **fields) -> dict:
    """
    Return one /plan_execution message about ``plan`` (an /action_plan message).

    ``fields`` are the recovery fields: ``attempt``, ``recovery``, ``unmet``, ``tried``,
    ``changed`` (their defaults: 0, None, '', [], []).
    """
    steps = plan.get('steps') if isinstance(plan.get('steps'), list) else []
    about = steps[step] if step is not None and step < len(steps) else {}
    about = about if isinstance(about, dict) else {}
    return {
        'schema_version': SCHEMA_VERSION,
        'plan_id': str(plan.get('id', '')),
        'command': str(plan.get('command', '')),
        'step': step,
        'steps': len(steps),
        'action': str(about.get('action', '')),
        'target': str(about.get('target', '')),
        'location': str(about.get('location', '')),
        'status': status,
        'code': code,
        'reason': reason,
        'state': state.describe() if state is not None else None,
        'stamp': time.time(),
        'attempt': fields.get('attempt', 0),
        'recovery': fields.get('recovery'),
        'unmet': fields.get('unmet', ''),
        'tried': list(fields.get('tried', [])),
        'changed': list(fields.get('changed', [])),
    }


def plan_steps(plan: dict, skills: SkillSet) -> List[Step]:
    """Return the steps of an ok /action_plan message; ValueError says why it cannot run."""
    steps = message_steps(plan.get('steps'))
    for index, step in enumerate(steps):
        if step.action not in skills:
            raise ValueError('step %d: %r is not a skill of this robot (known: %s)' % (
                index + 1, step.action, '、'.join(skills.names())))
    return steps


class PlanRun:
    """One ok plan being executed: its tree, its symbolic state and its messages."""

    def __init__(self, plan: dict, skills: SkillSet, behaviours: BehaviourMap,
                 simulation, setup: Optional[Dict] = None, setup_timeout_s: float = 30.0,
                 recovery: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        """
        Build the tree of ``plan`` (an ok /action_plan message), set it up, report RUNNING.

        ``recovery`` chooses the reactive tree (else the linear one); ``clock`` times the
        delays between attempts. ``setup`` are the keyword arguments for
        ``BehaviourTree.setup`` (a ROS node passes ``node=...`` so that py_trees_ros
        behaviours find it), which may take ``setup_timeout_s``. Raises ValueError when the
        plan cannot run (code ``not_executable``) and :class:`BehaviourFailed` when a factory
        or the setup raises (code ``behaviour_error``); nothing is reported then.
        """
        self.plan, self.skills, self.clock = plan, skills, clock
        self.behaviours, self.simulation = behaviours, simulation
        self.world = skills.initial_state()
        self.messages: List[dict] = []
        self.warnings: List[str] = []  # what went wrong after the plan ended (for the log)
        self.running: List[tuple] = []  # (step, recovery, attempt) started and not over
        self.reported: List[Goal] = []  # the facts behaviours reported, as they hold now
        self.finished = self.stopping = False
        self.actions: List[Action] = reactive_plan(skills, plan_steps(plan, skills))
        children = [build_step(self, action, self._behaviour, recovery)
                    for action in self.actions]
        # the most attempts the plan can take (each action at most its retry.attempts)
        self.max_attempts = attempt_bound(self.actions) if recovery else len(self.actions)
        root = py_trees.composites.Sequence(name=str(plan.get('id', 'plan')), memory=True,
                                            children=children)
        self.tree = py_trees.trees.BehaviourTree(root)
        try:
            self.tree.setup(timeout=setup_timeout_s, **(setup or {}))
        except Exception as exc:
            raise BehaviourFailed('behaviour setup failed: %s: %s'
                                  % (type(exc).__name__, exc)) from exc
        self.report(RUNNING)

    def _behaviour(self, action: Action) -> Optional[py_trees.behaviour.Behaviour]:
        """Return the behaviour of ``action`` from its skill's factory (None: inserted, none)."""
        index, step = action.index, action.step
        factory = self.behaviours.factory(step.action)
        if factory is None:
            if action.achieves is not None:
                return None
            raise ValueError('step %d: no behaviour runs %s (behaviours.default is empty '
                             'and behaviours.skills does not name it)'
                             % (index + 1, step.action))
        context = StepContext(str(self.plan.get('id', '')), index, self.skills, self.world,
                              self.simulation, self.on_fact)
        what = '%s for %s' % (step.action, action.achieves) if action.achieves else step.action
        try:
            behaviour = factory(step, context)
        except Exception as exc:
            raise BehaviourFailed('step %d: the behaviour factory of %s raised %s: %s' % (
                index + 1, what, type(exc).__name__, exc)) from exc
        if not isinstance(behaviour, py_trees.behaviour.Behaviour):
            raise BehaviourFailed('step %d: the behaviour factory of %s returned %s, not a '
                                  'py_trees behaviour' % (index + 1, what,
                                                          type(behaviour).__name__))
        return behaviour

    def on_fact(self, index: int, fact: str, true: bool, by: str = '') -> None:
        """Apply a fact a behaviour of step ``index`` reported, and record it."""
        goal = parse_goal(fact)
        if goal.predicate == 'hand_free':
            raise FactError('%r: hand_free follows from what is held: report held(thing)'
                            % fact)
        now = Goal(goal.predicate, goal.value, goal.negated == true)  # what holds now
        now.make_true(self.world)
        self.reported.append(now)
        self.report(RUNNING, index, reason='reported by %s' % (by or "the step's behaviour"),
                    changed=[str(now)])

    def report(self, status: str, step: Optional[int] = None, code: str = '',
               reason: str = '', **fields) -> None:
        """Record a /plan_execution message about the plan or one of its steps."""
        if step is not None and not fields.get('changed'):
            key = (step, fields.get('recovery'))
            if status == RUNNING:
                self.running = [entry for entry in self.running if entry[:2] != key]
                self.running.append(key + (fields.get('attempt', 0),))
            elif status != RETRYING:  # a step that ends ends what was inserted for it too
                self.running = [entry for entry in self.running if entry[:2] != key and (
                    entry[0] != step or fields.get('recovery') is not None)]
        self.messages.append(execution_message(self.plan, status, step, code, reason,
                                               self.world, **fields))

    def take(self) -> List[dict]:
        """Return the messages recorded since the last call."""
        messages, self.messages = self.messages, []
        return messages

    def tick(self) -> List[dict]:
        """Tick the tree once; return the messages it produced (the last one ends the plan)."""
        if self.finished:
            return self.take()
        try:
            self.tree.tick()
        except Exception as exc:  # a behaviour raised: the plan cannot go on
            return self.stop('behaviour_error', 'a behaviour raised %s: %s'
                             % (type(exc).__name__, exc))
        status = self.tree.root.status
        if status in (py_trees.common.Status.SUCCESS, py_trees.common.Status.FAILURE):
            self._finish(_STATUS[status])
        return self.take()

    def _finish(self, status: str, code: str = '', reason: str = '') -> None:
        fields = {}
        if status == FAILURE and not code:
            failed = [m for m in self.messages if m['status'] == FAILURE
                      and m['step'] is not None and m['recovery'] is None]
            code, reason = 'step_failed', 'the plan failed'
            if failed:
                code, reason = failed[-1]['code'], failed[-1]['reason']
                fields = {'unmet': failed[-1]['unmet'], 'tried': failed[-1]['tried']}
        self.report(status, None, code, reason, **fields)
        self.finished = True
        try:
            self.tree.shutdown()
        except Exception as exc:  # the plan has ended; the log says what went wrong
            self.warnings.append('plan %s: behaviour shutdown raised %s: %s' % (
                self.plan.get('id', ''), type(exc).__name__, exc))

    def stop(self, code: str, reason: str) -> List[dict]:
        """Stop the plan (running behaviours are terminated); return the messages."""
        if not self.finished:
            self.stopping = True
            self.tree.root.stop(py_trees.common.Status.INVALID)
            for step, recovery, attempt in list(self.running):
                self.report(FAILURE, step, code, reason, attempt=attempt, recovery=recovery)
            self._finish(FAILURE, code, reason)
        return self.take()


class BehaviourFailed(RuntimeError):
    """A behaviour factory or the tree's setup raised: the plan cannot start."""
