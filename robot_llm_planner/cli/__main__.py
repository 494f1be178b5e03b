"""``python3 -m robot_llm_planner.cli``: the offline command line (see :mod:`.commands`)."""

import sys

from robot_llm_planner.cli.commands import main

sys.exit(main())
