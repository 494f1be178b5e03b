"""
The ROS 2 side: every module here uses rclpy.

:mod:`.interface` (topic names, QoS, messages, rclpy start-up), :mod:`.planner_node` (the thin
managed node around :class:`~robot_llm_planner.serving.service.PlannerService`),
:mod:`.plan_executor`, and :mod:`.plan_client` (the command line) with its library
:mod:`.client`.
"""
