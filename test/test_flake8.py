"""The ament flake8 check, as `colcon test` runs it in a ROS workspace."""

import os

from ament_flake8.main import main_with_errors
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    paths = [os.path.join(ROOT, name) for name in
             ('robot_llm_planner', 'test', 'launch', 'training', 'benchmarks', 'setup.py')]
    rc, errors = main_with_errors(argv=[p for p in paths if os.path.exists(p)])
    assert rc == 0, 'Found %d code style errors / warnings:\n' % len(errors) + '\n'.join(errors)
