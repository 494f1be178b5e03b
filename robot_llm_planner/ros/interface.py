"""
The planner's ROS interface in one place: topic names, QoS profiles and the rclpy start-up.

planner_node and every client (plan_client, the demo, a behavior tree's node) import their
QoS from here, never from the node module. The QoS choices are explained in ``docs/ros.md``.
"""

from typing import List, Optional

import rclpy
from rclpy.context import Context
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

NODE_NAME = 'planner_node'
# The absolute names a client uses by default (the node's own defaults are relative names,
# the topics.* parameters, so they follow its namespace).
COMMAND_TOPIC = '/command'
PLAN_TOPIC = '/action_plan'
STATUS_TOPIC = '/planner_status'


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


def init_ros(args: Optional[List[str]] = None, context: Optional[Context] = None) -> None:
    """
    Initialize rclpy without its signal handlers: the caller decides what SIGINT does.

    planner_node shuts down in order on SIGINT and SIGTERM; plan_client turns Ctrl-C into
    its exit status 130.
    """
    try:
        from rclpy.signals import SignalHandlerOptions
    except ImportError:  # pragma: no cover - an rclpy without signal handler options
        rclpy.init(args=args, context=context)
    else:
        rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
