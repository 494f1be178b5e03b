"""
Behaviours a robot team plugs into plan_executor (``behaviours.skills``), for the tests.

:func:`navigate_to` stands for a navigation stack: it knows the poses of a few places, fails
with a reason for the others, and, set up with a ROS node (as plan_executor sets trees up),
announces each goal on ``navigation_goals``. :func:`gripper` runs until the test releases it
and records its lifecycle, so a test can see a running behaviour being terminated.
:func:`shaky_arrival` and :func:`reporting_grip` are simulated steps that report a fact as they
succeed, as a robot's sensing does, :func:`filled_hands` a step whose hands fill up while it
runs, and :func:`never_ends` a behaviour whose result never comes. The other factories
misbehave in the ways an executor must survive.
"""

import py_trees
from robot_llm_planner.execution.simulation import SimulatedSkill
from std_msgs.msg import String

POSES = {'厨房': (3.0, 1.5), '客厅': (0.0, 0.0), '我': (1.0, -2.0)}
EVENTS = []             # (behaviour name, event) of the gripper behaviours, in order
RELEASED = {'done': False}


class NavigateTo(py_trees.behaviour.Behaviour):
    """Go to a place of the map; FAILURE for a place without a pose."""

    def __init__(self, step, context):
        """Navigate for ``step`` (its target is the place)."""
        super().__init__(name='navigate to %s' % step.target)
        self.target = step.target
        self.node = self.publisher = None

    def setup(self, **kwargs):
        """Announce goals on navigation_goals when set up with a ROS node."""
        self.node = kwargs.get('node')
        if self.node is not None:
            self.publisher = self.node.create_publisher(String, 'navigation_goals', 10)

    def update(self):
        """Succeed at once for a place with a pose."""
        if self.target not in POSES:
            self.feedback_message = 'no pose for %s on the map' % self.target
            return py_trees.common.Status.FAILURE
        if self.publisher is not None:
            x, y = POSES[self.target]
            self.publisher.publish(String(data='%s %g %g' % (self.target, x, y)))
        return py_trees.common.Status.SUCCESS

    def shutdown(self):
        """Destroy the publisher."""
        if self.publisher is not None:
            self.node.destroy_publisher(self.publisher)


def navigate_to(step, context):
    """Return the navigation behaviour of a 移动到 step."""
    return NavigateTo(step, context)


class Gripper(py_trees.behaviour.Behaviour):
    """RUNNING until RELEASED['done']; records initialise and terminate."""

    def initialise(self):
        """Record the start."""
        EVENTS.append((self.name, 'initialise'))

    def update(self):
        """Run until released."""
        return py_trees.common.Status.SUCCESS if RELEASED['done'] \
            else py_trees.common.Status.RUNNING

    def terminate(self, new_status):
        """Record how it ended (INVALID: stopped from outside)."""
        EVENTS.append((self.name, new_status.name))


def gripper(step, context):
    """Return a gripper behaviour named after the step."""
    return Gripper(name='%s %s' % (step.action, step.target))


class ShakyArrival(SimulatedSkill):
    """A simulated move whose arrival shakes the object picked up last out of the hand."""

    def update(self):
        """Run as simulated; as it succeeds, report the last held object lost."""
        status = super().update()
        held = self.context.world.held
        if status == py_trees.common.Status.SUCCESS and held:
            self.context.report_fact('held(%s)' % held[-1], False, 'the gripper')
        return status


def shaky_arrival(step, context):
    """Return a move that loses the last held object as it arrives."""
    return ShakyArrival(step, context)


class ReportingGrip(SimulatedSkill):
    """A simulated pick whose gripper reports the object held as the pick succeeds."""

    def update(self):
        """Run as simulated; as it succeeds, report the target held."""
        status = super().update()
        if status == py_trees.common.Status.SUCCESS:
            self.context.report_fact('held(%s)' % self.step.target, True, 'the gripper')
        return status


def reporting_grip(step, context):
    """Return a pick that reports its own effect."""
    return ReportingGrip(step, context)


class FilledHands(py_trees.behaviour.Behaviour):
    """A step during which someone puts three things into the robot's hands."""

    def __init__(self, step, context):
        """Run for ``step``; report through ``context``."""
        super().__init__(name='%s %s' % (step.action, step.target))
        self.context, self.ticks = context, 0

    def initialise(self):
        """Start over."""
        self.ticks = 0

    def update(self):
        """Report the three things held on the first tick; succeed on the third."""
        self.ticks += 1
        if self.ticks == 1:
            for thing in ('书', '笔', '杯'):
                self.context.report_fact('held(%s)' % thing, True, 'a person')
        return py_trees.common.Status.SUCCESS if self.ticks >= 3 \
            else py_trees.common.Status.RUNNING


def filled_hands(step, context):
    """Return a step whose hands fill up while it runs."""
    return FilledHands(step, context)


class NeverEnds(py_trees.behaviour.Behaviour):
    """RUNNING on every tick: a behaviour whose result never comes; records its end."""

    def update(self):
        """Keep running."""
        return py_trees.common.Status.RUNNING

    def terminate(self, new_status):
        """Record how it ended (INVALID: stopped from outside)."""
        EVENTS.append((self.name, new_status.name))


def never_ends(step, context):
    """Return a behaviour that never returns a result."""
    return NeverEnds(name='%s %s' % (step.action, step.target))


def raising_factory(step, context):
    """Fail to make a behaviour."""
    raise KeyError(step.target)


def not_a_behaviour(step, context):
    """Return something that is not a behaviour."""
    return 'a string'


class Crashing(py_trees.behaviour.Behaviour):
    """Raise when ticked."""

    def update(self):
        """Raise, as a behaviour with a bug does."""
        raise RuntimeError('gripper driver crashed')


def crashing(step, context):
    """Return a behaviour that raises when ticked."""
    return Crashing(name='crashing')


NOT_CALLABLE = 42
