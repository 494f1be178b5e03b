"""
The robot's skill vocabulary (config/skills.yaml) and plan validation against it.

Besides its arguments, a skill may state what must hold before it runs (``requires``) and what
holds after it (``effects``) over the symbolic state of :mod:`robot_llm_planner.core.world`;
:meth:`SkillSet.check_preconditions` runs a plan over that state from the start. How often
plan_executor tries a skill before it gives up (``retry``: attempts, the delay between them
and how long one attempt may run) is set per skill, with a default for the file.
"""

from dataclasses import dataclass
import os
from typing import Dict, List, Optional, Tuple

from robot_llm_planner.core.plan import ARGUMENTS, NO_TASK, Plan, PlanError, SEPARATORS, Step
from robot_llm_planner.core.world import (DEFAULT_MAX_HELD, Fact, FactError, parse_fact,
                                          WorldState)
import yaml

PACKAGE = 'robot_llm_planner'

# The keys a skill's entry may have (config/skills.yaml explains each).
SKILL_KEYS = ('description', 'required', 'optional', 'arguments', 'requires', 'effects',
              'retry')
# The keys of the file's `state:` mapping, of a `retry:` mapping and of the file itself.
STATE_KEYS = ('max_held',)
RETRY_KEYS = ('attempts', 'delay_s', 'timeout_s')
FILE_KEYS = ('schema_version', 'state', 'retry', 'skills')
# The skills file versions this code reads (a file without schema_version is version 1): 2
# added `retry`, which a version 1 file may not use.
SCHEMA_VERSIONS = (1, 2)


# The longest timeout_s a file may give (one day): a longer one is a typo.
MAX_TIMEOUT_S = 86400.0


@dataclass(frozen=True)
class Retry:
    """
    How plan_executor retries a skill: at most ``attempts`` tries, ``delay_s`` apart.

    An attempt still running after ``timeout_s`` seconds is stopped and counts as failed (0: no
    limit).
    """

    attempts: int = 3
    delay_s: float = 0.5
    timeout_s: float = 0.0


@dataclass(frozen=True)
class Skill:
    """One action the robot can execute and the arguments it takes."""

    name: str
    description: str
    required: Tuple[str, ...]
    optional: Tuple[str, ...]
    requires: Tuple[Fact, ...] = ()
    effects: Tuple[Fact, ...] = ()
    retry: Optional[Retry] = None   # None: the file's default

    @property
    def max_arguments(self) -> int:
        """Return how many arguments the action can take at most."""
        return len(self.required) + len(self.optional)


