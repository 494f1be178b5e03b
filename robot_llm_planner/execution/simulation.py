"""
The simulated household: default behaviours that run a plan over the symbolic state.

Each step takes ``step_duration_s`` (RUNNING meanwhile), then succeeds, unless its skill's
``requires`` do not hold in the plan's state when it starts (FAILURE, with the same reason
the planner's precondition check gives) or a failure is injected for it (FAILURE, for tests
and demos). The state changes as steps succeed (:class:`~.tree.SkillStep` applies the
skill's ``effects``), so a plan really runs and can fail.
"""

from dataclasses import dataclass, field
import time
from typing import Callable, List, Optional, Tuple

import py_trees
from robot_llm_planner.core.plan import clean_text, Step
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.world import WorldState
from robot_llm_planner.execution.behaviours import StepContext


def parse_failures(text: str) -> List[Tuple[str, str]]:
    """
    Return the injected failures ``text`` lists: (action, target) pairs, target '' for any.

    Entries are ``action`` or ``action=target``, separated by , or ; (e.g.
    ``拿起物体=一瓶水; 递给``). ValueError for an entry without an action.
    """
    failures = []
    for entry in text.replace(';', ',').split(','):
        if not entry.strip():
            continue
        action, _, target = entry.partition('=')
        if not action.strip():
            raise ValueError('%r: write action or action=target' % entry.strip())
        failures.append((action.strip(), clean_text(target)))
    return failures


@dataclass
class SimulationSettings:
    """How the simulated household behaves: step duration, injected failures, clock."""

    step_duration_s: float = 0.5
    failures: List[Tuple[str, str]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    def failure(self, step: Step) -> Optional[str]:
        """Return why ``step`` is made to fail, or None."""
        for action, target in self.failures:
            if action == step.action and target in ('', clean_text(step.target)):
                return 'simulated failure of %s%s (simulation.fail)' % (
                    step.action, ' ' + target if target else '')
        return None


class SimulatedSkill(py_trees.behaviour.Behaviour):
    """One step run in the simulated household."""

    def __init__(self, step: Step, index: int, skills: SkillSet, world: WorldState,
                 settings: SimulationSettings) -> None:
        """Run ``step`` (plan index ``index``) over ``world`` as ``settings`` say."""
        super().__init__(name='%s %s' % (step.action, step.target))
        self.step, self.index = step, index
        self.skills, self.world, self.settings = skills, world, settings
        self._started: Optional[float] = None

    def initialise(self) -> None:
        """Start the step (again)."""
        self._started = None

    def update(self) -> py_trees.common.Status:
        """Check the preconditions once, then run for the step duration."""
        if self._started is None:
            unmet = self.skills.unmet(self.world, self.step, self.index)
            if unmet is not None:
                self.feedback_message = unmet.message
                return py_trees.common.Status.FAILURE
            self._started = self.settings.clock()
        elapsed = self.settings.clock() - self._started
        if elapsed < self.settings.step_duration_s:
            self.feedback_message = '%.1f of %.1f s' % (elapsed, self.settings.step_duration_s)
            return py_trees.common.Status.RUNNING
        failure = self.settings.failure(self.step)
        if failure:
            self.feedback_message = failure
            return py_trees.common.Status.FAILURE
        self.feedback_message = 'done'
        return py_trees.common.Status.SUCCESS


def simulated_skill(step: Step, context: StepContext) -> SimulatedSkill:
    """Return the simulated household's behaviour for ``step`` (the default factory)."""
    return SimulatedSkill(step, context.index, context.skills, context.world,
                          context.simulation)
