"""
Which behaviour runs each skill: behaviour factories named ``module:callable``.

A factory is called once per plan step with the step and a :class:`StepContext` and returns a
``py_trees.behaviour.Behaviour`` that does the step::

    def navigate_to(step: Step, context: StepContext) -> py_trees.behaviour.Behaviour: ...

:class:`BehaviourMap` holds one factory per skill: those named in the mapping text
(``移动到=my_robot.behaviours:navigate_to, 递给=my_robot.arm:hand_over``) and the default
factory for the others (the simulated household unless told otherwise). Every name is
resolved when the map is built, so a typo is reported at start-up, not mid-plan.
"""

from dataclasses import dataclass
import importlib
import re
from typing import Any, Callable, Dict, Optional

from robot_llm_planner.core.plan import Step
from robot_llm_planner.core.recovery import parse_goal
from robot_llm_planner.core.settings import SIMULATED_BEHAVIOUR
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.world import WorldState

_SPEC = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$')
_ENTRY_SEPARATORS = re.compile(r'[,;\n]')


class BehaviourError(ValueError):
    """A behaviour factory cannot be found, or the mapping text is malformed."""


@dataclass
class StepContext:
    """What a behaviour factory gets besides the step, and how a behaviour reports facts."""

    plan_id: str        # the /action_plan id
    index: int          # the step's index in the plan (0-based; a recovery step: the step
    #                     it serves)
    skills: SkillSet    # the skills file the executor runs with
    world: WorldState   # the plan's symbolic state (updated as steps succeed)
    simulation: Any     # the simulated household's settings (simulation.SimulationSettings)
    on_fact: Optional[Callable[[int, str, bool, str], None]] = None  # set by the plan run

    def report_fact(self, fact: str, true: bool, by: str = '') -> None:
        """
        Tell the plan that a fact about a thing is now true or false.

        ``context.report_fact('held(遥控器)', False)``: the object was lost.

        ``fact`` is ``predicate(thing)`` (at, found, held, open, closed; ``not`` in front
        negates it) and ``true`` its new truth; ``by`` says who noticed (for the record). The
        plan's state changes at once, /plan_execution records it, and the reactive tree checks
        the steps' needs against it on its next tick. ValueError for a text that is no fact.
        """
        if self.on_fact is not None:
            self.on_fact(self.index, fact, true, by)
            return
        goal = parse_goal(fact)
        self.world.change(goal.predicate, goal.value, true != goal.negated)


Factory = Callable[[Step, StepContext], Any]


def load_factory(spec: str) -> Factory:
    """Return the callable ``spec`` (``package.module:name``) names; BehaviourError if none."""
    spec = spec.strip()
    if not _SPEC.match(spec):
        raise BehaviourError('%r is not a behaviour factory name: write package.module:callable'
                             % spec)
    module_name, attribute = spec.split(':')
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while importing it
        raise BehaviourError('behaviour factory %s: cannot import %s (%s: %s)' % (
            spec, module_name, type(exc).__name__, exc)) from exc
    for part in attribute.split('.'):
        target = getattr(target, part, None)
        if target is None:
            raise BehaviourError('behaviour factory %s: %s has no %s' % (
                spec, module_name, attribute))
    if not callable(target):
        raise BehaviourError('behaviour factory %s is not callable' % spec)
    return target


def parse_mapping(text: str, skills: SkillSet) -> Dict[str, str]:
    """
    Return {skill: factory name} of ``skill=module:callable`` entries separated by , or ;.

    Raise BehaviourError for a malformed entry, a skill the skills file does not have, or a
    skill given twice.
    """
    mapping: Dict[str, str] = {}
    for entry in _ENTRY_SEPARATORS.split(text):
        if not entry.strip():
            continue
        skill, sep, spec = entry.partition('=')
        skill, spec = skill.strip(), spec.strip()
        if not sep or not skill or not spec:
            raise BehaviourError('%r: write skill=package.module:callable' % entry.strip())
        if skill not in skills:
            raise BehaviourError('%r: %s is not a skill of %s (skills: %s)' % (
                entry.strip(), skill, skills.source or 'the skills file',
                '、'.join(skills.names())))
        if skill in mapping:
            raise BehaviourError('skill %s is given twice' % skill)
        mapping[skill] = spec
    return mapping


class BehaviourMap:
    """The behaviour factory of each skill."""

    def __init__(self, skills: SkillSet, mapping: str = '',
                 default: str = SIMULATED_BEHAVIOUR) -> None:
        """Resolve every factory now; raise BehaviourError naming the first that fails."""
        self.names = {name: default for name in skills.names()} if default.strip() else {}
        self.names.update(parse_mapping(mapping, skills))
        loaded: Dict[str, Factory] = {}
        self._factories: Dict[str, Factory] = {}
        for skill, spec in self.names.items():
            if spec not in loaded:
                loaded[spec] = load_factory(spec)
            self._factories[skill] = loaded[spec]

    def factory(self, action: str) -> Optional[Factory]:
        """Return the factory of ``action``, or None when no behaviour runs it."""
        return self._factories.get(action)
