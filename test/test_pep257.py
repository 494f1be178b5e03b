"""The ament pep257 docstring check on the package code."""

import os

from ament_pep257.main import main
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    rc = main(argv=[os.path.join(ROOT, 'robot_llm_planner'), os.path.join(ROOT, 'launch')])
    assert rc == 0, 'Found code style errors / warnings'
