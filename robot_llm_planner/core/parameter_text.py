"""
The parameter table as people meet it: command-line options, limits in words, the reference.

``python3 -m robot_llm_planner.cli`` gives each settings parameter an option
(:func:`cli_option`) whose text is read and checked as a ROS parameter value is
(:func:`parse_text`); ``ros2 param describe`` and the docs say a parameter's limits in words
(:func:`limits`); ``docs/parameters.md`` is :func:`markdown_table`.
"""

import json
from typing import Any

from robot_llm_planner.core.executor_parameters import EXECUTOR_PARAMETERS
from robot_llm_planner.core.parameters import check_value, default_value, Parameter, PARAMETERS

# Command-line options whose name is not the settings field's (``--`` + field, ``_`` -> ``-``).
_OPTIONS = {'model_path': '--model', 'adapter_path': '--adapter', 'skills_file': '--skills',
            'remote_base_url': '--base-url', 'remote_model': '--remote-model',
            'remote_api_key_env': '--api-key-env', 'remote_timeout_s': '--timeout',
            'remote_retries': '--retries', 'remote_grammar_field': '--remote-grammar-field',
            'remote_endpoint': '--remote-endpoint'}


def cli_option(parameter: Parameter) -> str:
    """Return the command-line option of a settings parameter ('' for node-only ones)."""
    if parameter.field is None:
        return ''
    return _OPTIONS.get(parameter.field, '--' + parameter.field.replace('_', '-'))


def limits(parameter: Parameter) -> str:
    """Return what values the parameter takes beyond its type, in words ('' if any)."""
    parts = []
    if parameter.choices:
        parts.append('one of: ' + ', '.join(parameter.choices))
    if parameter.minimum is not None and parameter.maximum is not None:
        parts.append('from %g to %g' % (parameter.minimum, parameter.maximum))
    elif parameter.minimum is not None:
        parts.append('>= %g' % parameter.minimum)
    elif parameter.maximum is not None:
        parts.append('<= %g' % parameter.maximum)
    if parameter.positive:
        parts.append('> 0')
    return '; '.join(parts)


def parse_text(parameter: Parameter, text: str) -> Any:
    """
    Return the value a command-line string gives the parameter; raise ValueError if none.

    The value is checked as a ROS parameter value is (:func:`check_value`).
    """
    value: Any = text
    if parameter.kind is int:
        try:
            value = int(text)
        except ValueError:
            value = None
    elif parameter.kind is float:
        try:
            value = float(text)
        except ValueError:
            value = None
    converted, error = (None, 'not a number') if value is None else check_value(parameter, value)
    if error:
        kind = {int: 'an integer', float: 'a number', str: 'a string'}[parameter.kind]
        wanted = ' '.join(part for part in (kind, limits(parameter)) if part)
        raise ValueError('expected %s, got %r' % (wanted, text))
    return converted


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def markdown_table() -> str:
    """Return the parameter reference (docs/parameters.md is this text)."""
    lines = ['# planner_node parameters', '',
             'Generated from `robot_llm_planner/core/parameters.py` (`PARAMETERS`) by',
             '`python3 -m robot_llm_planner.cli parameters`; a test fails when the two differ.',
             'Set them in `config/planner.yaml` or with `--ros-args -p name:=value`; those',
             'marked dynamic also change at run time (`ros2 param set`). The command-line',
             'option of `python3 -m robot_llm_planner.cli plan` and `evaluate` sets the same',
             'setting.', '',
             '| parameter | type | default | values | dynamic | CLI option | meaning |',
             '|---|---|---|---|---|---|---|']
    for parameter in PARAMETERS:
        lines.append('| `%s` | %s | `%s` | %s | %s | %s | %s |' % (
            parameter.name, parameter.kind.__name__, _cell(_shown(default_value(parameter))),
            _cell(limits(parameter)), 'yes' if parameter.dynamic else '',
            '`%s`' % cli_option(parameter) if cli_option(parameter) else '',
            _cell(parameter.description)))
    lines += ['', '# plan_executor parameters', '',
              'Generated from `robot_llm_planner/core/executor_parameters.py` '
              '(`EXECUTOR_PARAMETERS`).',
              'Set them in `config/plan_executor.yaml` or with `--ros-args -p name:=value`; '
              'they are read at start-up.', '',
              '| parameter | type | default | values | meaning |', '|---|---|---|---|---|']
    for parameter in EXECUTOR_PARAMETERS:
        lines.append('| `%s` | %s | `%s` | %s | %s |' % (
            parameter.name, parameter.kind.__name__, _cell(_shown(parameter.default)),
            _cell(limits(parameter)), _cell(parameter.description)))
    return '\n'.join(lines) + '\n'


def _shown(default: Any) -> str:
    return json.dumps(default, ensure_ascii=False) if isinstance(default, (str, bool)) \
        else repr(default)
