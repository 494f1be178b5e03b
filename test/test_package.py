"""The built package: ament index, installed files, entry points and Python 3.10 syntax."""

import ast
import os

from ament_index_python.packages import get_package_share_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_share_directory_has_launch_and_config():
    share = get_package_share_directory('robot_llm_planner')
    for name in ('package.xml', 'launch/planner.launch.py', 'config/skills.yaml',
                 'config/planner.yaml', 'config/action_plan.schema.json',
                 'config/plan_executor.yaml', 'config/plan_execution.schema.json'):
        assert os.path.isfile(os.path.join(share, name)), name


def test_console_scripts_are_installed_where_ros2_run_looks():
    share = get_package_share_directory('robot_llm_planner')
    prefix = os.path.dirname(os.path.dirname(share))
    for script in ('planner_node', 'plan_client', 'plan_executor'):
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


def test_the_robot_install_carries_no_training_or_demo_module():
    share = get_package_share_directory('robot_llm_planner')
    prefix = os.path.dirname(os.path.dirname(share))
    installed = [os.path.relpath(os.path.join(folder, name), prefix)
                 for folder, _, files in os.walk(prefix) for name in files
                 if name.endswith('.py')]
    modules = [path for path in installed if '/site-packages/' in path]
    assert any(path.endswith('robot_llm_planner/core/planner.py') for path in modules)
    for path in modules:
        assert 'site-packages/robot_llm_planner/' in path, path
        for word in ('training', 'demo', 'dataset', 'tiny_qwen', 'copy_circuit'):
            assert word not in os.path.basename(path), path
