"""
One plan step as a py_trees subtree: reactive, with recovery, or linear.

Reactive (``execution.recovery`` true), from the step's :class:`~robot_llm_planner.core.
recovery.Action` (what it needs, what achieves each need, what it makes true)::

    PlanStep "2 拿起物体 遥控器"               reports a skip, or the step's failure
    └─ Selector (memory)
       ├─ Holds: the step's effects            only for steps that can be skipped
       └─ Sequence (no memory: every need is re-checked on every tick)
          ├─ Selector (memory) per need        Holds(need), else achieve it: the inserted
          │  ├─ Holds: found(遥控器)            step's own Sequence, built the same way
          │  └─ Sequence [... Attempts(寻找物体 遥控器)]
          ├─ Holds: hand_free                  a need no skill makes true
          └─ Attempts(拿起物体 遥控器)            the step's behaviour, retried

Linear (false): ``PlanStep └─ Attempts`` with one attempt (and the skill's
``retry.timeout_s``), the plan as it was written.

:class:`Attempts` runs an action's behaviour at most ``retry.attempts`` times,
``retry.delay_s`` apart, never more often while the plan runs, each for at most
``retry.timeout_s`` (an attempt still running then is stopped and fails: "no result within
retry.timeout_s = 300 s"; 0: no limit), and reports each attempt:
RUNNING when it starts; SUCCESS (the action's effects are applied to the plan's state, but
for those its behaviour reported during the attempt: ``held`` counts objects, so a pick that
reports ``held(水)`` itself holds one 水, not two); RETRYING when it failed or was interrupted
(a need it depends on stopped holding: the reactive Sequence stops it, achieves the need
again and starts it over); FAILURE when an inserted action is out of attempts. An
interrupted attempt that was the last one, or that lost a need nothing makes true, reports no
RETRYING: :class:`PlanStep` ends the step at once in the first case (code ``interrupted``),
the failing Sequence ends it in the second.

An attempt starts only when every need the Sequences check before it holds (its guards): an
inserted step that ends in the same tick can undo an earlier need (its behaviour reports the
object lost), and the attempt then waits for the next tick, where the need is achieved
first. So a step never starts while a need is false, and a plan ends after at most
:func:`~robot_llm_planner.core.recovery.attempt_bound` attempts.
"""

from typing import Any, Callable, List, Optional, Tuple

import py_trees
from robot_llm_planner.core.recovery import Action, Goal, unmet
from robot_llm_planner.core.skills import Retry
from robot_llm_planner.core.world import WorldState

Status = py_trees.common.Status
RUNNING, SUCCESS, FAILURE, RETRYING = 'RUNNING', 'SUCCESS', 'FAILURE', 'RETRYING'

# run: the plan run (tree.PlanRun): world, clock(), stopping, report(status, step, ...)
Run = Any
MakeBehaviour = Callable[[Action], Optional[py_trees.behaviour.Behaviour]]
Guard = Tuple[Goal, bool]  # a need checked before an attempt; whether the tree can achieve it


def goals_text(goals: List[Goal]) -> str:
    """Return goals as one text: ``found(水), at(厨房)``."""
    return ', '.join(str(goal) for goal in goals)


def recovery_field(action: Action) -> Optional[dict]:
    """Return the message's ``recovery`` object of an inserted action (None: a plan step)."""
    if action.achieves is None:
        return None
    return {'action': action.step.action, 'target': action.step.target,
            'location': action.step.location, 'achieves': str(action.achieves)}


class Holds(py_trees.behaviour.Behaviour):
    """Condition: SUCCESS when every goal holds in the plan's state, else FAILURE."""

    def __init__(self, goals: List[Goal], world: WorldState) -> None:
        """Check ``goals`` against ``world``."""
        super().__init__(name=goals_text(goals) + '?')
        self.goals, self.world = goals, world

    def update(self) -> Status:
        """Return whether all goals hold now."""
        return Status.SUCCESS if all(goal.holds(self.world) for goal in self.goals) \
            else Status.FAILURE


