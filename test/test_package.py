"""The built package: ament index, installed files, entry points and Python 3.10 syntax."""

import ast
import glob
import os
import subprocess

from ament_index_python.packages import get_package_share_directory
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_share_directory_has_launch_and_config():
    share = get_package_share_directory('robot_llm_planner')
    for name in ('package.xml', 'launch/planner.launch.py', 'config/skills.yaml',
                 'config/planner.yaml', 'config/action_plan.schema.json'):
        assert os.path.isfile(os.path.join(share, name)), name


def test_console_scripts_are_installed_where_ros2_run_looks():
    share = get_package_share_directory('robot_llm_planner')
    prefix = os.path.dirname(os.path.dirname(share))
    for script in ('planner_node', 'plan_client'):
        assert os.access(os.path.join(prefix, 'lib', 'robot_llm_planner', script), os.X_OK)


def _python_files():
    for top in ('robot_llm_planner', 'launch', 'test', 'training', 'benchmarks'):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith('.py'):
                    yield os.path.join(folder, name)


def test_sources_parse_as_python_3_10():
    for path in _python_files():
        with open(path, encoding='utf-8') as stream:
            ast.parse(stream.read(), path, feature_version=(3, 10))


def _python_3_10():
    for path in sorted(glob.glob('/root/.pyenv/versions/3.10*/bin/python3.10')) + [
            '/usr/bin/python3.10']:
        if os.access(path, os.X_OK):
            return path
    return None


PY310 = _python_3_10()


@pytest.mark.skipif(PY310 is None,
                    reason='no Python 3.10 interpreter on this machine; the ast check above '
                    'still checks the syntax')
def test_core_imports_on_python_3_10():
    # The ROS-free, torch-free core must import on Humble's Python with only PyYAML.
    code = ('import sys; sys.path.insert(0, %r)\n'
            'import robot_llm_planner.core.plan, robot_llm_planner.core.message, '
            'robot_llm_planner.cli.postprocess, robot_llm_planner.cli\n' % ROOT)
    result = subprocess.run([PY310, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
