"""
The simulated household: default behaviours that run a plan over the symbolic state.

Each attempt of a step takes ``step_duration_s`` (RUNNING meanwhile), then succeeds, unless
its skill's ``requires`` do not hold in the plan's state when it starts (FAILURE, with the same
reason the planner's precondition check gives) or :class:`~.faults.Faults` make it fail
(``simulation.fail``, ``simulation.fail_rate``). A disturbance (``simulation.disturbances``:
an object dropped, a door closing again) happens as a step begins: the behaviour reports the
changed facts through :meth:`~.behaviours.StepContext.report_fact`, as a robot's own
behaviours do. The tree applies each skill's ``effects`` when a step succeeds, so a plan
really runs and can fail.
"""

from dataclasses import dataclass, field
import time
from typing import Callable, Optional

import py_trees
from robot_llm_planner.core.plan import Step
from robot_llm_planner.execution.behaviours import StepContext
from robot_llm_planner.execution.faults import Faults


@dataclass
class SimulationSettings:
    """How the simulated household behaves: step duration, injected faults, clock."""

    step_duration_s: float = 0.5
    faults: Faults = field(default_factory=Faults)
    clock: Callable[[], float] = time.monotonic


class SimulatedSkill(py_trees.behaviour.Behaviour):
    """One step run in the simulated household."""

    def __init__(self, step: Step, context: StepContext) -> None:
        """Run ``step`` over the plan's state as ``context.simulation`` says."""
        super().__init__(name='%s %s' % (step.action, step.target))
        self.step, self.context = step, context
        self.settings: SimulationSettings = context.simulation
        self._started: Optional[float] = None

    def initialise(self) -> None:
        """Start the step (again)."""
        self._started = None

    def update(self) -> py_trees.common.Status:
        """Apply due disturbances, check the preconditions once, then run for the duration."""
        context = self.context
        if self._started is None:
            for fact, true in self.settings.faults.due(context.world):
                context.report_fact(fact, true, 'simulation.disturbances')
            unmet = context.skills.unmet(context.world, self.step, context.index)
            if unmet is not None:
                self.feedback_message = unmet.message
                return py_trees.common.Status.FAILURE
            self._started = self.settings.clock()
        elapsed = self.settings.clock() - self._started
        if elapsed < self.settings.step_duration_s:
            self.feedback_message = '%.1f of %.1f s' % (elapsed, self.settings.step_duration_s)
            return py_trees.common.Status.RUNNING
        failure = self.settings.faults.failure(self.step)
        if failure:
            self.feedback_message = failure
            return py_trees.common.Status.FAILURE
        self.settings.faults.succeeded(self.step, context.skills)
        self.feedback_message = 'done'
        return py_trees.common.Status.SUCCESS


def simulated_skill(step: Step, context: StepContext) -> SimulatedSkill:
    """Return the simulated household's behaviour for ``step`` (the default factory)."""
    return SimulatedSkill(step, context)
