"""
Recovery: the facts each plan step needs, and which skill makes a missing one true.

A step needs its skill's ``requires`` and makes its ``effects`` true (config/skills.yaml,
:mod:`robot_llm_planner.core.world`). Here they become :class:`Goal` objects about named
things (``found(遥控器)``, ``at(我)``): ``target`` and ``location`` are the step's arguments,
``last`` is the object the plan itself picked up most recently before the step (the plan's
effects run from the start, as the planner's precondition check runs them).

:func:`achiever` finds the skill whose effects make a goal true, and the step that runs it:
``found(X)`` 寻找物体 X, ``at(X)`` 移动到 X, ``open(X)`` 打开 X, ``held(X)`` 拿起物体 X (which
needs ``found(X)`` in turn). :func:`reactive_plan` turns a plan into one :class:`Action` per
step: what it needs and how each need is achieved (an inserted Action, recursively, at most
:data:`MAX_DEPTH` deep; a goal already being achieved on the way is not expanded again, so
there is no loop), what it makes true and how often it is tried. An executor runs each step as
"its effects hold: skip it; else achieve each need that does not hold, then act", and
:func:`attempt_bound` is the most attempts that can take.

This module uses only the standard library.
"""

from dataclasses import dataclass
import re
from typing import Iterator, List, Optional, Sequence, Tuple

from robot_llm_planner.core.plan import clean_text, Step
from robot_llm_planner.core.skills import Retry, SkillSet
from robot_llm_planner.core.world import (check_predicate, Fact, fact_text, FactError,
                                          PREDICATES, WorldState)

# How many inserted steps deep recovery goes (held(X) <- 拿起物体 X <- found(X) <- 寻找物体 X
# is two).
MAX_DEPTH = 3

_GOAL = re.compile(r'^(not\s+)?([a-z_]+)\s*(?:\((.*)\))?$', re.S)


@dataclass(frozen=True)
class Goal:
    """A fact about a named thing: ``found(遥控器)``; value '' in ``held`` means anything."""

    predicate: str
    value: str = ''
    negated: bool = False

    def __str__(self) -> str:
        """Return the goal as written in messages: ``found(遥控器)``, ``not held(水)``."""
        thing = self.value or ('last' if PREDICATES.get(self.predicate) else '')
        return fact_text(self.predicate, thing, self.negated)

    def holds(self, world: WorldState) -> bool:
        """Return whether the goal is true in ``world``."""
        return world.is_true(self.predicate, self.value) != self.negated

    def make_true(self, world: WorldState) -> None:
        """Change ``world`` so that the goal holds (an effect has happened)."""
        world.change(self.predicate, self.value, not self.negated)


def parse_goal(text: object) -> Goal:
    """Return the Goal ``text`` writes (``held(遥控器)``); FactError says what is wrong."""
    match = _GOAL.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise FactError('%r is not a fact about a thing: write predicate(thing), e.g. '
                        'held(遥控器)' % (text,))
    negated, predicate, value = bool(match.group(1)), match.group(2), match.group(3)
    thing = clean_text(value or '')
    # held() names no thing; hand_free() gives one, if empty
    given = bool(thing) if PREDICATES.get(predicate) else value is not None
    check_predicate(text, predicate, given, 'a thing', '遥控器')
    return Goal(predicate, thing, negated)


def ground(fact: Fact, step: Step, planned: WorldState) -> Optional[Goal]:
    """Return ``fact`` of ``step`` about named things; None when the step leaves it empty."""
    value = planned.value(fact, step)
    if value is None:
        return Goal('held', '', fact.negated) if fact.argument == 'last' else None
    return Goal(fact.predicate, value, fact.negated)


def achiever(skills: SkillSet, goal: Goal) -> Optional[Step]:
    """Return the step whose effects make ``goal`` true (first skill in file order), or None."""
    if not goal.value:
        return None
    for skill in skills:
        if set(skill.required) - {'target'}:
            continue  # recovery gives the thing as the target and nothing else
        for effect in skill.effects:
            if (effect.predicate, effect.argument, effect.negated) == (
                    goal.predicate, 'target', goal.negated):
                return Step('%s %s' % (skill.name, goal.value), skill.name, goal.value)
    return None


@dataclass(frozen=True)
class Need:
    """A goal an action needs, and the action that makes it true (None: nothing can)."""

    goal: Goal
    achieve: Optional['Action']


@dataclass(frozen=True)
class Action:
    """A step run with its retries: a plan step, or one recovery inserts for ``achieves``."""

    index: int                      # the plan step it runs or serves (0-based)
    step: Step
    needs: Tuple[Need, ...]
    effects: Tuple[Goal, ...]
    retry: Retry
    achieves: Optional[Goal] = None  # None: a step of the plan itself

    @property
    def skippable(self) -> bool:
        """
        Return whether holding effects mean the step has nothing to do.

        Steps that put something down, hand it over or pick something up (effects about
        ``held``, or negated ones) are never skipped: holding an object does not say that
        this step's pick-up happened.
        """
        return bool(self.effects) and all(
            not goal.negated and goal.predicate != 'held' for goal in self.effects)

    def walk(self) -> Iterator['Action']:
        """Yield this action and every action inserted below it."""
        yield self
        for need in self.needs:
            if need.achieve is not None:
                yield from need.achieve.walk()


def _action(skills: SkillSet, step: Step, index: int, planned: WorldState,
            achieves: Optional[Goal], path: Tuple[Goal, ...], depth: int) -> Action:
    skill = skills.skills[step.action]
    needs = []
    for fact in skill.requires:
        goal = ground(fact, step, planned)
        if goal is None:
            continue
        achieve = None
        inserted = achiever(skills, goal) if depth > 0 and goal not in path else None
        if inserted is not None:
            achieve = _action(skills, inserted, index, planned, goal, path + (goal,), depth - 1)
        needs.append(Need(goal, achieve))
    effects = tuple(goal for goal in (ground(f, step, planned) for f in skill.effects)
                    if goal is not None)
    return Action(index, step, tuple(needs), effects, skills.retry_of(step.action), achieves)


def reactive_plan(skills: SkillSet, steps: Sequence[Step]) -> List[Action]:
    """Return one Action per plan step; ValueError for a step that is not a skill."""
    planned = skills.initial_state()
    actions = []
    for index, step in enumerate(steps):
        if step.action not in skills:
            raise ValueError('step %d: %r is not a skill of this robot'
                             % (index + 1, step.action))
        actions.append(_action(skills, step, index, planned, None, (), MAX_DEPTH))
        skills.apply_effects(planned, step)
    return actions


def attempt_bound(actions: Sequence[Action]) -> int:
    """Return the most attempts the actions can take (each tries at most its attempts)."""
    return sum(inner.retry.attempts for action in actions for inner in action.walk())


def unmet(action: Action, world: WorldState) -> Optional[Goal]:
    """Return the first need, else the first effect, of ``action`` that does not hold."""
    for goal in [need.goal for need in action.needs] + list(action.effects):
        if not goal.holds(world):
            return goal
    return None
