"""
The ROS 2 side: the planner node and its client.

:mod:`.interface` (topic names, QoS, rclpy start-up), :mod:`.service` (the command lifecycle,
ROS-free), :mod:`.command_queue` (its bounded queue), :mod:`.planner_node` (the thin node) and
:mod:`.plan_client`.
"""
