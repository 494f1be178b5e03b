"""
The planner service without ROS: what happens to a command between /command and /action_plan.

:mod:`.service` (the command lifecycle), :mod:`.command_queue` (its bounded queue) and
:mod:`.health` (the status as /diagnostics shows it). Nothing here imports rclpy:
planner_node hands the service its publish functions.
"""