class Attempts(py_trees.decorators.Decorator):
    """An action's behaviour, tried up to ``retry.attempts`` times (module docstring)."""

    def __init__(self, run: Run, action: Action, child: py_trees.behaviour.Behaviour,
                 retry: Retry, guards: Tuple[Guard, ...] = ()) -> None:
        """
        Try ``child`` (the behaviour of ``action``) as ``retry`` says, for ``run``.

        ``guards`` are the needs the tree checks on every tick before it ticks this node, in
        that order, each with whether the tree can make it true again: an attempt starts only
        when all of them hold.
        """
        super().__init__(name='%s %s x%d' % (action.step.action, action.step.target,
                                             retry.attempts), child=child)
        self.run, self.action, self.retry, self.guards = run, action, retry, guards
        self.count = 0            # attempts started, over the whole plan
        self.active = False       # an attempt is under way
        self.started = 0.0        # when the running attempt started (run.clock)
        self.first_report = 0     # run.reported[first_report:]: what its behaviour reported
        self.retry_at: Optional[float] = None
        self.last_reason = ''

    def _report(self, status: str, code: str = '', reason: str = '') -> None:
        self.run.report(status, self.action.index, code, reason, attempt=self.count,
                        recovery=recovery_field(self.action))

    def tick(self):
        """Wait between attempts, start one, or tick the running one (stopped when overdue)."""
        if self.status != Status.RUNNING:
            self.initialise()
        status = Status.RUNNING if self.active else self._start()
        if self.active and self._overdue():
            self.decorated.stop(Status.INVALID)
            status = self._ended(Status.FAILURE, 'no result within retry.timeout_s = %g s'
                                 % self.retry.timeout_s)
        elif self.active:
            yield from self.decorated.tick()
            status = self._ended(self.decorated.status)
        if status != Status.RUNNING:
            self.stop(status)
        self.status = status
        yield self

    def _start(self) -> Status:
        """Start an attempt when it is due and every guard holds; FAILURE when none is left."""
        if self.retry_at is not None and self.run.clock() < self.retry_at:
            return Status.RUNNING
        self.retry_at = None
        if self.count >= self.retry.attempts:
            self._give_up('all %d attempts used' % self.count)
            return Status.FAILURE
        if self.lost() is None:  # else one stopped holding in this tick: achieved first
            self.count += 1
            self.active = True
            self.started = self.run.clock()
            self.first_report = len(self.run.reported)
            self._report(RUNNING)
        return Status.RUNNING

    def _overdue(self) -> bool:
        """Return whether the running attempt has run for ``retry.timeout_s`` (0: never)."""
        return 0 < self.retry.timeout_s <= self.run.clock() - self.started

    def update(self) -> Status:
        """Return the status :meth:`tick` set (tick does the work of a Decorator's update)."""
        return self.status

    def lost(self) -> Optional[Guard]:
        """Return the first guard that does not hold, or None."""
        return next((guard for guard in self.guards if not guard[0].holds(self.run.world)),
                    None)

    def _ended(self, child: Status, reason: str = '') -> Status:
        if child == Status.RUNNING:
            return Status.RUNNING
        self.active = False
        if child == Status.SUCCESS:  # effects its behaviour reported have happened already
            reported = self.run.reported[self.first_report:]
            for goal in self.action.effects:
                if goal not in reported:
                    goal.make_true(self.run.world)
            self._report(SUCCESS)
            return Status.SUCCESS
        self.last_reason = reason or self.decorated.feedback_message or \
            'the %s behaviour failed' % self.action.step.action
        if self.count < self.retry.attempts:
            self.retry_at = self.run.clock() + self.retry.delay_s
            self._report(RETRYING, 'step_failed', '%s (attempt %d of %d)' % (
                self.last_reason, self.count, self.retry.attempts))
            return Status.RUNNING
        self._give_up('attempt %d of %d' % (self.count, self.retry.attempts)
                      if self.retry.attempts > 1 else '')
        return Status.FAILURE

    def _give_up(self, note: str) -> None:
        """Note the last reason; an inserted action reports its FAILURE (PlanStep a step's)."""
        if note:
            self.last_reason = '%s (%s)' % (self.last_reason, note) if self.last_reason \
                else note
        if self.action.achieves is not None:
            self._report(FAILURE, 'step_failed', self.last_reason)

    def spent(self) -> Optional[Goal]:
        """Return the need whose loss stops the running attempt, the last one, or None."""
        lost = self.lost() if self.active and self.count >= self.retry.attempts else None
        return lost[0] if lost is not None and lost[1] else None

    def give_up_interrupted(self, goal: Goal) -> None:
        """Note that the last attempt lost ``goal`` and none is left; report it if inserted."""
        self.last_reason = 'interrupted: %s no longer holds (attempt %d of %d, none left)' % (
            goal, self.count, self.retry.attempts)
        if self.action.achieves is not None:
            self._report(FAILURE, 'interrupted', self.last_reason)

    def terminate(self, new_status: Status) -> None:
        """
        Report an attempt stopped from above (a need stopped holding) as interrupted.

        Only when it will be tried again: the tree can make the need true again and attempts
        are left. Otherwise the step is ending (a need nothing makes true fails it;
        :class:`PlanStep` ends it when no attempt is left).
        """
        if new_status == Status.INVALID:
            lost = self.lost()
            if self.active and not self.run.stopping and lost is not None and lost[1] \
                    and self.count < self.retry.attempts:
                self.last_reason = 'interrupted: %s no longer holds' % lost[0]
                self._report(RETRYING, 'interrupted', '%s (attempt %d of %d)' % (
                    self.last_reason, self.count, self.retry.attempts))
            self.active = False
            self.retry_at = None


