"""
One plan as a py_trees tree, and the /plan_execution messages its run produces.

The tree is a ``Sequence`` with memory whose children are one :class:`SkillStep` per plan
step, each wrapping the behaviour its skill's factory made. A SkillStep reports when its
step starts (RUNNING) and ends (SUCCESS, or FAILURE with the behaviour's feedback message as
the reason; a step stopped from outside ends FAILURE with the plan's reason), and applies
the skill's ``effects`` to the plan's symbolic state when the step succeeds, whatever
behaviour ran it. A failing step fails the sequence: the later steps never
start.

A /plan_execution message (config/plan_execution.schema.json)::

    {schema_version, plan_id, command, step, steps, action, target, location, status,
     code, reason, state, stamp}

``step`` is the step's index (null for a message about the whole plan), ``status`` RUNNING,
SUCCESS or FAILURE, ``code`` empty or why the plan stopped (:data:`CODES`), ``state`` the
symbolic state after the event (null when the plan never ran).
"""

import time
from typing import Dict, List, Optional

import py_trees
from robot_llm_planner.core.plan import Step
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.world import WorldState
from robot_llm_planner.execution.behaviours import BehaviourMap, StepContext

SCHEMA_VERSION = 1
RUNNING, SUCCESS, FAILURE = 'RUNNING', 'SUCCESS', 'FAILURE'
# Why a step or plan ended other than by running to success.
CODES = {
    'step_failed': 'a step failed: the behaviour returned FAILURE (reason: its feedback)',
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
                      reason: str = '', state: Optional[WorldState] = None) -> dict:
    """Return one /plan_execution message about ``plan`` (an /action_plan message)."""
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
    }


def plan_steps(plan: dict, skills: SkillSet) -> List[Step]:
    """Return the steps of an ok /action_plan message; ValueError says why it cannot run."""
    steps = plan.get('steps')
    if not isinstance(steps, list) or not steps:
        raise ValueError('the plan has no steps')
    result = []
    for index, data in enumerate(steps):
        fields = ('action', 'target', 'location', 'description')
        if not isinstance(data, dict) or not all(
                isinstance(data.get(key, ''), str) for key in fields):
            raise ValueError('step %d is not an object with string action, target, location'
                             % (index + 1))
        if data.get('action') not in skills:
            raise ValueError('step %d: %r is not a skill of this robot (known: %s)' % (
                index + 1, data.get('action'), '、'.join(skills.names())))
        result.append(Step(data.get('description', ''), data['action'],
                           data.get('target', ''), data.get('location', '')))
    return result


class SkillStep(py_trees.decorators.Decorator):
    """One plan step: the behaviour its skill's factory made, reported and tracked."""

    def __init__(self, run: 'PlanRun', index: int, step: Step,
                 child: py_trees.behaviour.Behaviour) -> None:
        """Wrap ``child``, the behaviour running step ``index`` of ``run``."""
        super().__init__(name='%d %s %s' % (index + 1, step.action, step.target), child=child)
        self.run, self.index, self.step = run, index, step

    def initialise(self) -> None:
        """Report that the step starts."""
        self.run.report(RUNNING, self.index)

    def update(self) -> py_trees.common.Status:
        """Pass the behaviour's status on; on success apply the skill's effects."""
        status = self.decorated.status
        self.feedback_message = self.decorated.feedback_message
        if status == py_trees.common.Status.SUCCESS:
            self.run.skills.apply_effects(self.run.world, self.step)
            self.run.report(SUCCESS, self.index)
        elif status == py_trees.common.Status.FAILURE:
            self.run.report(FAILURE, self.index, 'step_failed', self.feedback_message or
                            'the %s behaviour failed' % self.step.action)
        return status


class PlanRun:
    """One ok plan being executed: its tree, its symbolic state and its messages."""

    def __init__(self, plan: dict, skills: SkillSet, behaviours: BehaviourMap,
                 simulation, setup: Optional[Dict] = None, setup_timeout_s: float = 30.0) -> None:
        """
        Build the tree of ``plan`` (an ok /action_plan message), set it up, report RUNNING.

        ``setup`` are the keyword arguments for ``BehaviourTree.setup`` (a ROS node passes
        ``node=...`` so that py_trees_ros behaviours find it), which may take
        ``setup_timeout_s``. Raises ValueError when the plan cannot run (code
        ``not_executable``) and :class:`BehaviourFailed` when a factory or the setup raises
        (code ``behaviour_error``); nothing is reported then.
        """
        self.plan, self.skills = plan, skills
        self.world = skills.initial_state()
        self.messages: List[dict] = []
        self.warnings: List[str] = []  # what went wrong after the plan ended (for the log)
        self.running: List[int] = []   # steps reported RUNNING that have not ended
        self.finished = False
        steps = plan_steps(plan, skills)
        children = []
        for index, step in enumerate(steps):
            factory = behaviours.factory(step.action)
            if factory is None:
                raise ValueError('step %d: no behaviour runs %s (behaviours.default is empty '
                                 'and behaviours.skills does not name it)'
                                 % (index + 1, step.action))
            context = StepContext(str(plan.get('id', '')), index, skills, self.world,
                                  simulation)
            try:
                behaviour = factory(step, context)
            except Exception as exc:
                raise BehaviourFailed('step %d: the behaviour factory of %s raised %s: %s' % (
                    index + 1, step.action, type(exc).__name__, exc)) from exc
            if not isinstance(behaviour, py_trees.behaviour.Behaviour):
                raise BehaviourFailed('step %d: the behaviour factory of %s returned %s, not a '
                                      'py_trees behaviour' % (index + 1, step.action,
                                                              type(behaviour).__name__))
            children.append(SkillStep(self, index, step, behaviour))
        root = py_trees.composites.Sequence(name=str(plan.get('id', 'plan')), memory=True,
                                            children=children)
        self.tree = py_trees.trees.BehaviourTree(root)
        try:
            self.tree.setup(timeout=setup_timeout_s, **(setup or {}))
        except Exception as exc:
            raise BehaviourFailed('behaviour setup failed: %s: %s'
                                  % (type(exc).__name__, exc)) from exc
        self.report(RUNNING)

    def report(self, status: str, step: Optional[int] = None, code: str = '',
               reason: str = '') -> None:
        """Record a /plan_execution message about the plan or one of its steps."""
        if step is not None:
            if status == RUNNING:
                self.running.append(step)
            elif step in self.running:
                self.running.remove(step)
        self.messages.append(execution_message(self.plan, status, step, code, reason,
                                               self.world))

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
        if status == FAILURE and not code:
            failed = [m for m in self.messages if m['status'] == FAILURE and m['step'] is not None]
            code = 'step_failed'
            reason = failed[-1]['reason'] if failed else 'the plan failed'
        self.report(status, None, code, reason)
        self.finished = True
        try:
            self.tree.shutdown()
        except Exception as exc:  # the plan has ended; the log says what went wrong
            self.warnings.append('plan %s: behaviour shutdown raised %s: %s' % (
                self.plan.get('id', ''), type(exc).__name__, exc))

    def stop(self, code: str, reason: str) -> List[dict]:
        """Stop the plan (running behaviours are terminated); return the messages."""
        if not self.finished:
            self.tree.root.stop(py_trees.common.Status.INVALID)
            for step in list(self.running):
                self.report(FAILURE, step, code, reason)
            self._finish(FAILURE, code, reason)
        return self.take()


class BehaviourFailed(RuntimeError):
    """A behaviour factory or the tree's setup raised: the plan cannot start."""
