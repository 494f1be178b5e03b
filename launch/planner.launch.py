"""
Start planner_node with its YAML parameters: ros2 launch robot_llm_planner planner.launch.py.

Launch arguments:
  params_file   YAML parameters (default: the installed config/planner.yaml)
  model_path    overrides model.path when not empty
  adapter_path  overrides model.adapter_path when not empty
  namespace     ROS namespace of the node (default: none)
  log_level     debug | info | warn | error (default: info)
  autostart     true | false: overrides lifecycle.autostart when not empty; false leaves the
                managed node unconfigured for a lifecycle manager (ros2 lifecycle set ...)

planner_node is a managed (lifecycle) node, started as a launch_ros LifecycleNode so that
launch sees its transitions.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

ARGUMENTS = (
    ('params_file', os.path.join(get_package_share_directory('robot_llm_planner'),
                                 'config', 'planner.yaml'), 'YAML parameters for planner_node'),
    ('model_path', '', 'base or merged model directory (overrides model.path)'),
    ('adapter_path', '', 'LoRA adapter directory (overrides model.adapter_path)'),
    ('namespace', '', 'ROS namespace of the node'),
    ('log_level', 'info', 'logging level: debug, info, warn, error'),
    ('autostart', '', 'true: configure and activate by itself; false: wait for a lifecycle '
     'manager (overrides lifecycle.autostart when not empty)'),
)
OVERRIDES = (('model_path', 'model.path'), ('adapter_path', 'model.adapter_path'))


def _autostart(text):
    """Return the lifecycle.autostart value of the autostart argument (None: not given)."""
    value = text.strip().lower()
    if value not in ('', 'true', 'false'):
        raise ValueError('autostart must be true or false, got %r' % text)
    return None if not value else value == 'true'


def _planner_node(context):
    # Only arguments that were given override the YAML file: an empty one would blank it.
    parameters = [LaunchConfiguration('params_file')]
    for argument, parameter in OVERRIDES:
        value = LaunchConfiguration(argument).perform(context)
        if value:
            parameters.append({parameter: value})
    autostart = _autostart(LaunchConfiguration('autostart').perform(context))
    if autostart is not None:
        parameters.append({'lifecycle.autostart': autostart})
    return [LifecycleNode(
        package='robot_llm_planner', executable='planner_node', name='planner_node',
        namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
        parameters=parameters,
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')])]


def generate_launch_description():
    """Declare the launch arguments and start planner_node."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_planner_node)])
