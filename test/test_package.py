"""The built package: ament index, installed files, entry points and Python 3.10 syntax."""

import ast
import os
import re

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


def _imported_top_levels(folder):
    names = set()
    for path in _python_files():
        if not path.startswith(os.path.join(ROOT, folder) + os.sep):
            continue
        with open(path, encoding='utf-8') as stream:
            tree = ast.parse(stream.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split('.')[0])
                if node.module == 'rclpy.lifecycle':
                    names.add('lifecycle_msgs')  # rclpy's lifecycle node needs its services
    return names


def test_ros_packages_the_node_imports_are_declared_and_pinned():
    imported = _imported_top_levels('robot_llm_planner') | _imported_top_levels('launch')
    ros = {name for name in imported if name.endswith(('_msgs', '_interfaces'))
           or name in ('rclpy', 'launch', 'launch_ros', 'ament_index_python')}
    assert {'rclpy', 'std_msgs', 'lifecycle_msgs', 'diagnostic_msgs'} <= ros
    with open(os.path.join(ROOT, 'package.xml'), encoding='utf-8') as stream:
        declared = set(re.findall(r'<exec_depend>([\w]+)</exec_depend>', stream.read()))
    assert ros <= declared, ros - declared
    # without a ROS install, the message packages come as pinned wheels
    with open(os.path.join(ROOT, 'requirements-dev.txt'), encoding='utf-8') as stream:
        pins = set(re.findall(r'^ros-kilted-([a-z-]+)==', stream.read(), re.M))
    for name in ros:
        if name.endswith('_msgs'):
            assert name.replace('_', '-') in pins, name
