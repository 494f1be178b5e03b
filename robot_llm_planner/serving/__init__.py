"""
The planner service without ROS: what happens to a command between /command and /action_plan.

One command's walk: :mod:`.service` takes it in (parsed, checked by the planner, queued or
refused as the service's :mod:`.state` says), :mod:`.command_queue` holds it, :mod:`.worker`
plans it with the planner :mod:`.loader` loaded, and :mod:`.answers` publishes its one answer.
:mod:`.refusals` words the answer of a command that is not planned; :mod:`.status` and
:mod:`.health` are what /planner_status and /diagnostics show. Nothing here imports rclpy:
planner_node hands the service its publish functions.
"""
