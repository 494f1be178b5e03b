"""
The layers and their boundaries: what each subpackage may import, and on which Pythons.

Layers, lowest first: ``core`` (no ROS, no torch), ``inference`` and ``execution``
(py_trees) beside each other, ``serving`` (the planner service, ROS-free) on ``inference``,
then ``ros`` and ``cli`` beside each other; the training side (``training/planner_training``)
sits above them all and is not installed. A module imports only its own layer and the layers
below it, lazy imports inside functions included, and the module graph has no cycle. Every
module of ``ros`` uses rclpy; nothing else in the package does.
"""

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'robot_llm_planner')
TRAINING = os.path.join(ROOT, 'training', 'planner_training')

# What each layer may import, besides itself, the standard library and third-party packages.
ALLOWED = {
    'core': set(),
    'inference': {'core'},
    'execution': {'core'},
    'serving': {'core', 'inference'},
    'ros': {'core', 'inference', 'execution', 'serving'},
    'cli': {'core', 'inference'},
    'planner_training': {'core', 'inference', 'execution', 'serving', 'ros', 'cli'},
}
ROS = {'rclpy', 'std_msgs', 'rcl_interfaces', 'diagnostic_msgs', 'lifecycle_msgs',
       'builtin_interfaces'}
# Third-party packages a layer must never import, lazily or not.
FORBIDDEN = {
    'core': {'torch', 'transformers', 'peft', 'xgrammar', 'rclpy', 'std_msgs', 'rcl_interfaces',
             'llamafactory'},
    'inference': {'rclpy', 'std_msgs', 'rcl_interfaces', 'llamafactory'},
    'execution': {'torch', 'transformers', 'peft', 'xgrammar', 'rclpy', 'std_msgs',
                  'rcl_interfaces', 'llamafactory'},
    'serving': ROS | {'torch', 'transformers', 'peft', 'xgrammar', 'llamafactory'},
    'cli': {'rclpy', 'std_msgs', 'rcl_interfaces', 'llamafactory'},
    'ros': {'llamafactory'},
}


def _modules():
    """Return {module name: path} of the package and of the training side."""
    found = {}
    for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
        relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        found[relative[:-len('.__init__')] if relative.endswith('__init__') else relative] = path
    for path in glob.glob(os.path.join(TRAINING, '*.py')):
        name = 'planner_training.' + os.path.basename(path)[:-3]
        found[name[:-len('.__init__')] if name.endswith('__init__') else name] = path
    return found


MODULES = _modules()


def _layer(module):
    parts = module.split('.')
    if parts[0] == 'planner_training':
        return 'planner_training'
    return parts[1] if len(parts) > 1 else None