class SkillError(ValueError):
    """The skills file is missing or malformed."""


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping has the same key twice."""

    def __init__(self, key, first, second) -> None:
        """Record the key and the marks of its two occurrences."""
        super().__init__('while constructing a mapping', first,
                         'found duplicate key %r' % (key,), second)
        self.key = key


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        """Construct the mapping ``node``; raise _DuplicateKeyError on a repeated key."""
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == 'tag:yaml.org,2002:merge':
                continue  # `<<: *anchor` merges: the mapping's own keys override those
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base constructor reports it
                continue
            if first is not None:
                raise _DuplicateKeyError(key, first, key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def package_share_path(*parts: str) -> str:
    """
    Return a path in the installed package share directory, or in the source tree.

    Inside a sourced ROS workspace this is ``share/robot_llm_planner/...``; run from a source
    checkout (tests, the offline CLI) it is the repository's own file.
    """
    try:
        from ament_index_python.packages import get_package_share_directory
        return os.path.join(get_package_share_directory(PACKAGE), *parts)
    except Exception:  # not installed, or no ament index: use the source tree
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return os.path.join(root, *parts)


def default_skills_path() -> str:
    """Return the path of the shipped config/skills.yaml."""
    return package_share_path('config', 'skills.yaml')


class SkillSet:
    """The set of skills a plan is validated against."""

    def __init__(self, skills: List[Skill], source: str = '',
                 max_held: int = DEFAULT_MAX_HELD, retry: Retry = Retry()) -> None:
        """Hold ``skills``; ``source`` names where they came from (for messages)."""
        self.skills: Dict[str, Skill] = {skill.name: skill for skill in skills}
        self.source = source
        self.max_held = max_held
        self.retry = retry

    def retry_of(self, action: str) -> Retry:
        """Return how ``action`` is retried (its own ``retry``, else the file's default)."""
        skill = self.skills.get(action)
        return skill.retry if skill is not None and skill.retry is not None else self.retry

    def __contains__(self, action: str) -> bool:
        """Return True when ``action`` is a known skill."""
        return action in self.skills

    def __iter__(self):
        """Iterate over the skills in file order."""
        return iter(self.skills.values())

    def names(self) -> List[str]:
        """Return the action names in file order."""
        return list(self.skills)

    @classmethod
    def load(cls, path: Optional[str] = None) -> 'SkillSet':
        """Read a skills YAML file (default: the shipped one); raise SkillError if malformed."""
        path = path or default_skills_path()
        try:
            with open(path, encoding='utf-8') as stream:
                data = yaml.load(stream, Loader=_UniqueKeyLoader)
        except OSError as exc:
            raise SkillError('cannot read skills file %s: %s' % (path, exc.strerror)) from exc
        except UnicodeDecodeError as exc:
            raise SkillError('skills file %s is not UTF-8 text: %s' % (path, exc)) from exc
        except _DuplicateKeyError as exc:
            first, second = exc.context_mark, exc.problem_mark
            raise SkillError(
                'skills file %s: key %r is given twice in one mapping (line %d column %d and '
                'line %d column %d); give each skill and each key once' % (
                    path, exc.key, first.line + 1, first.column + 1, second.line + 1,
                    second.column + 1)) from exc
        except yaml.YAMLError as exc:
            raise SkillError('skills file %s is not valid YAML: %s' % (path, exc)) from exc
        if not isinstance(data, dict) or not isinstance(data.get('skills'), dict):
            raise SkillError('skills file %s must have a mapping `skills:`' % path)
        _check_file_keys(data, path)
        default = _retry(data.get('retry'), 'retry', Retry(), path)
        skills = []
        for name, spec in data['skills'].items():
            spec = {} if spec is None else spec
            skills.append(_skill_from_yaml(name, spec, path, default))
        if not skills:
            raise SkillError('skills file %s defines no skills' % path)
        return cls(skills, source=path, max_held=_max_held(data.get('state'), path),
                   retry=default)

    def validate(self, plan: Plan) -> List[PlanError]:
        """Return the errors that make ``plan`` not executable by this robot."""
        errors = []
        if plan.steps and not plan.has_output2:
            errors.append(PlanError(
                'no_actions', 'the output has no output2 section (action list); '
                'a task1 model cannot drive a behavior tree'))
            return errors
        for index, step in enumerate(plan.steps):
            if not step.action:
                continue  # already reported by the parser
            skill = self.skills.get(step.action)
            if skill is None:
                errors.append(PlanError(
                    'unknown_action', 'step %d: %r is not a skill of this robot (known: %s)'
                    % (index + 1, step.action, '、'.join(self.skills)), index))
                continue
            given = step.arguments()
            if len(given) < len(skill.required):
                missing = skill.required[len(given):]
                errors.append(PlanError(
                    'missing_argument', 'step %d: %s needs %s' % (
                        index + 1, skill.name, ', '.join(missing)), index))
            elif len(given) > skill.max_arguments:
                errors.append(PlanError(
                    'too_many_arguments', 'step %d: %s takes at most %d argument(s) (%s), got %d'
                    % (index + 1, skill.name, skill.max_arguments,
                       ', '.join(skill.required + skill.optional) or 'none', len(given)), index))
        return errors

    def initial_state(self) -> WorldState:
        """Return the state every plan starts from: nothing found, held, open or closed."""
        return WorldState(max_held=self.max_held)

    def unmet(self, state: WorldState, step: Step, index: int) -> Optional[PlanError]:
        """
        Return why ``step`` cannot run in ``state``, or None when it can.

        The error (``precondition_failed``) names the first condition of the step (number
        ``index``, 0-based) that the state does not meet.

        An action that is not a skill of this set has no conditions (:meth:`validate`
        reports it).
        """
        skill = self.skills.get(step.action)
        for fact in skill.requires if skill is not None else ():
            if not state.holds(fact, step):
                return PlanError('precondition_failed', 'step %d: %s %s' % (
                    index + 1, skill.name, state.need(fact, step)), index)
        return None

    def apply_effects(self, state: WorldState, step: Step) -> None:
        """Make the effects of ``step`` true in ``state`` (it has run)."""
        skill = self.skills.get(step.action)
        for fact in skill.effects if skill is not None else ():
            state.apply(fact, step)

    def check_preconditions(self, plan: Plan) -> List[PlanError]:
        """Run the plan from :meth:`initial_state`; return the first step that cannot run."""
        state = self.initial_state()
        for index, step in enumerate(plan.steps):
            error = self.unmet(state, step, index)
            if error is not None:
                return [error]
            self.apply_effects(state, step)
        return []


def _check_file_keys(data: dict, path: str) -> None:
    """Refuse unknown top-level keys, an unknown schema_version, and retry before version 2."""
    unknown = [key for key in data if key not in FILE_KEYS]
    if unknown:
        raise SkillError('skills file %s: unknown key(s) %s (known: %s)' % (
            path, ', '.join(repr(k) for k in unknown), ', '.join(FILE_KEYS)))
    version = data.get('schema_version', 1)
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        raise SkillError('skills file %s: schema_version %r is not one this robot_llm_planner '
                         'reads (%s)' % (path, version, ', '.join(map(str, SCHEMA_VERSIONS))))
    retried = ['retry'] if 'retry' in data else []
    retried += ['skill %r: retry' % name for name, spec in data['skills'].items()
                if isinstance(spec, dict) and 'retry' in spec]
    if version < 2 and retried:
        raise SkillError('skills file %s: %s needs schema_version: 2 (the file is version 1%s)'
                         % (path, retried[0], '' if 'schema_version' in data
                            else ': it gives no schema_version'))


def _retry(spec: object, where: str, default: Retry, path: str) -> Retry:
    """Return the Retry of a `retry:` mapping; keys it leaves out keep ``default``'s."""
    if spec is None:
        return default
    if not isinstance(spec, dict):
        raise SkillError('skills file %s: %s must be a mapping (e.g. {attempts: 3, '
                         'delay_s: 0.5}), got %r' % (path, where, spec))
    unknown = [key for key in spec if key not in RETRY_KEYS]
    if unknown:
        raise SkillError('skills file %s: %s: unknown key(s) %s (known: %s)' % (
            path, where, ', '.join(repr(k) for k in unknown), ', '.join(RETRY_KEYS)))
    attempts = spec.get('attempts', default.attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise SkillError('skills file %s: %s.attempts must be an integer >= 1 (1: no retry), '
                         'got %r' % (path, where, attempts))
    delay = _seconds(spec, 'delay_s', default.delay_s, 3600, '%s: %s' % (path, where))
    timeout = _seconds(spec, 'timeout_s', default.timeout_s, MAX_TIMEOUT_S,
                       '%s: %s' % (path, where), ' (0: no limit)')
    return Retry(attempts, delay, timeout)


def _seconds(spec: dict, key: str, default: float, most: float, where: str,
             note: str = '') -> float:
    """Return ``spec[key]`` (else ``default``), seconds from 0 to ``most``, both included."""
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 <= value <= most:
        raise SkillError('skills file %s.%s must be seconds from 0 to %g%s, got %r'
                         % (where, key, most, note, value))
    return float(value)


def _max_held(spec: object, path: str) -> int:
    if spec is None:
        return DEFAULT_MAX_HELD
    if not isinstance(spec, dict):
        raise SkillError('skills file %s: state must be a mapping (e.g. state: {max_held: 3}), '
                         'got %r' % (path, spec))
    unknown = [key for key in spec if key not in STATE_KEYS]
    if unknown:
        raise SkillError('skills file %s: state: unknown key(s) %s (known: %s)' % (
            path, ', '.join(repr(k) for k in unknown), ', '.join(STATE_KEYS)))
    value = spec.get('max_held', DEFAULT_MAX_HELD)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SkillError('skills file %s: state.max_held must be an integer >= 1, got %r'
                         % (path, value))
    return value


def _facts(spec: dict, key: str, name: str, arguments: Tuple[str, ...],
           path: str) -> Tuple[Fact, ...]:
    value = spec.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SkillError('skills file %s: skill %r: %s must be a list of facts (e.g. '
                         '[found(target)]), got %r' % (path, name, key, value))
    facts = []
    for text in value:
        try:
            fact = parse_fact(text, as_effect=key == 'effects')
        except FactError as exc:
            raise SkillError('skills file %s: skill %r: %s: %s' % (path, name, key, exc)) from exc
        if fact.argument in ARGUMENTS and fact.argument not in arguments:
            raise SkillError('skills file %s: skill %r: %s: %s is about %s, which %s does not '
                             'take (it takes: %s)' % (path, name, key, fact, fact.argument, name,
                                                      ', '.join(arguments) or 'nothing'))
        facts.append(fact)
    return tuple(facts)


def _check_name(name: object, path: str) -> str:
    """Return the skill name, or raise SkillError if a plan could not name it."""
    if not isinstance(name, str):
        raise SkillError('skills file %s: skill name %r is not a string (YAML reads it as %s; '
                         'quote it)' % (path, name, type(name).__name__))
    if not name:
        raise SkillError("skills file %s: skill name '' is empty" % path)
    if name != name.strip():
        raise SkillError('skills file %s: skill name %r has leading or trailing whitespace'
                         % (path, name))
    if name == NO_TASK:
        raise SkillError('skills file %s: skill name %r is the no-task answer of the output '
                         'convention' % (path, name))
    for sep in SEPARATORS:
        if sep in name:
            raise SkillError('skills file %s: skill name %r contains the separator %r'
                             % (path, name, sep))
    if any(ch.isspace() for ch in name):
        raise SkillError('skills file %s: skill name %r contains whitespace' % (path, name))
    return name


def _argument_list(spec: dict, key: str, name: str, path: str) -> Tuple[str, ...]:
    value = spec.get(key)
    if value is None:  # absent, or `key:` with no value: no arguments
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SkillError('skills file %s: skill %r: %s must be a list of argument names '
                         '(e.g. [target]), got %r' % (path, name, key, value))
    return tuple(value)


def _skill_from_yaml(name: object, spec: dict, path: str, default_retry: Retry) -> Skill:
    name = _check_name(name, path)
    if not isinstance(spec, dict):
        raise SkillError('skills file %s: skill %r must be a mapping' % (path, name))
    unknown = [key for key in spec if key not in SKILL_KEYS]
    if unknown:
        raise SkillError('skills file %s: skill %r: unknown key(s) %s (known: %s)'
                         % (path, name, ', '.join(repr(k) for k in unknown),
                            ', '.join(SKILL_KEYS)))
    required = _argument_list(spec, 'required', name, path)
    optional = _argument_list(spec, 'optional', name, path)
    order = required + optional
    if tuple(ARGUMENTS[:len(order)]) != order:
        raise SkillError(
            'skills file %s: skill %r: required + optional must be a prefix of %s in that '
            'order (output2 is positional), got %s' % (path, name, list(ARGUMENTS), list(order)))
    retry = None
    if spec.get('retry') is not None:
        retry = _retry(spec['retry'], 'skill %r: retry' % name, default_retry, path)
    return Skill(name, str(spec.get('description', '')), required, optional,
                 _facts(spec, 'requires', name, order, path),
                 _facts(spec, 'effects', name, order, path), retry)
