"""
The offline command line, ``python3 -m robot_llm_planner.cli`` (:mod:`.commands`).

Plan commands with a model, evaluate prediction runs (:mod:`.evaluate`) and convert
LLaMA-Factory predictions to the seed format (:mod:`.postprocess`).
"""
