"""
planner_node: the managed ROS 2 node around the planner (``ros2 run robot_llm_planner ...``).

The node declares its parameters (:mod:`robot_llm_planner.core.parameters`), creates its
topics (:mod:`robot_llm_planner.ros.interface`) and forwards messages and lifecycle
transitions to a ROS-free :class:`~robot_llm_planner.serving.service.PlannerService`, which
answers every command exactly once on ``topics.plan`` and reports on ``topics.status`` and
/diagnostics. ``lifecycle.autostart`` walks it to active by itself. See ``docs/ros.md``.

Threads: a multi-threaded executor runs the lifecycle and parameter services (the default
callback group: a long configure blocks only them), and the command subscription and the 1 Hz
timer in groups of their own, so commands are answered in every state; the service's worker
thread loads the model and plans.
"""

import json
import os
import sys
import threading
import time
from typing import Dict, List, Optional

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from robot_llm_planner.core.message import to_json
from robot_llm_planner.core.parameters import (default_value, dynamic_changes, load_config,
                                               PARAMETERS, PARAMETERS_BY_NAME)
from robot_llm_planner.core.skills import default_skills_path
from robot_llm_planner.ros.interface import (acknowledged, command_qos, create_topic,
                                             diagnostic_array, diagnostics_qos,
                                             DIAGNOSTICS_TOPIC, ignore_signals, init_ros,
                                             NODE_NAME, parameter_descriptor, plan_qos,
                                             status_qos, stop_on_signals, TRANSITIONS)
from robot_llm_planner.serving.service import PlannerService, SHUTDOWN_GRACE_S
from std_msgs.msg import String

