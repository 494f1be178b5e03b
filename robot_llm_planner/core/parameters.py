"""
planner_node's parameters, in one table for the node, the command line and the docs.

:data:`PARAMETERS` is the one table that planner_node declares its ROS parameters from, that
``python3 -m robot_llm_planner.cli`` builds its model options from and that
``docs/parameters.md`` is generated from (both in :mod:`.parameter_text`), and that the tests
check against :class:`PlannerSettings`. Every PlannerSettings field has a parameter
(``Parameter.field``) whose default is the field's default. :func:`load_config` turns
parameter values into a :class:`NodeConfig` (whose defaults are the table's: it has none of
its own) and a list of readable errors; it never raises, so the node can report bad values
instead of crashing. :func:`check_value` and :func:`checked_values` check plan_executor's
parameters too (its table is :mod:`.executor_parameters`).
"""

from dataclasses import dataclass, fields
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

from robot_llm_planner.core.settings import (BACKENDS, DTYPES, FAST_PATHS, parse_device,
                                             PlannerSettings, QUANTIZATION, QUEUE_POLICIES,
                                             REMOTE_ENDPOINTS, REMOTE_FIELDS)


@dataclass(frozen=True)
class Parameter:
    """One node parameter: its type, default, meaning and limits."""

    name: str
    kind: type                      # str, int, float or bool
    description: str
    field: Optional[str] = None     # the PlannerSettings field it fills, if any
    default: Any = None             # None: the PlannerSettings field's default
    config_field: Optional[str] = None  # else the NodeConfig (ExecutorConfig) attribute
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    dynamic: bool = False           # may change while the node runs (ros2 param set)
    positive: bool = False          # for floats: must be > 0


_SETTINGS = PlannerSettings()

