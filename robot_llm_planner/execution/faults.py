"""
Faults of the simulated household: attempts that fail, and a world that changes by itself.

- ``simulation.fail``: ``action[=target][*count]`` entries separated by , or ; (e.g.
  ``拿起物体=遥控器*2; 递给``): the first ``count`` attempts of that action (on that target)
  fail and later ones work; without a count every attempt fails.
- ``simulation.fail_rate`` and ``simulation.seed``: each attempt fails with this probability,
  drawn from a random generator seeded with ``seed`` (the same seed, the same failures).
- ``simulation.disturbances``: ``drop[=object][*count]``: an object the robot picked up slips
  out of its hand as the robot begins its next step (it is then neither held nor found);
  ``close[=thing][*count]``: a thing the robot opened closes again as it begins its next step.
  Without a target any object or thing, without a count every time.

Counts run over the life of one :class:`Faults` (plan_executor keeps one while it runs).
"""

import random
from typing import List, NamedTuple, Optional, Tuple

from robot_llm_planner.core.plan import clean_text, Step
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.world import WorldState

DISTURBANCES = {'drop': 'held', 'close': 'open'}  # kind -> the effect that sets it off


class Rule(NamedTuple):
    """One entry: what it is about (an action, drop or close), on what ('' any), how often."""

    name: str
    target: str = ''
    count: Optional[int] = None  # None: every time


def parse_rules(text: str, parameter: str = 'simulation.fail') -> List[Rule]:
    """Return the entries of ``text`` (``name[=target][*count]``, separated by , or ;)."""
    rules = []
    for entry in text.replace(';', ',').split(','):
        if not entry.strip():
            continue
        body, star, count = entry.rpartition('*') if '*' in entry else (entry, '', '')
        name, _, target = body.partition('=')
        if not name.strip():
            raise ValueError('%s: %r: write name, name=target or name=target*count'
                             % (parameter, entry.strip()))
        if star and not (count.strip().isdigit() and int(count) >= 1):
            raise ValueError('%s: %r: the count after * must be a whole number >= 1'
                             % (parameter, entry.strip()))
        rules.append(Rule(name.strip(), clean_text(target), int(count) if star else None))
    return rules


def parse_disturbances(text: str) -> List[Rule]:
    """Return the disturbance entries of ``text``; ValueError names an unknown kind."""
    rules = parse_rules(text, 'simulation.disturbances')
    for rule in rules:
        if rule.name not in DISTURBANCES:
            raise ValueError('simulation.disturbances: %r is not a disturbance (known: %s)'
                             % (rule.name, ', '.join(DISTURBANCES)))
    return rules


def _take(rules: List[Rule], name: str, target: str) -> Optional[Rule]:
    """Return the first rule for ``name`` on ``target`` with a count left, counting it down."""
    for number, rule in enumerate(rules):
        if rule.name == name and rule.target in ('', target) and rule.count != 0:
            if rule.count is not None:
                rules[number] = rule._replace(count=rule.count - 1)
            return rule
    return None


class Faults:
    """Which simulated attempts fail and how the world changes (see the module docstring)."""

    def __init__(self, fail: str = '', fail_rate: float = 0.0, seed: int = 0,
                 disturbances: str = '') -> None:
        """Parse the entries; ValueError for a malformed one or a rate outside [0, 1]."""
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError('simulation.fail_rate must be from 0 to 1, got %r' % fail_rate)
        self.rules = parse_rules(fail)
        self.disturbances = parse_disturbances(disturbances)
        self.fail_rate = fail_rate
        self.random = random.Random(seed)
        self.pending: List[Tuple[str, str]] = []  # (disturbance, thing) due at the next step

    def failure(self, step: Step) -> Optional[str]:
        """Return why this attempt of ``step`` fails, or None when it works."""
        target = clean_text(step.target)
        rule = _take(self.rules, step.action, target)
        if rule is not None:
            return 'simulated failure of %s%s (simulation.fail)' % (
                step.action, ' ' + rule.target if rule.target else '')
        if self.fail_rate and self.random.random() < self.fail_rate:
            return 'simulated failure of %s %s (simulation.fail_rate %g)' % (
                step.action, target, self.fail_rate)
        return None

    def succeeded(self, step: Step, skills: SkillSet) -> None:
        """Note that ``step`` worked: a disturbance it sets off happens at the next step."""
        skill = skills.skills.get(step.action)
        target = clean_text(step.target)
        for effect in skill.effects if skill is not None and target else ():
            for kind, predicate in DISTURBANCES.items():
                if (effect.predicate, effect.argument, effect.negated) == (
                        predicate, 'target', False) and _take(self.disturbances, kind, target):
                    self.pending.append((kind, target))

    def due(self, world: WorldState) -> List[Tuple[str, bool]]:
        """Return the facts pending disturbances change in ``world``, (fact, true); clear them."""
        facts: List[Tuple[str, bool]] = []
        for kind, thing in self.pending:
            if kind == 'drop' and world.is_true('held', thing):
                facts += [('held(%s)' % thing, False), ('found(%s)' % thing, False)]
            elif kind == 'close' and world.is_true('open', thing):
                facts.append(('closed(%s)' % thing, True))
        self.pending = []
        return facts
