"""
The nodes' ROS interface in one place: topic names, QoS, messages and the rclpy start-up.

planner_node, plan_executor and every client (plan_client, the demo, a behavior tree's node)
import their QoS from here, never from a node module. The QoS choices are explained in
``docs/ros.md`` and ``docs/behavior_trees.md``.
A node creates its topics with :func:`create_topic` (a bad name falls back to the default and
is reported), starts rclpy with :func:`init_ros` and stops on :func:`stop_on_signals`; before
it exits it waits until its subscribers :func:`acknowledged` the last messages, then
:func:`ignore_signals`.
"""

import signal
import threading
from typing import List, Optional

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
import rclpy
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from robot_llm_planner.core.parameter_text import limits
from robot_llm_planner.core.parameters import Parameter
from robot_llm_planner.serving.health import key_values
from std_msgs.msg import Header, String

NODE_NAME = 'planner_node'
# The absolute names a client uses by default (the node's own defaults are relative names,
# the topics.* parameters, so they follow its namespace).
COMMAND_TOPIC = '/command'
PLAN_TOPIC = '/action_plan'
STATUS_TOPIC = '/planner_status'
# Where ROS tools (rqt_robot_monitor, diagnostic_aggregator) read every node's health.
DIAGNOSTICS_TOPIC = '/diagnostics'
# The intermediate lifecycle states (a transition is running) and the primary ones.
TRANSITIONS = ('configuring', 'cleaningup', 'shuttingdown', 'activating', 'deactivating',
               'errorprocessing')
PRIMARY_STATES = ('unconfigured', 'inactive', 'active', 'finalized')
# History of plan_executor's topics: the plans it takes in and the progress it reports.
EXECUTION_DEPTH = 64
_LEVELS = {'OK': DiagnosticStatus.OK, 'WARN': DiagnosticStatus.WARN,
           'ERROR': DiagnosticStatus.ERROR}


def command_qos(depth: int) -> QoSProfile:
    """Return the QoS of the command subscription (and of command publishers); 0: keep all."""
    if depth == 0:
        return QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def plan_qos(depth: int) -> QoSProfile:
    """
    Return the QoS of the plan publisher: reliable, transient local, keep last ``depth``.

    Transient local keeps the last answers for a subscriber that matches late (a client that
    sent its command just after discovery); volatile subscribers, the ROS default, still get
    only new answers, so a behavior tree started later is not handed old plans.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def status_qos() -> QoSProfile:
    """Return the QoS of the status topic: the latest state, kept for late joiners."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def plan_subscription_qos() -> QoSProfile:
    """Return the QoS of plan_executor's plan subscription: reliable, volatile (new plans)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=EXECUTION_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def execution_qos() -> QoSProfile:
    """Return the QoS of the progress topic: reliable, the last messages kept for late joiners."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=EXECUTION_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def diagnostics_qos() -> QoSProfile:
    """Return the QoS of /diagnostics: what diagnostic_updater and the aggregator use."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def diagnostic_array(status: dict, stamp: Time) -> DiagnosticArray:
    """
    Return the planner's status as /diagnostics carries it: one DiagnosticStatus.

    It is named after the node (its fully qualified name without the leading slash); the
    hardware id is the device the model runs on (the server's URL for a remote backend).
    """
    model = status.get('model') or {}
    hardware = model.get('base', '') if status.get('device') == 'remote' else status['device']
    health = status['health']
    return DiagnosticArray(header=Header(stamp=stamp), status=[DiagnosticStatus(
        level=_LEVELS[health['level']], name=status['node'].lstrip('/'),
        message=health['message'], hardware_id=hardware or '',
        values=[KeyValue(key=key, value=value) for key, value in key_values(status)])])


def parameter_descriptor(parameter: Parameter) -> ParameterDescriptor:
    """Return what ``ros2 param describe`` shows of a parameter of either node."""
    constraints = [limits(parameter)] + ([] if parameter.dynamic else ['read at start-up'])
    return ParameterDescriptor(
        description=parameter.description, read_only=not parameter.dynamic,
        # typed by load_config, so a wrong type is reported instead of raised
        dynamic_typing=True, additional_constraints='; '.join(c for c in constraints if c))


def create_topic(node: Node, kind: str, parameter: str, name: str, default: str,
                 qos: QoSProfile, errors: List[str], callback=None, callback_group=None):
    """
    Create a std_msgs/String publisher or subscription (``kind``) on the topic ``name``.

    A ``name`` that is not a valid topic name (the value of the ``parameter``) falls back to
    ``default``, and the reason is appended to ``errors``: the node comes up and reports it
    instead of dying at start-up.
    """
    for topic in (name, default):
        try:
            if kind == 'publisher':
                return node.create_publisher(String, topic, qos)
            return node.create_subscription(String, topic, callback, qos,
                                            callback_group=callback_group)
        except Exception as exc:  # an invalid topic name: fall back to the default
            errors.append('%s %r is not a valid topic name (%s); using %r' % (
                parameter, topic, exc, default))
    raise RuntimeError('cannot create the %s topic' % parameter)  # pragma: no cover


def acknowledged(publishers) -> bool:
    """Return True when every subscriber of each publisher acknowledged its last messages."""
    for publisher in publishers:
        try:
            if not publisher.wait_for_all_acked(Duration(seconds=0.02)):
                return False
        except Exception:  # the context is going away: nothing more will be delivered
            pass
    return True


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT and SIGTERM: the node's loop then shuts it down in order."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())


def ignore_signals() -> None:
    """
    Ignore SIGINT and SIGTERM from now on: the node has shut down and is exiting.

    Ctrl-C in a terminal signals launch and the node both, so a second SIGINT follows the
    first; Python restores the default handlers as it exits, and that one would end the
    process with -2 instead of 0.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def init_ros(args: Optional[List[str]] = None, context: Optional[Context] = None) -> None:
    """
    Initialize rclpy without its signal handlers: the caller decides what SIGINT does.

    planner_node and plan_executor shut down in order on SIGINT and SIGTERM; plan_client
    turns Ctrl-C into its exit status 130.
    """
    try:
        from rclpy.signals import SignalHandlerOptions
    except ImportError:  # pragma: no cover - an rclpy without signal handler options
        rclpy.init(args=args, context=context)
    else:
        rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
