"""The robot's skill vocabulary (config/skills.yaml) and plan validation against it."""

from dataclasses import dataclass
import os
from typing import Dict, List, Optional, Tuple

from robot_llm_planner.plan import ARGUMENTS, Plan, PlanError
import yaml

PACKAGE = 'robot_llm_planner'


@dataclass(frozen=True)
class Skill:
    """One action the robot can execute and the arguments it takes."""

    name: str
    description: str
    required: Tuple[str, ...]
    optional: Tuple[str, ...]

    @property
    def max_arguments(self) -> int:
        """Return how many arguments the action can take at most."""
        return len(self.required) + len(self.optional)


class SkillError(ValueError):
    """The skills file is missing or malformed."""


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
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return os.path.join(root, *parts)


def default_skills_path() -> str:
    """Return the path of the shipped config/skills.yaml."""
    return package_share_path('config', 'skills.yaml')


class SkillSet:
    """The set of skills a plan is validated against."""

    def __init__(self, skills: List[Skill], source: str = '') -> None:
        """Hold ``skills``; ``source`` names where they came from (for messages)."""
        self.skills: Dict[str, Skill] = {skill.name: skill for skill in skills}
        self.source = source

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
                data = yaml.safe_load(stream)
        except OSError as exc:
            raise SkillError('cannot read skills file %s: %s' % (path, exc.strerror)) from exc
        except yaml.YAMLError as exc:
            raise SkillError('skills file %s is not valid YAML: %s' % (path, exc)) from exc
        if not isinstance(data, dict) or not isinstance(data.get('skills'), dict):
            raise SkillError('skills file %s must have a mapping `skills:`' % path)
        skills = []
        for name, spec in data['skills'].items():
            skills.append(_skill_from_yaml(str(name), spec or {}, path))
        if not skills:
            raise SkillError('skills file %s defines no skills' % path)
        return cls(skills, source=path)

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


def _skill_from_yaml(name: str, spec: dict, path: str) -> Skill:
    if not isinstance(spec, dict):
        raise SkillError('skills file %s: skill %r must be a mapping' % (path, name))
    required = tuple(spec.get('required') or ())
    optional = tuple(spec.get('optional') or ())
    order = required + optional
    if tuple(ARGUMENTS[:len(order)]) != order:
        raise SkillError(
            'skills file %s: skill %r: required + optional must be a prefix of %s in that '
            'order (output2 is positional), got %s' % (path, name, list(ARGUMENTS), list(order)))
    for sep in '。；，;,':
        if sep in name:
            raise SkillError('skills file %s: skill name %r contains the separator %r'
                             % (path, name, sep))
    return Skill(name, str(spec.get('description', '')), required, optional)