def _imports(path):
    """Return every module ``path`` imports, at any depth of its code."""
    with open(path, encoding='utf-8') as stream:
        tree = ast.parse(stream.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from robot_llm_planner.core import plan` imports the module core.plan
            names.update('%s.%s' % (node.module, alias.name) for alias in node.names
                         if '%s.%s' % (node.module, alias.name) in MODULES)
    return names


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module != 'robot_llm_planner':
            assert _layer(module) in ALLOWED, module


@pytest.mark.parametrize('module', sorted(MODULES))
def test_imports_go_only_to_the_same_layer_or_below(module):
    layer = _layer(module)
    for name in _imports(MODULES[module]):
        top = name.split('.')[0]
        assert top not in FORBIDDEN.get(layer, ()), '%s imports %s' % (module, name)
        if name in MODULES and name != 'robot_llm_planner':
            target = _layer(name)
            assert target == layer or target in ALLOWED[layer], (
                '%s (%s) imports %s (%s)' % (module, layer, name, target))


def test_the_module_graph_has_no_cycle():
    graph = {module: {name for name in _imports(path) if name in MODULES}
             for module, path in MODULES.items()}
    state = {}

    def visit(module, trail):
        if state.get(module) == 'done':
            return
        assert state.get(module) != 'open', 'import cycle: ' + ' -> '.join(trail + [module])
        state[module] = 'open'
        for name in sorted(graph[module]):
            visit(name, trail + [module])
        state[module] = 'done'

    for module in sorted(graph):
        visit(module, [])


def test_the_node_is_thin_and_its_service_ros_free():
    with open(MODULES['robot_llm_planner.ros.planner_node'], encoding='utf-8') as stream:
        node = stream.read()
    assert node.count('\n') < 250
    assert node.count('_plan_pub.publish(') == 1  # the one publish_answer the service gets
    with open(MODULES['robot_llm_planner.serving.answers'], encoding='utf-8') as stream:
        answers = stream.read()
    assert answers.count('self._publish(') == 1  # inside send_plan: one way to answer
    for module in MODULES:
        if _layer(module) == 'serving':
            tops = {name.split('.')[0] for name in _imports(MODULES[module])}
            assert not tops & ROS, module


def test_every_module_of_ros_uses_rclpy():
    for module in MODULES:
        if _layer(module) == 'ros' and not module.endswith('__init__') and module.count('.') > 1:
            tops = {name.split('.')[0] for name in _imports(MODULES[module])}
            assert 'rclpy' in tops, '%s does not use rclpy: it belongs to another layer' % module


def test_the_service_loads_no_ros():
    loaded = _loaded_after_import(['robot_llm_planner.serving.service'])
    assert not loaded & {'rclpy', 'torch'}, loaded


def _loaded_after_import(modules):
    code = ('import sys\nimport %s\nprint(" ".join(sorted(m.split(".")[0] for m in '
            'sys.modules)))' % ', '.join(modules))
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_the_core_loads_neither_torch_nor_rclpy():
    core = sorted(m for m in MODULES if _layer(m) == 'core')
    loaded = _loaded_after_import(core)
    assert 'robot_llm_planner' in loaded
    assert not loaded & {'torch', 'rclpy', 'transformers', 'xgrammar', 'numpy'}, loaded


def test_the_cli_and_the_node_table_load_no_ros():
    loaded = _loaded_after_import(['robot_llm_planner.cli.commands',
                                   'robot_llm_planner.core.parameters'])
    assert not loaded & {'torch', 'rclpy'}, loaded


def _interpreters():
    """Return the Python 3.10 and 3.12 interpreters of this machine (Humble's and Jazzy's)."""
    found = {}
    candidates = []
    for version in ('3.10', '3.12'):
        candidates += sorted(glob.glob(os.path.expanduser(
            '~/.pyenv/versions/%s*/bin/python%s' % (version, version))))
        candidates += ['/usr/bin/python%s' % version, '/usr/local/bin/python%s' % version]
    for path in candidates:
        version = os.path.basename(path)[len('python'):]
        if version in found or not os.access(path, os.X_OK):
            continue
        if subprocess.run([path, '-c', 'pass'], capture_output=True).returncode == 0:
            found[version] = path
    return found


INTERPRETERS = _interpreters()


@pytest.mark.slow
@pytest.mark.parametrize('version', ['3.10', '3.12'])
def test_core_and_cli_import_on_the_pythons_of_humble_and_jazzy(version, tmp_path):
    interpreter = INTERPRETERS.get(version)
    if interpreter is None:
        pytest.skip('no Python %s on this machine (looked in ~/.pyenv/versions and /usr/bin); '
                    'test_package.py still checks the syntax' % version)
    # A fresh virtual environment with PyYAML alone: what a robot has besides ROS.
    env_dir = str(tmp_path / 'venv')
    subprocess.run([interpreter, '-m', 'venv', env_dir], check=True)
    python = os.path.join(env_dir, 'bin', 'python')
    pip = subprocess.run([python, '-m', 'pip', 'install', '--quiet', 'PyYAML==6.0.4'],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    modules = sorted(m for m in MODULES if _layer(m) in ('core', 'cli')
                     and not m.endswith('__main__'))
    code = 'import %s\nprint("ok")' % ', '.join(modules)
    result = subprocess.run([python, '-c', code], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr
