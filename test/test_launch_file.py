"""
launch/planner.launch.py, without launch/launch_ros (not installable here).

The file is read as a syntax tree: its arguments, defaults and the Node it starts. The wiring
it produces (installed params file, parameter overrides, namespace, log level) is then run
by hand: the installed planner_node started with the same ``--ros-args`` launch_ros would
give it, with the tiny model, answering the installed plan_client.
"""

import ast
import os
import re
import signal
import subprocess

from planner_harness import executable, NodeProcess, ros_domain, share_path, wait_for_answers
import pytest
from robot_llm_planner.core.parameters import PARAMETERS_BY_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_FILE = os.path.join(ROOT, 'launch', 'planner.launch.py')
EXPECTED = ('params_file', 'model_path', 'adapter_path', 'namespace', 'log_level', 'autostart',
            'executor', 'executor_params_file')


@pytest.fixture(scope='module')
def tree():
    with open(LAUNCH_FILE, encoding='utf-8') as stream:
        return ast.parse(stream.read(), LAUNCH_FILE, feature_version=(3, 10))


def _assignment(tree, name):
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == [name]:
            return node.value
    raise AssertionError('%s is not assigned at module level' % name)


def _calls(tree, name):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


def test_declares_the_launch_arguments(tree):
    arguments = _assignment(tree, 'ARGUMENTS')
    names = [element.elts[0].value for element in arguments.elts]
    assert tuple(names) == EXPECTED
    defaults = {element.elts[0].value: element.elts[1] for element in arguments.elts}
    # params_file defaults to the installed config/planner.yaml
    params_default = ast.unparse(defaults['params_file'])
    assert 'os.path.join(SHARE, ' in params_default
    share = ast.unparse(_assignment(tree, 'SHARE'))
    assert share == "get_package_share_directory('robot_llm_planner')"
    assert "'config', 'planner.yaml'" in params_default
    for name in ('model_path', 'adapter_path', 'namespace', 'autostart'):
        assert defaults[name].value == ''
    assert defaults['log_level'].value == 'info'
    assert defaults['executor'].value == 'false'
    executor_default = ast.unparse(defaults['executor_params_file'])
    assert "'config', 'plan_executor.yaml'" in executor_default
    declared = _calls(tree, 'DeclareLaunchArgument')
    assert len(declared) == 1  # one comprehension over ARGUMENTS
    assert [k.arg for k in declared[0].keywords] == ['default_value', 'description']


def test_overrides_name_real_node_parameters(tree):
    overrides = _assignment(tree, 'OVERRIDES')
    pairs = [(element.elts[0].value, element.elts[1].value) for element in overrides.elts]
    assert pairs == [('model_path', 'model.path'), ('adapter_path', 'model.adapter_path')]
    for _, parameter in pairs:
        assert parameter in PARAMETERS_BY_NAME


def test_starts_planner_node_with_params_file_namespace_and_log_level(tree):
    nodes = _calls(tree, 'LifecycleNode')  # a managed node: launch sees its transitions
    assert len(nodes) == 1 and len(_calls(tree, 'Node')) == 1  # and plan_executor
    keywords = {k.arg: k.value for k in nodes[0].keywords}
    assert keywords['package'].value == 'robot_llm_planner'
    assert keywords['executable'].value == 'planner_node'
    assert keywords['name'].value == 'planner_node'
    assert ast.unparse(keywords['namespace']) == "LaunchConfiguration('namespace')"
    assert ast.unparse(keywords['arguments']) == (
        "['--ros-args', '--log-level', LaunchConfiguration('log_level')]")
    assert ast.unparse(keywords['parameters']) == 'parameters'
    source = ast.unparse(tree)
    assert "parameters = [LaunchConfiguration('params_file')]" in source