class PlanStep(py_trees.decorators.Decorator):
    """One step of the plan: reports a skipped step, and a failed one with what was tried."""

    def __init__(self, run: Run, action: Action, child: py_trees.behaviour.Behaviour,
                 attempts: List[Attempts]) -> None:
        """Wrap the step's subtree ``child``; ``attempts`` are its Attempts nodes."""
        super().__init__(name='%d %s %s' % (action.index + 1, action.step.action,
                                            action.step.target), child=child)
        self.run, self.action, self.attempts = run, action, attempts

    def tick(self):
        """Tick the subtree; end the step first when a lost need stops its last attempt."""
        lost = [(attempt, attempt.spent()) for attempt in self.attempts]
        attempt, goal = next((pair for pair in lost if pair[1] is not None), (None, None))
        if attempt is None or goal is None:
            yield from super().tick()
            return
        attempt.give_up_interrupted(goal)
        self.stop(Status.FAILURE)  # stops the attempt: it reports no RETRYING
        reason = attempt.last_reason
        if attempt.action.achieves is not None:
            reason = '%s %s (for %s): %s' % (attempt.action.step.action,
                                             attempt.action.step.target,
                                             attempt.action.achieves, reason)
        self.run.report(FAILURE, self.action.index, 'interrupted', reason, unmet=str(goal),
                        tried=self._tried())
        yield self

    def update(self) -> Status:
        """Pass the subtree's status on, and report a skip or a failure."""
        status = self.decorated.status
        self.feedback_message = self.decorated.feedback_message
        if status == Status.SUCCESS and self.attempts[0].count == 0:
            self.run.report(SUCCESS, self.action.index, reason='skipped: its effects '
                            'already hold: %s' % goals_text(list(self.action.effects)))
        elif status == Status.FAILURE:
            self._report_failure()
        return status

    def _report_failure(self) -> None:
        world = self.run.world
        missing = unmet(self.action, world)
        need = next((n for n in self.action.needs if n.goal == missing), None)
        if need is None or self.attempts[0].status == Status.FAILURE:  # the action gave up
            code, reason = 'step_failed', self.attempts[0].last_reason
        else:
            code = 'precondition_unmet'
            failed = [a for a in self.attempts[1:] if a.count and a.status == Status.FAILURE]
            how = ('no skill makes it true' if need.achieve is None or not failed
                   else '%s %s did not: %s' % (failed[-1].action.step.action,
                                               failed[-1].action.step.target,
                                               failed[-1].last_reason))
            reason = '%s %s needs %s: %s' % (self.action.step.action, self.action.step.target,
                                             missing, how)
        self.run.report(FAILURE, self.action.index, code, reason,
                        unmet=str(missing or ''), tried=self._tried())

    def _tried(self) -> List[dict]:
        """Return the message's ``tried``: each action that ran for the step."""
        return [{'action': a.action.step.action, 'target': a.action.step.target,
                 'location': a.action.step.location, 'attempts': a.count,
                 'achieves': str(a.action.achieves or '')} for a in self.attempts if a.count]


def build_step(run: Run, action: Action, make: MakeBehaviour, recovery: bool) -> PlanStep:
    """Return the subtree of plan step ``action`` (reactive when ``recovery``)."""
    attempts: List[Attempts] = []
    if not recovery:
        act = Attempts(run, action, make(action), Retry(1, 0.0, action.retry.timeout_s))
        return PlanStep(run, action, act, [act])
    sequence = _achieve(run, action, make(action), make, attempts)
    children = [Holds(list(action.effects), run.world)] if action.skippable else []
    root = py_trees.composites.Selector(name='skip or do', memory=True,
                                        children=children + [sequence])
    return PlanStep(run, action, root, attempts)


def _achieve(run: Run, action: Action, behaviour: py_trees.behaviour.Behaviour,
             make: MakeBehaviour, attempts: List[Attempts],
             before: Tuple[Guard, ...] = ()) -> py_trees.behaviour.Behaviour:
    """
    Return Sequence[ensure each need, Attempts(act)]; the act's Attempts is listed first.

    ``before``: the needs the enclosing Sequences check before they tick this one.
    """
    # None: no skill makes the need true, or no behaviour runs that skill
    inserted = [None if need.achieve is None else make(need.achieve) for need in action.needs]
    guards = before + tuple((need.goal, made is not None)
                            for need, made in zip(action.needs, inserted))
    act = Attempts(run, action, behaviour, action.retry, guards)
    attempts.append(act)
    children: List[py_trees.behaviour.Behaviour] = []
    for number, need in enumerate(action.needs):
        holds = Holds([need.goal], run.world)
        if inserted[number] is None:
            children.append(holds)
            continue
        achieve = _achieve(run, need.achieve, inserted[number], make, attempts,
                           guards[:len(before) + number])
        children.append(py_trees.composites.Selector(
            name='ensure %s' % need.goal, memory=True, children=[holds, achieve]))
    return py_trees.composites.Sequence(name='needs, then %s' % action.step.action,
                                        memory=False, children=children + [act])
