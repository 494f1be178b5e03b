"""
planner_training: the offline side that a robot never installs.

The data set generator (:mod:`.dataset`), the demo model's recipe trained with LLaMA-Factory on
CPU (:mod:`.demo_model`, with the planted :mod:`.copy_circuit` and the :mod:`.tiny_qwen` model
builder) and ``make demo`` (:mod:`.demo`). Run from a source checkout with ``training/`` on
``sys.path`` (the Makefile and the tests set it); it imports ``robot_llm_planner``, never the
other way round.
"""
