"""
Plans executed one at a time: what happens to a plan that arrives while another runs.

:class:`PlanRunner` takes /action_plan messages (:meth:`PlanRunner.submit`) and is ticked
(:meth:`PlanRunner.tick`); both return the /plan_execution messages to publish. Only ``ok``
plans run; others are not this runner's business (the planner published why). A plan that
arrives while one runs is handled by the policy:

- ``queue``: it waits its turn, behind at most ``max_queued`` others; one more is refused
  (FAILURE, ``queue_full``);
- ``preempt``: the running plan is stopped (its running behaviour terminated, FAILURE
  ``preempted``), so are the waiting ones, and the new plan starts; a new plan that cannot
  start (``not_executable``, ``behaviour_error``) preempts nothing.
"""

from collections import deque
import json
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

from robot_llm_planner.core.settings import EXECUTION_POLICIES
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.execution.behaviours import BehaviourMap
from robot_llm_planner.execution.simulation import SimulationSettings
from robot_llm_planner.execution.tree import (BehaviourFailed, execution_message, FAILURE,
                                              PlanRun)


class PlanRunner:
    """Runs ok plans one at a time with a queue or preempt policy."""

    def __init__(self, skills: SkillSet, behaviours: BehaviourMap,
                 simulation: Optional[SimulationSettings] = None, policy: str = 'queue',
                 max_queued: int = 8, setup: Optional[Dict] = None,
                 setup_timeout_s: float = 30.0, recovery: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """
        Run plans with ``behaviours``; ``setup`` goes to each tree's setup (e.g. node=).

        ``recovery``: reactive trees with retries and recovery steps (else linear ones);
        ``clock`` times the delays between attempts.
        """
        if policy not in EXECUTION_POLICIES:
            raise ValueError('policy must be one of %s, got %r'
                             % (', '.join(EXECUTION_POLICIES), policy))
        self.skills, self.behaviours = skills, behaviours
        self.simulation = simulation or SimulationSettings()
        self.policy, self.max_queued = policy, max_queued
        self.setup, self.setup_timeout_s = setup or {}, setup_timeout_s
        self.recovery, self.clock = recovery, clock
        self.current: Optional[PlanRun] = None
        self.waiting: Deque[dict] = deque()
        self.warnings: List[str] = []  # for the log: problems that have no message of their own

    @property
    def idle(self) -> bool:
        """Return True when no plan runs or waits."""
        return self.current is None and not self.waiting

    def submit(self, data: str) -> Tuple[List[dict], str]:
        """
        Take one /action_plan message (JSON text); return (messages, a note for the log).

        A message that is not an ok plan runs nothing: the note says why (no messages, except
        for a text that is no /action_plan message at all, answered FAILURE
        ``not_executable``).
        """
        try:
            plan = json.loads(data)
        except ValueError as exc:
            reason = 'not an /action_plan message: not JSON (%s)' % exc
            return [execution_message({}, FAILURE, code='not_executable', reason=reason)], reason
        if not isinstance(plan, dict) or not isinstance(plan.get('id'), str) or not plan['id']:
            reason = 'not an /action_plan message: no "id"'
            return [execution_message({}, FAILURE, code='not_executable', reason=reason)], reason
        if plan.get('status') != 'ok':
            return [], 'plan %s is %s: not executed' % (plan['id'], plan.get('status'))
        if self.idle:
            return self._start(plan), ''
        if self.policy == 'queue':
            if len(self.waiting) >= self.max_queued:
                return [execution_message(
                    plan, FAILURE, code='queue_full', reason='%d plans are waiting already '
                    '(execution.max_queued)' % self.max_queued)], ''
            self.waiting.append(plan)
            return [], 'plan %s waits behind %d' % (plan['id'], len(self.waiting))
        run, refused = self._build(plan)  # preempt: only for a plan that can start
        if run is None:
            return refused, ''
        messages = self.shutdown('preempted by plan %s' % plan['id'], 'preempted')
        self.current = run
        return messages + run.take(), ''

    def _build(self, plan: dict) -> Tuple[Optional[PlanRun], List[dict]]:
        try:
            return PlanRun(plan, self.skills, self.behaviours, self.simulation, self.setup,
                           self.setup_timeout_s, self.recovery, self.clock), []
        except BehaviourFailed as exc:
            code, reason = 'behaviour_error', str(exc)
        except ValueError as exc:
            code, reason = 'not_executable', str(exc)
        return None, [execution_message(plan, FAILURE, code=code, reason=reason)]

    def _start(self, plan: dict) -> List[dict]:
        self.current, messages = self._build(plan)
        return self.current.take() if self.current is not None else messages

    def tick(self) -> List[dict]:
        """Tick the running plan once (start the next waiting one first if none runs)."""
        messages: List[dict] = []
        while self.current is None and self.waiting:
            messages += self._start(self.waiting.popleft())
        if self.current is not None:
            messages += self.current.tick()
            if self.current.finished:
                self.warnings += self.current.warnings
                self.current = None
        return messages

    def shutdown(self, reason: str = 'the executor shut down',
                 code: str = 'shutting_down') -> List[dict]:
        """Stop the running plan and drop the waiting ones (FAILURE ``code``)."""
        messages: List[dict] = []
        if self.current is not None:
            messages += self.current.stop(code, reason)
            self.warnings += self.current.warnings
            self.current = None
        while self.waiting:
            messages.append(execution_message(self.waiting.popleft(), FAILURE, code=code,
                                              reason=reason))
        return messages
