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
docs/behavior_trees.md describes the topics, parameters and policies. Its QoS, topic creation,
start-up and flush before exit are :mod:`robot_llm_planner.ros.interface`'s, as planner_node's.

One thread: the subscription, the tick timer and the trees all run in the node's executor,
so a behaviour's ROS callbacks are served between ticks.
"""

import json
import sys
import threading
import time
from typing import Dict, List, Optional

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from robot_llm_planner.core.executor_parameters import (EXECUTOR_PARAMETERS,
                                                        EXECUTOR_PARAMETERS_BY_NAME,
                                                        ExecutorConfig, load_executor_config)
from robot_llm_planner.core.skills import SkillError, SkillSet
from robot_llm_planner.execution.behaviours import BehaviourError, BehaviourMap
from robot_llm_planner.execution.faults import Faults
from robot_llm_planner.execution.runner import PlanRunner
from robot_llm_planner.execution.simulation import SimulationSettings
from robot_llm_planner.execution.tree import execution_message, FAILURE
from robot_llm_planner.ros.interface import (acknowledged, create_topic, execution_qos,
                                             ignore_signals, init_ros, parameter_descriptor,
                                             plan_subscription_qos, stop_on_signals)
from robot_llm_planner.serving.service import FLUSH_TIMEOUT_S
from std_msgs.msg import String

NODE_NAME = 'plan_executor'


class PlanExecutorNode(Node):
    """Executes every ok plan received and publishes its progress."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters, resolve the behaviours, create the topics and the timer."""
        super().__init__(NODE_NAME, **kwargs)
        values = {parameter.name: self.declare_parameter(
            parameter.name, parameter.default, parameter_descriptor(parameter)).value
            for parameter in EXECUTOR_PARAMETERS}
        config, errors = load_executor_config(values)
        self._config = config
        self._runner: Optional[PlanRunner] = None
        self._pub = self._create_topic('publisher', 'topics.execution', config.execution_topic,
                                       errors)
        self._sub = self._create_topic('subscription', 'topics.plan', config.plan_topic, errors)
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

    def _create_topic(self, kind: str, parameter: str, name: str, errors: List[str]):
        qos = execution_qos() if kind == 'publisher' else plan_subscription_qos()
        return create_topic(self, kind, parameter, name,
                            EXECUTOR_PARAMETERS_BY_NAME[parameter].default, qos, errors,
                            self._on_plan if kind == 'subscription' else None)

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
        while time.monotonic() < deadline and not acknowledged([self._pub]):
            spin(0.02)


def main(args: Optional[List[str]] = None) -> int:
    """Run plan_executor until SIGINT or SIGTERM; return 0 after a clean shutdown."""
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        init_ros(args)
    except Exception as exc:
        print('plan_executor: cannot initialize ROS: %s' % exc, file=sys.stderr)
        return 1
    stop_on_signals(stop)  # an rclpy without signal handler options installed its own
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
        ignore_signals()  # done: a second Ctrl-C must not end the exit with -2
    return 0


if __name__ == '__main__':
    sys.exit(main())
