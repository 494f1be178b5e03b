"""
Executing plans as py_trees behaviour trees, ROS-free.

- :mod:`.behaviours`: which behaviour runs each skill (``module:callable`` factories);
- :mod:`.simulation`: the default behaviours, a simulated household over the symbolic state
  of :mod:`robot_llm_planner.core.world` (step durations); :mod:`.faults`: its injected
  failures and disturbances;
- :mod:`.reactive`: one plan step as a subtree, reactive with recovery or linear, with its
  attempts, retries and timeouts;
- :mod:`.tree`: one plan as a tree (a Sequence with memory, one step subtree per plan step)
  and the /plan_execution progress messages it produces;
- :mod:`.runner`: plans one after another, queued or preempted.

The ROS node around it is :mod:`robot_llm_planner.ros.plan_executor`. This layer imports the
core and py_trees only (py_trees API that 2.2, the version of ROS 2 Humble, has as well).
"""
