"""
Inference: the engines behind :class:`~robot_llm_planner.core.backend.Backend`.

The model on this machine (:mod:`.transformers_backend`, with the fast decode loop of
:mod:`.decoding`, the plan grammar of :mod:`.grammar` and :mod:`.quantize`), a remote
OpenAI-compatible server (:mod:`.openai_backend`), and :mod:`.build`, which turns
:class:`~robot_llm_planner.core.settings.PlannerSettings` into a planner. Imports the core,
never the ROS side.
"""
