"""
Executing plans as py_trees behaviour trees, ROS-free.

- :mod:`.behaviours`: which behaviour runs each skill (``module:callable`` factories);
- :mod:`.simulation`: the default behaviours, a simulated household over the symbolic state
  of :mod:`robot_llm_planner.core.world` (step durations, failure injection);
- :mod:`.tree`: one plan as a tree (a Sequence with memory, one behaviour per step) and the
  /plan_execution progress messages it produces;
- :mod:`.runner`: plans one after another, queued or preempted.

The ROS node around it is :mod:`robot_llm_planner.ros.plan_executor`. This layer imports the
core and py_trees only (py_trees API that 2.2, the version of ROS 2 Humble, has as well).
"""
