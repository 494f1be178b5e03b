#!/usr/bin/env python3
"""
Generate the fine-tuning data set: the same as ``python3 -m robot_llm_planner.cli make-dataset``.

Run from the repository root, e.g. ``python3 training/make_dataset.py --seed 7 --size 500``.
"""

import os
import sys

if __name__ == '__main__':
    # Let a source checkout run this without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from robot_llm_planner.cli import main
    sys.exit(main(['make-dataset'] + sys.argv[1:]))
