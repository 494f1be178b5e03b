"""
Start planner_node with its YAML parameters: ros2 launch robot_llm_planner planner.launch.py.

Launch arguments:
  params_file   YAML parameters (default: the installed config/planner.yaml)
  model_path    overrides model.path when not empty
  adapter_path  overrides model.adapter_path when not empty
  namespace     ROS namespace of the nodes (default: none)
  log_level     debug | info | warn | error (default: info)
  autostart     true | false: overrides lifecycle.autostart when not empty; false leaves the
                managed node unconfigured for a lifecycle manager (ros2 lifecycle set ...)
  executor      true: also start plan_executor, which runs the plans (default: false)
  executor_params_file  its YAML parameters (default: the installed config/plan_executor.yaml)

planner_node is a managed (lifecycle) node, started as a launch_ros LifecycleNode so that
launch sees its transitions.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

SHARE = get_package_share_directory('robot_llm_planner')
ARGUMENTS = (
    ('params_file', os.path.join(SHARE, 'config', 'planner.yaml'),
     'YAML parameters for planner_node'),
    ('model_path', '', 'base or merged model directory (overrides model.path)'),
    ('adapter_path', '', 'LoRA adapter directory (overrides model.adapter_path)'),
    ('namespace', '', 'ROS namespace of the nodes'),
    ('log_level', 'info', 'logging level: debug, info, warn, error'),
    ('autostart', '', 'true: configure and activate by itself; false: wait for a lifecycle '
     'manager (overrides lifecycle.autostart when not empty)'),
    ('executor', 'false', 'true: also start plan_executor, which executes the plans'),
    ('executor_params_file', os.path.join(SHARE, 'config', 'plan_executor.yaml'),
     'YAML parameters for plan_executor'),
)
OVERRIDES = (('model_path', 'model.path'), ('adapter_path', 'model.adapter_path'))


def flag(name, value):
    """Return a true/false launch argument as a bool, None when empty; refuse other values."""
    text = value.strip().lower()
    if not text:
        return None
    if text in ('true', '1', 'yes', 'on'):
        return True
    if text in ('false', '0', 'no', 'off'):
        return False
    raise ValueError("launch argument %s must be true or false, got '%s'" % (name, value))


def _nodes(context):
    # Only arguments that were given override the YAML file: an empty one would blank it.
    parameters = [LaunchConfiguration('params_file')]
    for argument, parameter in OVERRIDES:
        value = LaunchConfiguration(argument).perform(context)
        if value:
            parameters.append({parameter: value})
    autostart = flag('autostart', LaunchConfiguration('autostart').perform(context))
    if autostart is not None:
        parameters.append({'lifecycle.autostart': autostart})
    nodes = [LifecycleNode(
        package='robot_llm_planner', executable='planner_node', name='planner_node',
        namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
        parameters=parameters,
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')])]
    if flag('executor', LaunchConfiguration('executor').perform(context)):
        nodes.append(Node(
            package='robot_llm_planner', executable='plan_executor', name='plan_executor',
            namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
            parameters=[LaunchConfiguration('executor_params_file')],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')]))
    return nodes


def generate_launch_description():
    """Declare the launch arguments and start planner_node (and plan_executor)."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