STATUS_PERIOD_S = 1.0
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class PlannerNode(LifecycleNode):
    """Plans every command received and publishes one answer for each, in every state."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters and create the topics; autostart walks it to active."""
        super().__init__(NODE_NAME, **kwargs)
        config, _ = load_config(self._declare_parameters())  # checked again at configure
        self._topic_errors: List[str] = []
        # Plain publishers, not lifecycle ones: an inactive node still answers every command.
        self._status_pub = self._create_topic('publisher', 'topics.status', config.status_topic,
                                              status_qos())
        self._plan_pub = self._create_topic('publisher', 'topics.plan', config.plan_topic,
                                            plan_qos(config.plan_depth))
        self._command_sub = self._create_topic('subscription', 'topics.command',
                                               config.command_topic,
                                               command_qos(config.command_depth))
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                                      diagnostics_qos())
        self._diagnosed = None    # (lifecycle, state, level) last sent on /diagnostics
        self._diagnose = True     # the 1 Hz timer asks for /diagnostics
        self.service = PlannerService(
            config, lambda message: self._plan_pub.publish(String(data=to_json(message))),
            self._publish_status, self.get_logger(), self.get_fully_qualified_name(),
            queue_until_active=config.autostart)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._timer = self.create_timer(STATUS_PERIOD_S, self._tick,
                                        callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info('commands on %s, plans on %s, status on %s and %s; %s' % (
            self._command_sub.topic_name, self._plan_pub.topic_name, self._status_pub.topic_name,
            DIAGNOSTICS_TOPIC, self.service.served.describe()))
        self.service.publish_status()
        if config.autostart:  # in the lifecycle services' group: they wait for the walk
            self._autostart = self.create_timer(0.0, self._walk_to_active)

    def _declare_parameters(self) -> Dict[str, object]:
        values = {}
        for parameter in PARAMETERS:
            default = default_value(parameter)
            if parameter.name == 'skills_file':
                default = default_skills_path()
            values[parameter.name] = self.declare_parameter(
                parameter.name, default, parameter_descriptor(parameter)).value
            self.get_logger().debug('%s = %r' % (parameter.name, values[parameter.name]))
        overrides = getattr(self, '_parameter_overrides', None) or {}
        for name in sorted(name for name in overrides if not self.has_parameter(name)):
            self.get_logger().warning('ignoring unknown parameter %r (a typo?)' % name)
        return values

    def _create_topic(self, kind: str, parameter: str, name: str, qos: QoSProfile):
        callback = (lambda msg: self.service.submit(msg.data)) if kind == 'subscription' \
            else None
        return create_topic(self, kind, parameter, name,
                            default_value(PARAMETERS_BY_NAME[parameter]), qos,
                            self._topic_errors, callback, MutuallyExclusiveCallbackGroup())

    # ------------------------------------------------------------------ status
    def _publish_status(self, status: dict) -> None:
        """Publish the status; on /diagnostics too when its state changed or at 1 Hz."""
        self._status_pub.publish(String(data=json.dumps(status, ensure_ascii=False)))
        key = (status['lifecycle'], status['state'], status['health']['level'])
        if self._diagnose or key != self._diagnosed:
            self._diagnose, self._diagnosed = False, key
            stamp = self.get_clock().now().to_msg()
            self._diagnostics_pub.publish(diagnostic_array(status, stamp))

    def _tick(self) -> None:
        self._diagnose = True
        self.service.publish_status()

    # ------------------------------------------------------------------ lifecycle
    def _walk_to_active(self) -> None:
        self._autostart.cancel()  # once: a manager may drive the node from here on
        if self.service.lifecycle == 'unconfigured' and self.trigger_configure() == SUCCESS:
            self.trigger_activate()

    def _transition(self, label: str, action, done: str, failed: str = ''):
        self.service.set_lifecycle(label)
        ok = action() is not False
        self.service.set_lifecycle(done if ok else failed)
        return SUCCESS if ok else FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read and check the parameters, load and warm up the model (inactive once loaded)."""
        def configure() -> bool:
            config, errors = load_config({name: self.get_parameter(name).value
                                          for name in PARAMETERS_BY_NAME})
            config.settings.skills_file = config.settings.skills_file or default_skills_path()
            return self.service.configure(config, self._topic_errors + errors)
        return self._transition('configuring', configure, 'inactive', 'unconfigured')

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Take commands."""
        return self._transition('activating', self.service.activate, 'active')

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking commands; the one in progress finishes or is cancelled."""
        return self._transition('deactivating', self.service.deactivate, 'inactive')

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and its (GPU) memory."""
        return self._transition('cleaningup', self.service.cleanup, 'unconfigured')

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Refuse commands from now on; ``main`` flushes the answers and exits."""
        return self._transition('shuttingdown', self.service.begin_shutdown, 'finalized')

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free what was loaded after a transition raised, and go back to unconfigured."""
        self.get_logger().error('a transition from %s failed; cleaning up' % state.label)
        return self._transition('errorprocessing', self.service.cleanup, 'unconfigured')

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes, error = dynamic_changes([(item.name, item.value) for item in parameters])
        if error:
            return SetParametersResult(successful=False, reason=error)
        if changes:
            self.service.configure_queue(changes.get('queue.max_size'),
                                         changes.get('queue.policy'),
                                         changes.get('queue.max_batch'))
            self.get_logger().info('parameters changed: %s' % ', '.join(
                '%s=%r' % item for item in sorted(changes.items())))
        return SetParametersResult(successful=True)

    def flushed(self) -> bool:
        """Return True once every subscriber acknowledged the last answers and status."""
        return acknowledged((self._plan_pub, self._status_pub))


def _shut_down(node: PlannerNode, executor: MultiThreadedExecutor) -> bool:
    """Answer what is pending, go to finalized, flush; return True when nothing still runs."""
    def spin_for(seconds: float, condition=lambda: True) -> None:
        deadline = time.monotonic() + seconds
        while rclpy.ok() and condition() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)

    node.get_logger().info('shutting down')
    node.service.begin_shutdown()  # a configure in progress gives up
    spin_for(0.3)  # commands that arrived but were not taken yet are answered too
    spin_for(SHUTDOWN_GRACE_S, lambda: node.service.lifecycle in TRANSITIONS)
    for _ in range(20):  # the label changes just before rcl ends a transition: try again
        if node.service.lifecycle not in ('unconfigured', 'inactive', 'active'):
            break
        try:  # Humble raises RCLError when no shutdown transition is possible; later
            node.trigger_shutdown()  # releases too, from a transition state
            break
        except Exception as exc:
            node.get_logger().debug('shutdown transition: %s' % exc)
            spin_for(0.05)
    return node.service.finish_shutdown(
        wait=lambda seconds: executor.spin_once(timeout_sec=seconds), flushed=node.flushed)


def main(args: Optional[List[str]] = None) -> int:
    """Run planner_node until SIGINT, SIGTERM or the shutdown transition; 0 when clean."""
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        init_ros(args)
    except Exception as exc:
        print('planner_node: cannot initialize ROS: %s' % exc, file=sys.stderr)
        return 1
    stop_on_signals(stop)  # an rclpy without signal handler options installed its own
    node = None
    stopped = True
    try:
        node = PlannerNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok() and node.service.lifecycle != 'finalized':
            executor.spin_once(timeout_sec=0.1)
        stopped = _shut_down(node, executor)
        executor.remove_node(node)
    except Exception as exc:  # a ROS failure at start-up (e.g. a bad remapping)
        print('planner_node: %s: %s' % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        ignore_signals()  # done: a second Ctrl-C must not end the exit with -2
    if not stopped:
        # the model is still loading or generating for nobody: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
