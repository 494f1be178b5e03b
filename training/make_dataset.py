#!/usr/bin/env python3
"""
Generate the fine-tuning data set into training/data (``--help`` lists the options).

Run from a source checkout, e.g. ``python3 training/make_dataset.py --seed 7 --size 500``.
"""

import os
import sys

if __name__ == '__main__':
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [HERE, os.path.dirname(HERE)]  # planner_training, robot_llm_planner
    from planner_training.cli import main
    sys.exit(main(['make-dataset'] + sys.argv[1:]))