def _function(tree, name):
    """Return a module-level function of the launch file, compiled on its own."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            namespace = {}
            exec(compile(ast.Module(body=[node], type_ignores=[]), LAUNCH_FILE, 'exec'),
                 namespace)
            return namespace[name]
    raise AssertionError('%s is not defined at module level' % name)


def test_true_false_arguments_are_read_by_one_function(tree):
    flag = _function(tree, 'flag')
    assert flag('autostart', '') is None and flag('autostart', ' ') is None  # not given
    assert [flag('executor', v) for v in ('true', 'True', '1', 'yes', 'on')] == [True] * 5
    assert [flag('executor', v) for v in ('false', ' False ', '0', 'no', 'off')] == [False] * 5
    with pytest.raises(ValueError, match="must be true or false, got 'maybe'"):
        flag('autostart', 'maybe')


def test_autostart_overrides_lifecycle_autostart_only_when_given(tree):
    source = ast.unparse(tree)
    assert "autostart = flag('autostart', LaunchConfiguration('autostart').perform(context))" \
        in source
    assert 'if autostart is not None:' in source
    assert "parameters.append({'lifecycle.autostart': autostart})" in source
    assert PARAMETERS_BY_NAME['lifecycle.autostart'].kind is bool


def test_generate_launch_description_with_launch_ros():
    pytest.importorskip('launch_ros', reason='launch_ros is not installed on this machine; '
                        'the syntax-tree tests above check the file instead')
    import importlib.util
    spec = importlib.util.spec_from_file_location('planner_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = [argument.name for argument in description.get_launch_arguments()]
    assert tuple(names) == EXPECTED


def test_installed_params_file_with_overrides_answers_plan_client(tiny_model, tiny_adapter,
                                                                  tmp_path):
    # what `ros2 launch robot_llm_planner planner.launch.py model_path:=... adapter_path:=...
    # namespace:=robot1 log_level:=debug` runs
    with ros_domain() as domain:
        node = NodeProcess(
            domain, tmp_path, params_file=share_path('config', 'planner.yaml'),
            overrides=[('model.path', tiny_model), ('model.adapter_path', tiny_adapter)],
            ros_args=['--log-level', 'debug', '-r', '__node:=planner_node',
                      '-r', '__ns:=/robot1'])
        try:
            result = subprocess.run(
                [executable('plan_client'), '帮我拿一瓶水。', '--id', 'launch-1',
                 '--timeout', '180', '--topic-command', '/robot1/command',
                 '--topic-plan', '/robot1/action_plan'],
                env=domain.env, capture_output=True, text=True, timeout=240)
            assert result.returncode in (0, 1), result.stderr + node.stderr()[-3000:]
            out = result.stdout
            assert '帮我拿一瓶水。  [id launch-1]' in out and 'latency:' in out
            # the random tiny model's plan: its steps as a table (column widths vary), or errors
            assert re.search(r'^ +# +action +target', out, re.M) or 'errors:' in out, out
            log = node.stderr()
            assert 'model.path = %r' % tiny_model in log  # a DEBUG line: log_level applied
            assert 'commands on /robot1/command, plans on /robot1/action_plan' in log
            assert node.stop(signal.SIGINT) == 0
            assert 'Traceback' not in node.stderr()
        finally:
            node.kill()


def test_autostart_false_leaves_the_node_to_a_lifecycle_manager(tiny_model, tmp_path):
    # what `ros2 launch robot_llm_planner planner.launch.py model_path:=... autostart:=false`
    # runs, then `ros2 lifecycle set /planner_node configure` and `... activate`
    with ros_domain() as domain:
        client, lifecycle = domain.client(), domain.lifecycle()
        node = NodeProcess(
            domain, tmp_path, params_file=share_path('config', 'planner.yaml'),
            overrides=[('model.path', tiny_model), ('lifecycle.autostart', 'false'),
                       ('model.device', 'cpu'), ('generation.max_new_tokens', 8)],
            ros_args=['-r', '__node:=planner_node'])
        try:
            assert lifecycle.get() == 'unconfigured'
            assert client.wait_for_planner(60)
            early = client.send('去客厅', 'before-configure')
            answer = wait_for_answers(client, [early])[early]
            assert answer['status'] == 'rejected'
            assert answer['errors'][0]['code'] == 'node_inactive'
            assert lifecycle.change('configure', timeout=240), node.stderr()[-3000:]
            assert lifecycle.change('activate') and lifecycle.get() == 'active'
            late = client.send('去客厅', 'after-activate')
            assert wait_for_answers(client, [late])[late]['status'] in ('ok', 'invalid')
            assert node.stop(signal.SIGINT) == 0
            assert 'Traceback' not in node.stderr()
        finally:
            node.kill()


def test_starts_plan_executor_when_the_executor_argument_says_so(tree):
    executor = {k.arg: k.value for k in _calls(tree, 'Node')[0].keywords}
    assert executor['executable'].value == 'plan_executor'
    assert executor['name'].value == 'plan_executor'
    assert ast.unparse(executor['namespace']) == "LaunchConfiguration('namespace')"
    assert ast.unparse(executor['parameters']) == "[LaunchConfiguration('executor_params_file')]"
    assert ast.unparse(executor['arguments']) == (
        "['--ros-args', '--log-level', LaunchConfiguration('log_level')]")
    source = ast.unparse(tree)
    assert "if flag('executor', LaunchConfiguration('executor').perform(context)):" in source