PARAMETERS: Tuple[Parameter, ...] = (
    Parameter('model.backend', str, 'Inference backend: transformers (the model on this '
              'machine) or openai (an OpenAI-compatible server, see remote.*).', 'backend',
              choices=BACKENDS),
    Parameter('model.path', str, 'Base model directory (e.g. Qwen1.5-7B) or a merged/fully '
              'fine-tuned model (transformers backend).', 'model_path'),
    Parameter('model.adapter_path', str, 'LoRA adapter directory from LLaMA-Factory, merged at '
              'load; comma-separated for several; empty for none.', 'adapter_path'),
    Parameter('model.device', str, 'auto (CUDA if available, else CPU), cpu, cuda or cuda:N.',
              'device'),
    Parameter('model.dtype', str, 'auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16 or '
              'float32.', 'dtype', choices=DTYPES),
    Parameter('model.quantization', str, 'none, or int8 (weight-only int8 for the decoder '
              'layers: half the weight bytes of bf16; check the quality effect first).',
              'quantization', choices=QUANTIZATION),
    Parameter('model.threads', int, 'CPU threads of the model computations (torch, for the '
              'whole process); 0 = the torch default, one per core. On a robot whose CPU also '
              'runs perception, or for a small model on CPU, fewer threads can be faster.',
              'threads', minimum=0),
    Parameter('model.max_prompt_tokens', int, 'Longest prompt served, in tokens (LLaMA-Factory '
              'cutoff_len); longer commands are rejected.', 'max_prompt_tokens', minimum=1),
    Parameter('remote.base_url', str, 'openai backend: server URL, e.g. http://gpu:8000/v1.',
              'remote_base_url'),
    Parameter('remote.model', str, 'openai backend: model (or LoRA) name the server serves.',
              'remote_model'),
    Parameter('remote.api_key_env', str, 'openai backend: name of the environment variable '
              'holding the API key (never the key itself); empty for none.',
              'remote_api_key_env'),
    Parameter('remote.timeout_s', float, 'openai backend: seconds to wait for one answer.',
              'remote_timeout_s', positive=True),
    Parameter('remote.retries', int, 'openai backend: retries after a timeout, connection error '
              'or HTTP 429/5xx.', 'remote_retries', minimum=0),
    Parameter('remote.grammar_field', str, 'openai backend with generation.constrained: how '
              'the grammar is sent: structured_outputs (vLLM >= 0.10.2), guided_grammar (older '
              'vLLM) or none.', 'remote_grammar_field', choices=REMOTE_FIELDS),
    Parameter('remote.endpoint', str, 'openai backend: completions (the planner sends the '
              'training prompt itself; vLLM), chat (the server renders it with its chat template; '
              'checked against the training prompt where the server has /tokenize) or auto '
              '(completions where the server has /tokenize, else chat).', 'remote_endpoint',
              choices=REMOTE_ENDPOINTS),
    Parameter('prompt.system', str, 'System prompt; must be the one the model was trained with '
              '(empty: the LLaMA-Factory qwen template default).', 'system'),
    Parameter('prompt.instruction', str, 'Alpaca instruction the model was trained with, put '
              'before the command (training/prompts.yaml; empty for none).', 'instruction'),
    Parameter('generation.max_new_tokens', int, 'Most tokens generated per plan.',
              'max_new_tokens', minimum=1),
    Parameter('generation.do_sample', bool, 'Sample instead of greedy decoding (disables the '
              'plan cache).', 'do_sample'),
    Parameter('generation.constrained', bool, 'Grammar-constrained decoding: the model can only '
              'write plans made of skills_file actions.', 'constrained'),
    Parameter('generation.fast_path', str, 'Single greedy commands take the static-KV-cache '
              'decoder (docs/decoding.md): auto (on; its step compiled on CUDA), on, or off '
              '(generate() for every command).', 'fast_path', choices=FAST_PATHS),
    Parameter('generation.draft_tokens', int, 'Prompt-lookup draft tokens verified per step on '
              'the fast path; the answer is the same for any value (0 = no drafts).',
              'draft_tokens', minimum=0),
    Parameter('skills_file', str, 'Skills YAML plans are validated against (empty: the '
              'installed config/skills.yaml).', 'skills_file'),
    Parameter('validation.grounded_arguments', bool, 'A plan whose target or location does '
              'not appear in the command is invalid (argument_not_in_command): the data set '
              'copies them from the command, so anything else was made up. Off for a model '
              'trained to infer them.', 'grounded_arguments'),
    Parameter('validation.min_confidence', float, 'A plan whose confidence (the lowest '
              'probability the model gave a token of it) is below this is invalid '
              '(low_confidence); 0 = off. Choose it on the validation split: cli evaluate '
              'prints what each threshold keeps and catches.', 'min_confidence', minimum=0,
              maximum=1),
    Parameter('validation.preconditions', bool, 'Run every plan over the symbolic state of the '
              'skills file (requires/effects): a plan with a step that cannot run where it is '
              '(hand over what was never picked up) is invalid (precondition_failed).',
              'preconditions'),
    Parameter('message.bt_xml', bool, 'Add the plan as a BehaviorTree.CPP v4 XML document to '
              'each ok /action_plan message (bt_xml); a plan value holding { or } is then '
              'invalid (bt_xml_unsafe_value).', 'bt_xml'),
    Parameter('message.bt_xml_linear', bool, 'The bt_xml document is a plain Sequence of Skill '
              'nodes (cli bt-xml --linear) instead of the recovery structure plan_executor '
              'runs, which also needs a Holds condition node.', 'bt_xml_linear'),
    Parameter('topics.command', str, 'Commands in (std_msgs/String: plain text or JSON '
              '{"id", "text"}). Relative names follow the node namespace.', default='command',
              config_field='command_topic'),
    Parameter('topics.plan', str, 'Answers out (std_msgs/String, the /action_plan JSON), '
              'exactly one per command.', default='action_plan', config_field='plan_topic'),
    Parameter('topics.status', str, 'Node status out (std_msgs/String JSON), on every change and '
              'at 1 Hz, transient local.', default='planner_status',
              config_field='status_topic'),
    Parameter('queue.max_size', int, 'Commands that may wait for the model (not counting the '
              'batch being planned).', default=16, minimum=1, dynamic=True,
              config_field='queue_max_size'),
    Parameter('queue.policy', str, 'When the queue is full: fifo rejects the new command '
              '(queue_full); latest drops the oldest waiting one (superseded).', default='fifo',
              choices=QUEUE_POLICIES, dynamic=True, config_field='queue_policy'),
    Parameter('queue.max_batch', int, 'Waiting commands planned together as one batch (1 = one '
              'at a time).', default=1, minimum=1, dynamic=True, config_field='queue_max_batch'),
    Parameter('queue.max_command_chars', int, 'Longest command planned, in characters; longer '
              'ones are rejected (command_too_long).', 'max_command_chars', minimum=1),
    Parameter('cache.size', int, 'Recent plans remembered per command text (greedy decoding '
              'only; 0 = no cache).', 'cache_size', minimum=0),
    Parameter('qos.command_depth', int, 'History of the command subscription (reliable, '
              'volatile): 0 keeps all (no command is dropped by DDS in a burst; the queue '
              'answers the excess queue_full), N keeps the last N.', default=0, minimum=0,
              config_field='command_depth'),
    Parameter('qos.plan_depth', int, 'History depth of the plan publisher (reliable, transient '
              'local): answers kept for slow or late-matching subscribers.', default=64,
              minimum=1, config_field='plan_depth'),
    Parameter('lifecycle.autostart', bool, 'Walk the managed node to active by itself at start-up '
              '(configure: load the model; activate: take commands). false: it stays '
              'unconfigured until a lifecycle manager or `ros2 lifecycle set` drives it.',
              default=True, config_field='autostart'),
)

PARAMETERS_BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}


