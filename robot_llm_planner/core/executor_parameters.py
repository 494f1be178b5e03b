"""
plan_executor's parameters: its table and the configuration built from it.

:data:`EXECUTOR_PARAMETERS` is to plan_executor what
:data:`~robot_llm_planner.core.parameters.PARAMETERS` is to planner_node: the node declares its
ROS parameters from it and ``docs/parameters.md`` lists them. Each row names the
:class:`ExecutorConfig` attribute it fills (``config_field``), and :func:`load_executor_config`
builds that configuration from parameter values as
:func:`~robot_llm_planner.core.parameters.load_config` builds planner_node's: the defaults are
the table's, a bad value is reported and replaced by its default, nothing raises.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from robot_llm_planner.core.parameters import checked_values, Parameter
from robot_llm_planner.core.settings import EXECUTION_POLICIES, SIMULATED_BEHAVIOUR

EXECUTOR_PARAMETERS: Tuple[Parameter, ...] = (
    Parameter('topics.plan', str, 'Plans in (std_msgs/String, /action_plan JSON); only ok plans '
              'run. Relative names follow the node namespace.', default='action_plan',
              config_field='plan_topic'),
    Parameter('topics.execution', str, 'Progress out (std_msgs/String, /plan_execution JSON): '
              'each attempt of a step (and of a step recovery inserts) RUNNING, then SUCCESS, '
              'RETRYING or FAILURE; each plan RUNNING, then SUCCESS or FAILURE.',
              default='plan_execution', config_field='execution_topic'),
    Parameter('skills_file', str, 'Skills YAML whose semantics the plans run over (empty: the '
              'installed config/skills.yaml).', default='', config_field='skills_file'),
    Parameter('behaviours.default', str, 'Behaviour factory (package.module:callable) for the '
              'skills behaviours.skills does not name; empty: those skills cannot run.',
              default=SIMULATED_BEHAVIOUR, config_field='behaviours_default'),
    Parameter('behaviours.skills', str, 'Behaviour factories of single skills: '
              'skill=package.module:callable entries separated by , or ; (e.g. '
              '移动到=my_robot.behaviours:navigate_to).', default='',
              config_field='behaviours_skills'),
    Parameter('execution.policy', str, 'A plan that arrives while one runs: queue waits for '
              'it, preempt stops it (and drops the waiting ones).', default='queue',
              choices=EXECUTION_POLICIES, config_field='policy'),
    Parameter('execution.max_queued', int, 'Plans that may wait (queue policy); one more is '
              'refused (queue_full).', default=8, minimum=1, config_field='max_queued'),
    Parameter('execution.tick_period_s', float, 'Seconds between two ticks of the running '
              'tree.', default=0.1, positive=True, config_field='tick_period_s'),
    Parameter('execution.setup_timeout_s', float, "Seconds a tree's setup may take (e.g. "
              'action clients waiting for their server).', default=10.0, positive=True,
              config_field='setup_timeout_s'),
    Parameter('execution.recovery', bool, 'Reactive trees: a step whose effects hold is '
              'skipped, a precondition that does not hold is made true by the skill whose '
              'effects do so, and each skill is retried as config/skills.yaml says (retry). '
              'false: the steps in plan order, each tried once.', default=True,
              config_field='recovery'),
    Parameter('simulation.step_duration_s', float, 'Seconds each step of the simulated '
              'household runs.', default=0.5, minimum=0, config_field='step_duration_s'),
    Parameter('simulation.fail', str, 'Simulated attempts made to fail: action, action=target '
              'or action=target*count entries separated by , or ; (e.g. 拿起物体=遥控器*2: the '
              'first 2 attempts fail; without a count every attempt fails).', default='',
              config_field='fail'),
    Parameter('simulation.fail_rate', float, 'Probability that any simulated attempt fails '
              '(drawn from simulation.seed).', default=0.0, minimum=0, maximum=1,
              config_field='fail_rate'),
    Parameter('simulation.seed', int, 'Seed of the random draws of simulation.fail_rate.',
              default=0, minimum=0, config_field='seed'),
    Parameter('simulation.disturbances', str, 'The simulated world changing by itself: '
              'drop[=object][*count] (a picked-up object slips out of the hand as the next step '
              'begins), close[=thing][*count] (an opened thing closes again), separated by , '
              'or ;.', default='', config_field='disturbances'),
)

EXECUTOR_PARAMETERS_BY_NAME = {parameter.name: parameter for parameter in EXECUTOR_PARAMETERS}


@dataclass
class ExecutorConfig:
    """
    Everything plan_executor reads from its parameters, built by :func:`load_executor_config`.

    No attribute has a default of its own: each is the ``config_field`` of an executor
    parameter, so ``load_executor_config({})`` gives the table's defaults.
    """

    plan_topic: str
    execution_topic: str
    skills_file: str
    behaviours_default: str
    behaviours_skills: str
    policy: str
    max_queued: int
    tick_period_s: float
    setup_timeout_s: float
    recovery: bool
    step_duration_s: float
    fail: str
    fail_rate: float
    seed: int
    disturbances: str


def load_executor_config(values: Dict[str, Any]) -> Tuple[ExecutorConfig, List[str]]:
    """Build plan_executor's configuration as ``load_config`` builds planner_node's."""
    checked, errors = checked_values(EXECUTOR_PARAMETERS, values)
    return ExecutorConfig(**{parameter.config_field: value
                             for parameter, value in checked}), errors
