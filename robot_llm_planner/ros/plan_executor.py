"""
plan_executor: runs the planner's plans as py_trees trees.

Started with ``ros2 run robot_llm_planner plan_executor`` (or the launch file's ``executor``
argument), it subscribes to ``topics.plan`` (/action_plan), builds one tree per ``ok`` plan
(one subtree per step, reactive with recovery or linear: :mod:`robot_llm_planner.execution`),
ticks it every ``execution.tick_period_s`` and publishes the progress on ``topics.execution``
(std_msgs/String carrying the /plan_execution JSON of config/plan_execution.schema.json).
Each skill's behaviour comes from a factory named in ``behaviours.default`` /
``behaviours.skills``; by default the simulated household runs them. Trees are set up with
``node=`` this node, so py_trees_ros behaviours (action clients, subscribers) use it.
docs/behavior_trees.md describes the topics, parameters and policies.

One thread: the subscription, the tick timer and the trees all run in the node's executor,
so a behaviour's ROS callbacks are served between ticks.
"""

import json
import signal
import sys
import threading
import time
from typing import Dict, List, Optional

import rclpy
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from robot_llm_planner.core.parameters import (EXECUTOR_PARAMETERS, ExecutorConfig,
                                               load_executor_config)
from robot_llm_planner.core.skills import SkillError, SkillSet
from robot_llm_planner.execution.behaviours import BehaviourError, BehaviourMap
from robot_llm_planner.execution.faults import Faults
from robot_llm_planner.execution.runner import PlanRunner
from robot_llm_planner.execution.simulation import SimulationSettings
from robot_llm_planner.execution.tree import execution_message, FAILURE
from std_msgs.msg import String

NODE_NAME = 'plan_executor'
EXECUTION_DEPTH = 64
FLUSH_TIMEOUT_S = 1.5


def plan_subscription_qos() -> QoSProfile:
    """Return the QoS of the plan subscription: reliable, volatile (only new plans run)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=EXECUTION_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def execution_qos() -> QoSProfile:
    """Return the QoS of the progress topic: reliable, the last messages kept for late joiners."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=EXECUTION_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class PlanExecutorNode(Node):
    """Executes every ok plan received and publishes its progress."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters, resolve the behaviours, create the topics and the timer."""
        super().__init__(NODE_NAME, **kwargs)
        values = {}
        for parameter in EXECUTOR_PARAMETERS:
            values[parameter.name] = self.declare_parameter(
                parameter.name, parameter.default).value
        config, errors = load_executor_config(values)
        self._config = config
        self._runner: Optional[PlanRunner] = None
        self._pub = self._create('publisher', config, errors)
        self._sub = self._create('subscription', config, errors)
        runner = None
        try:  # with the defaults of bad values: every problem is reported at once
            runner = self._build_runner(config)
        except (SkillError, BehaviourError, ValueError) as exc:
            errors.append(str(exc))
        self._error = 'invalid parameters: ' + '; '.join(errors) if errors else ''
        if self._error:
            self.get_logger().error(self._error + ' (every plan is answered FAILURE)')
        self._runner = None if errors else runner
        self._timer = self.create_timer(config.tick_period_s, self._tick)
        self.get_logger().info('plans on %s, progress on %s; policy %s; %s; behaviours: %s' % (
            self._sub.topic_name, self._pub.topic_name, config.policy,
            'reactive trees with recovery' if config.recovery else 'linear trees',
            self._describe_behaviours(config)))

    def _create(self, kind: str, config: ExecutorConfig, errors: List[str]):
        name = config.execution_topic if kind == 'publisher' else config.plan_topic
        default = 'plan_execution' if kind == 'publisher' else 'action_plan'
        for topic in (name, default):
            try:
                if kind == 'publisher':
                    return self.create_publisher(String, topic, execution_qos())
                return self.create_subscription(String, topic, self._on_plan,
                                                plan_subscription_qos())
            except Exception as exc:  # an invalid topic name: report it, use the default
                errors.append('%s %r: %s' % (
                    'topics.execution' if kind == 'publisher' else 'topics.plan', topic, exc))
        raise RuntimeError('cannot create the %s topic' % kind)

    def _build_runner(self, config: ExecutorConfig) -> PlanRunner:
        skills = SkillSet.load(config.skills_file or None)
        behaviours = BehaviourMap(skills, config.behaviours_skills, config.behaviours_default)
        faults = Faults(config.fail, config.fail_rate, config.seed, config.disturbances)
        simulation = SimulationSettings(config.step_duration_s, faults)
        return PlanRunner(skills, behaviours, simulation, config.policy, config.max_queued,
                          setup={'node': self}, setup_timeout_s=config.setup_timeout_s,
                          recovery=config.recovery)

    @staticmethod
    def _describe_behaviours(config: ExecutorConfig) -> str:
        named = config.behaviours_skills.strip()
        rest = config.behaviours_default or 'none (not named: cannot run)'
        return '%s%s' % (named + '; others ' if named else 'all ', rest)

    def _publish(self, messages: List[Dict]) -> None:
        for message in messages:
            self._pub.publish(String(data=json.dumps(message, ensure_ascii=False)))
            step = 'plan' if message['step'] is None else 'step %d' % (message['step'] + 1)
            self.get_logger().info('%s %s %s%s' % (
                message['plan_id'], step, message['status'],
                ': ' + message['reason'] if message['reason'] else ''))

    def _on_plan(self, msg: String) -> None:
        if self._runner is None:
            try:
                plan = json.loads(msg.data)
            except ValueError:
                plan = {}
            if isinstance(plan, dict) and plan.get('status') == 'ok':
                self._publish([execution_message(plan, FAILURE, code='invalid_parameters',
                                                 reason=self._error)])
            return
        messages, note = self._runner.submit(msg.data)
        if note:
            self.get_logger().info(note)
        self._publish(messages)

    def _tick(self) -> None:
        if self._runner is None:
            return
        self._publish(self._runner.tick())
        while self._runner.warnings:
            self.get_logger().warning(self._runner.warnings.pop(0))

    def shutdown(self, spin) -> None:
        """Stop the running plan (FAILURE shutting_down) and flush the progress topic."""
        if self._runner is not None:
            self._publish(self._runner.shutdown())
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self._pub.wait_for_all_acked(Duration(seconds=0.02)):
                    break
            except Exception:  # the context is going away
                break
            spin(0.02)


def main(args: Optional[List[str]] = None) -> int:
    """Run plan_executor until SIGINT or SIGTERM; return 0 after a clean shutdown."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    try:
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # pragma: no cover - an rclpy without signal handler options
        rclpy.init(args=args)
    except Exception as exc:
        print('plan_executor: cannot initialize ROS: %s' % exc, file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    node = None
    try:
        node = PlanExecutorNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)
        node.get_logger().info('shutting down')
        node.shutdown(lambda seconds: executor.spin_once(timeout_sec=seconds))
        executor.remove_node(node)
    except Exception as exc:  # a ROS failure at start-up (e.g. a bad remapping)
        print('plan_executor: %s: %s' % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
