"""
planner_node: the ROS 2 shell around the planner (``ros2 run robot_llm_planner planner_node``).

The node declares its parameters (:mod:`robot_llm_planner.core.parameters`), creates its
topics (:mod:`robot_llm_planner.ros.interface`) and forwards messages to a ROS-free
:class:`~robot_llm_planner.ros.service.PlannerService`, which answers every command exactly
once on ``topics.plan`` and reports its state on ``topics.status``. See ``docs/ros.md``.
"""

import json
import os
import signal
import sys
import threading
import time
from typing import Dict, List, Optional

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
import rclpy
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from robot_llm_planner.core.message import to_json
from robot_llm_planner.core.parameters import (check_value, default_value, limits, load_config,
                                               PARAMETERS, PARAMETERS_BY_NAME)
from robot_llm_planner.core.skills import default_skills_path
from robot_llm_planner.ros.interface import (command_qos, init_ros, NODE_NAME, plan_qos,
                                             status_qos)
from robot_llm_planner.ros.service import describe_model, PlannerService
from std_msgs.msg import String

STATUS_PERIOD_S = 1.0


class PlannerNode(Node):
    """Plans every command received and publishes one answer for each."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters, create the topics and start loading the model."""
        super().__init__(NODE_NAME, **kwargs)
        config, errors = load_config(self._declare_parameters())
        if not config.settings.skills_file:
            config.settings.skills_file = default_skills_path()
        self._status_pub = self._create_topic(
            'publisher', 'topics.status', config.status_topic, status_qos(), errors)
        self._plan_pub = self._create_topic(
            'publisher', 'topics.plan', config.plan_topic, plan_qos(config.plan_depth), errors)
        self._command_sub = self._create_topic(
            'subscription', 'topics.command', config.command_topic,
            command_qos(config.command_depth), errors)
        self.service = PlannerService(
            config, lambda message: self._plan_pub.publish(String(data=to_json(message))),
            lambda status: self._status_pub.publish(String(data=json.dumps(
                status, ensure_ascii=False))),
            self.get_logger(), self.get_fully_qualified_name(), errors)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._timer = self.create_timer(STATUS_PERIOD_S, self.service.publish_status)
        self.get_logger().info('commands on %s, plans on %s, status on %s; %s' % (
            self._command_sub.topic_name, self._plan_pub.topic_name,
            self._status_pub.topic_name, describe_model(self.service.model)))
        self.service.publish_status()
        self.service.start()

    def _declare_parameters(self) -> Dict[str, object]:
        values = {}
        for parameter in PARAMETERS:
            default = default_value(parameter)
            if parameter.name == 'skills_file':
                default = default_skills_path()
            constraints = [limits(parameter)] + ([] if parameter.dynamic
                                                 else ['read at start-up'])
            descriptor = ParameterDescriptor(
                description=parameter.description, read_only=not parameter.dynamic,
                # typed by load_config, so a wrong type is reported instead of raised
                dynamic_typing=True,
                additional_constraints='; '.join(part for part in constraints if part))
            values[parameter.name] = self.declare_parameter(
                parameter.name, default, descriptor).value
            self.get_logger().debug('%s = %r' % (parameter.name, values[parameter.name]))
        overrides = getattr(self, '_parameter_overrides', None) or {}
        for name in sorted(name for name in overrides if not self.has_parameter(name)):
            self.get_logger().warning('ignoring unknown parameter %r (a typo?)' % name)
        return values

    def _create_topic(self, kind: str, parameter: str, name: str, qos: QoSProfile,
                      errors: List[str]):
        default = default_value(PARAMETERS_BY_NAME[parameter])
        for topic in (name, default):
            try:
                if kind == 'publisher':
                    return self.create_publisher(String, topic, qos)
                return self.create_subscription(
                    String, topic, lambda msg: self.service.submit(msg.data), qos)
            except Exception as exc:  # an invalid topic name: fall back to the default
                errors.append('%s %r is not a valid topic name (%s); using %r' % (
                    parameter, topic, exc, default))
        raise RuntimeError('cannot create the %s topic' % parameter)  # pragma: no cover

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {}
        for item in parameters:
            spec = PARAMETERS_BY_NAME.get(item.name)
            if spec is None:
                continue  # not ours (use_sim_time, ...)
            if not spec.dynamic:
                return SetParametersResult(
                    successful=False, reason='%s is read at start-up; restart the node to '
                    'change it' % item.name)
            value, error = check_value(spec, item.value)
            if error:
                return SetParametersResult(successful=False, reason=error)
            changes[item.name] = value
        if changes:
            self.service.configure_queue(changes.get('queue.max_size'),
                                         changes.get('queue.policy'),
                                         changes.get('queue.max_batch'))
            self.get_logger().info('parameters changed: %s' % ', '.join(
                '%s=%r' % item for item in sorted(changes.items())))
        return SetParametersResult(successful=True)

    def flushed(self) -> bool:
        """Return True once every subscriber acknowledged the last answers and status."""
        for publisher in (self._plan_pub, self._status_pub):
            acked = getattr(publisher, 'wait_for_all_acked', None)
            if acked is None:  # pragma: no cover - rclpy without wait_for_all_acked
                return False
            try:
                if not acked(Duration(seconds=0.02)):
                    return False
            except Exception as exc:  # the context is going away
                self.get_logger().debug('flush of %s: %s' % (publisher.topic_name, exc))
        return True


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum, frame):
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(args: Optional[List[str]] = None) -> int:
    """Run planner_node until SIGINT or SIGTERM; return 0 after a clean shutdown."""
    stop = threading.Event()
    _install_signal_handlers(stop)
    try:
        init_ros(args)
    except Exception as exc:
        print('planner_node: cannot initialize ROS: %s' % exc, file=sys.stderr)
        return 1
    # rclpy may install its own handlers on init; ours shut down in order (docs/ros.md).
    _install_signal_handlers(stop)
    node = None
    worker_stopped = True
    try:
        node = PlannerNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        node.get_logger().info('shutting down')
        node.service.begin_shutdown()
        # commands that arrived but were not taken yet are answered rejected as well
        deadline = time.monotonic() + 0.3
        while rclpy.ok() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        worker_stopped = node.service.finish_shutdown(
            wait=lambda seconds: executor.spin_once(timeout_sec=seconds), flushed=node.flushed)
        executor.remove_node(node)
    except Exception as exc:  # a ROS failure at start-up (e.g. a bad remapping)
        print('planner_node: %s: %s' % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if not worker_stopped:
        # the model is still generating for nobody: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
