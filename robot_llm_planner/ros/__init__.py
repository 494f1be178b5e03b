"""
The ROS 2 side: the planner node and its client.

:mod:`.interface` (topic names, QoS, messages, rclpy start-up), :mod:`.service` (the command
lifecycle, ROS-free), :mod:`.command_queue` (its bounded queue), :mod:`.health` (the status
as /diagnostics shows it, ROS-free), :mod:`.planner_node` (the thin managed node) and
:mod:`.plan_client`.
"""
