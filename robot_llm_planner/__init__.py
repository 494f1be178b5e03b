"""
robot_llm_planner: a fine-tuned LLM action planner for ROS 2 home robots.

The core (plan format, skills, prompting, inference, planning) has no ROS dependency; the
ROS 2 node in :mod:`robot_llm_planner.planner_node` is a thin shell around it.
"""