def default_value(parameter: Parameter) -> Any:
    """Return the parameter's default (the PlannerSettings default for settings fields)."""
    if parameter.field is not None and parameter.default is None:
        return getattr(_SETTINGS, parameter.field)
    return parameter.default


@dataclass
class NodeConfig:
    """
    Everything planner_node reads from its parameters, built by :func:`load_config`.

    No attribute has a default of its own: each is the ``config_field`` of a node parameter
    (``settings`` holds the PlannerSettings ones), so ``load_config({})`` gives the table's
    defaults.
    """

    settings: PlannerSettings
    command_topic: str
    plan_topic: str
    status_topic: str
    queue_max_size: int
    queue_policy: str
    queue_max_batch: int
    command_depth: int
    plan_depth: int
    autostart: bool


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, int):
        return 'an integer'
    if isinstance(value, float):
        return 'a number'
    if isinstance(value, str):
        return 'a string'
    if isinstance(value, (list, tuple)):
        return 'a list'
    return 'nothing' if value is None else type(value).__name__


def check_value(parameter: Parameter, value: Any) -> Tuple[Any, Optional[str]]:
    """Return (the value converted to the parameter's type, None) or (None, the reason)."""
    kind = parameter.kind
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    converted = None
    if kind is str and (isinstance(value, str) or is_number):
        converted = value if isinstance(value, str) else str(value)
    elif kind is bool and isinstance(value, bool):
        converted = value
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        converted = value
    elif kind is float and is_number:
        if not math.isfinite(value):
            return None, '%s must be a finite number, got %r' % (parameter.name, value)
        converted = float(value)
    if converted is None:
        wanted = {str: 'a string', int: 'an integer', float: 'a number',
                  bool: 'true or false'}[kind]
        return None, '%s must be %s, got %s (%r)' % (parameter.name, wanted, _type_name(value),
                                                     value)
    if parameter.choices and converted not in parameter.choices:
        return None, '%s must be one of %s, got %r' % (parameter.name,
                                                       ', '.join(parameter.choices), converted)
    if parameter.minimum is not None and converted < parameter.minimum:
        return None, '%s must be >= %g, got %r' % (parameter.name, parameter.minimum, converted)
    if parameter.maximum is not None and converted > parameter.maximum:
        return None, '%s must be <= %g, got %r' % (parameter.name, parameter.maximum, converted)
    if parameter.positive and converted <= 0:
        return None, '%s must be > 0, got %r' % (parameter.name, converted)
    if parameter.name == 'model.device':
        try:
            parse_device(converted)
        except ValueError as exc:
            return None, str(exc)
    if parameter.name.startswith('topics.') and not converted.strip():
        return None, '%s must not be empty' % parameter.name
    return converted, None


def dynamic_changes(values: List[Tuple[str, Any]]) -> Tuple[Dict[str, Any], Optional[str]]:
    """
    Check parameter values set while the node runs; return (the changes, None) or ({}, why).

    Names that are not in :data:`PARAMETERS` (``use_sim_time``, ...) are left out; a
    parameter read at start-up, or a bad value, refuses the whole set.
    """
    changes = {}
    for name, value in values:
        parameter = PARAMETERS_BY_NAME.get(name)
        if parameter is None:
            continue
        if not parameter.dynamic:
            return {}, '%s is read at start-up; restart the node to change it' % name
        converted, error = check_value(parameter, value)
        if error:
            return {}, error
        changes[name] = converted
    return changes, None


def checked_values(table: Iterable[Parameter], values: Dict[str, Any]
                   ) -> Tuple[List[Tuple[Parameter, Any]], List[str]]:
    """
    Return each parameter of ``table`` with its checked value, and the reasons of bad ones.

    A missing value takes the parameter's default; a bad one is replaced by the default (so
    the node can still come up and report it) and its reason is listed, one per parameter.
    """
    checked = []
    errors = []
    for parameter in table:
        converted, error = check_value(parameter,
                                       values.get(parameter.name, default_value(parameter)))
        if error:
            errors.append(error)
            converted = default_value(parameter)
        checked.append((parameter, converted))
    return checked, errors


def load_config(values: Dict[str, Any]) -> Tuple[NodeConfig, List[str]]:
    """
    Build the node's configuration from parameter values (missing ones take the default).

    Returns the configuration and the reasons the values are unusable (:func:`checked_values`).
    """
    checked, errors = checked_values(PARAMETERS, values)
    settings = {parameter.field: value for parameter, value in checked
                if parameter.field is not None}
    node = {parameter.config_field: value for parameter, value in checked
            if parameter.field is None}
    return NodeConfig(settings=PlannerSettings(**settings), **node), errors


def settings_fields_without_parameter() -> List[str]:
    """Return the PlannerSettings fields no parameter sets (should be none)."""
    covered = {parameter.field for parameter in PARAMETERS}
    return [f.name for f in fields(PlannerSettings) if f.name not in covered]
