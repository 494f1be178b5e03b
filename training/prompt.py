#!/usr/bin/env python3
"""
Print a prompt variant's instruction: the text for planner_node's ``prompt.instruction``.

Run from a source checkout, e.g. ``python3 training/prompt.py prompt3 [--task task1]``.
"""

import os
import sys

if __name__ == '__main__':
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [HERE, os.path.dirname(HERE)]  # planner_training, robot_llm_planner
    from planner_training.cli import main
    sys.exit(main(['prompt'] + sys.argv[1:]))
