"""
The core: from a command to a checked plan, with neither ROS nor torch.

The plan format and the model's output convention (:mod:`.plan`), the robot's skills
(:mod:`.skills`), the prompt (:mod:`.prompt`), a /command message (:mod:`.command`), the
/action_plan message (:mod:`.message`), plan confidence (:mod:`.confidence`), what the planner
needs of an inference engine (:mod:`.backend`), the settings (:mod:`.settings`) and the
planner itself (:mod:`.planner`). Nothing here imports torch, rclpy or another subpackage.
"""
