"""
robot_llm_planner: a fine-tuned LLM action planner for ROS 2 home robots.

Layers, each importing only those before it:

- :mod:`robot_llm_planner.core`: plan format, skills, prompt, messages, the planner (no ROS,
  no torch);
- :mod:`robot_llm_planner.inference`: the model engines (transformers, a remote server);
- :mod:`robot_llm_planner.ros`: planner_node and plan_client;
- :mod:`robot_llm_planner.cli`: the offline command line.
"""
