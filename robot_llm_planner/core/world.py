"""
The symbolic household a plan runs over: the facts skills need and the facts they make true.

The state is small: the robot's place, the objects it has found, the objects it holds (in
the order it picked them up; the same object may be held twice, as in "先拿药，再拿一下药"),
and the things known open or closed. It starts empty: the place is unknown, nothing is found,
held, open or closed. A condition holds only when the state says so.

A skill's semantics (``requires`` and ``effects`` in config/skills.yaml) are facts written as
text, parsed by :func:`parse_fact`:

- ``at(X)``: the robot is at X; as an effect the robot moves there;
- ``found(X)``: X has been localized;
- ``held(X)``: the robot holds X; as an effect it picks X up, ``not held(X)`` puts one X down;
- ``open(X)`` / ``closed(X)``: X is known open / closed; an effect sets one and clears the other;
- ``hand_free``: the robot holds fewer than ``state.max_held`` objects (a condition only).

X is a step argument, ``target`` or ``location``, or ``last``: the object picked up most
recently that is still held (``held(last)``: the robot holds something; the effect
``not held(last)`` gives that object away). ``not`` in front negates a condition. A fact about an
argument the step leaves empty (an optional location) is skipped. Values are compared after
:func:`~robot_llm_planner.core.plan.clean_text`, as plans are.

This module uses only the standard library.
"""

from dataclasses import dataclass, field
import re
from typing import List, Optional, Set

from robot_llm_planner.core.plan import clean_text, Step

# predicate -> whether it takes an argument
PREDICATES = {'at': True, 'found': True, 'held': True, 'open': True, 'closed': True,
              'hand_free': False}
FACT_ARGUMENTS = ('target', 'location', 'last')
DEFAULT_MAX_HELD = 3

_FACT = re.compile(r'^(not\s+)?([a-z_]+)\s*(?:\(\s*([a-z_]+)\s*\))?$')


class FactError(ValueError):
    """A fact is not written in the semantics' vocabulary."""


@dataclass(frozen=True)
class Fact:
    """One condition or effect: a predicate over a step argument, possibly negated."""

    predicate: str
    argument: str = ''
    negated: bool = False

    def __str__(self) -> str:
        """Return the fact as written in the skills file."""
        return fact_text(self.predicate, self.argument, self.negated)


def fact_text(predicate: str, argument: str, negated: bool = False) -> str:
    """Return ``predicate(argument)`` (the predicate alone without one), ``not`` if negated."""
    text = '%s(%s)' % (predicate, argument) if argument else predicate
    return 'not ' + text if negated else text


def check_predicate(text: str, predicate: str, has_argument: bool, noun: str,
                    example: str) -> None:
    """
    Raise FactError when ``predicate`` is unknown or takes an argument ``text`` does not give.

    ``noun`` and ``example`` say what the argument is (``a thing``, ``遥控器``).
    """
    if predicate not in PREDICATES:
        raise FactError('%r: unknown predicate %r (known: %s)'
                        % (text, predicate, ', '.join(PREDICATES)))
    if PREDICATES[predicate] and not has_argument:
        raise FactError('%r: %s needs %s, e.g. %s(%s)' % (text, predicate, noun, predicate,
                                                          example))
    if not PREDICATES[predicate] and has_argument:
        raise FactError('%r: %s takes no argument' % (text, predicate))


def parse_fact(text: object, as_effect: bool = False) -> Fact:
    """Return the :class:`Fact` ``text`` writes; raise FactError naming what is wrong."""
    if not isinstance(text, str):
        raise FactError('a fact must be a string such as found(target), got %r' % (text,))
    match = _FACT.match(text.strip())
    if not match:
        raise FactError('%r is not a fact: write predicate(argument) or not predicate(argument),'
                        ' e.g. found(target)' % text)
    negated, predicate, argument = bool(match.group(1)), match.group(2), match.group(3) or ''
    check_predicate(text, predicate, bool(argument), 'an argument', 'target')
    if argument and argument not in FACT_ARGUMENTS:
        raise FactError('%r: unknown argument %r (known: %s)'
                        % (text, argument, ', '.join(FACT_ARGUMENTS)))
    if argument == 'last' and predicate != 'held':
        raise FactError('%r: last (the object picked up last) is only for held' % text)
    if as_effect:
        if predicate == 'hand_free':
            raise FactError('%r: hand_free is a condition, not an effect' % text)
        if negated and predicate in ('at', 'open', 'closed'):
            other = {'open': 'closed', 'closed': 'open'}.get(predicate)
            raise FactError('%r cannot be an effect%s' % (
                text, ': write %s(%s)' % (other, argument) if other else ''))
        if not negated and argument == 'last':
            raise FactError('%r cannot be an effect: pick up a step argument, held(target)'
                            % text)
    return Fact(predicate, argument, negated)


def _names(values: List[str]) -> str:
    return '、'.join(values) if values else 'nothing'


@dataclass
class WorldState:
    """The robot's place, found and held objects, and open or closed things."""

    max_held: int = DEFAULT_MAX_HELD
    place: str = ''
    found: Set[str] = field(default_factory=set)
    held: List[str] = field(default_factory=list)
    opened: Set[str] = field(default_factory=set)   # known open
    closed: Set[str] = field(default_factory=set)   # known closed

    def value(self, fact: Fact, step: Step) -> Optional[str]:
        """Return the object or place ``fact`` is about for ``step``; None: not given."""
        if fact.argument == 'last':
            return self.held[-1] if self.held else None
        if not fact.argument:
            return ''
        return clean_text(getattr(step, fact.argument)) or None

    def holds(self, fact: Fact, step: Step) -> bool:
        """Return whether the condition ``fact`` is true for ``step``."""
        value = self.value(fact, step)
        if value is None and fact.argument != 'last':
            return True  # the step leaves the argument empty: nothing to check
        true = value is not None and self.is_true(fact.predicate, value)
        return true != fact.negated

    def is_true(self, predicate: str, value: str) -> bool:
        """Return whether ``predicate(value)`` is true now (``held('')``: anything is held)."""
        if predicate == 'hand_free':
            return len(self.held) < self.max_held
        if predicate == 'at':
            return self.place == value
        if predicate == 'held':
            return value in self.held if value else bool(self.held)
        if predicate == 'found':
            return value in self.found
        return value in (self.opened if predicate == 'open' else self.closed)

    def apply(self, fact: Fact, step: Step) -> None:
        """Make the effect ``fact`` of ``step`` true."""
        value = self.value(fact, step)
        if value:
            self.change(fact.predicate, value, not fact.negated)

    def change(self, predicate: str, value: str, true: bool) -> None:
        """
        Make ``predicate(value)`` true or false.

        ``held``: true picks one more ``value`` up, false puts one down (the last one picked;
        ``value`` '' puts down the object picked up last). ``open`` / ``closed``: true sets one
        and clears the other, false makes the thing's state unknown. ``hand_free`` follows from
        ``held`` and cannot be changed.
        """
        if predicate == 'at':
            self.place = value if true else ('' if self.place == value else self.place)
        elif predicate == 'found':
            (self.found.add if true else self.found.discard)(value)
        elif predicate == 'held':
            value = value or (self.held[-1] if self.held and not true else '')
            if true:
                self.held.append(value)
            elif value in self.held:
                del self.held[len(self.held) - 1 - self.held[::-1].index(value)]
        elif predicate in ('open', 'closed'):
            made, other = ((self.opened, self.closed) if predicate == 'open'
                           else (self.closed, self.opened))
            if true:
                made.add(value)
                other.discard(value)
            else:
                made.discard(value)
        else:
            raise FactError('%s cannot be changed: it follows from what is held' % predicate)

    def need(self, fact: Fact, step: Step) -> str:
        """Return, in words, what the unmet condition ``fact`` needs and what the state is."""
        value = self.value(fact, step) or ''
        if fact.predicate == 'hand_free':
            if fact.negated:
                return 'needs the robot to hold %d object%s' % (
                    self.max_held, '' if self.max_held == 1 else 's')
            return 'needs a free hand (the robot holds %d object%s, the most it can: %s)' % (
                len(self.held), '' if len(self.held) == 1 else 's', _names(self.held))
        if fact.predicate == 'at':
            where = 'it is at %s' % self.place if self.place else 'it has not moved yet'
            return 'needs the robot %sto be at %s (%s)' % (
                'not ' if fact.negated else '', value, where)
        if fact.predicate == 'held':
            if fact.argument == 'last':
                if fact.negated:
                    return 'needs the robot to hold nothing (it holds %s)' % _names(self.held)
                return 'needs the robot to hold something'
            if fact.negated:
                return 'needs the robot not to hold %s already' % value
            return 'needs the robot to hold %s (it holds %s)' % (value, _names(self.held))
        if fact.predicate == 'found':
            if fact.negated:
                return 'needs %s not to be found yet' % value
            return 'needs %s to be found first' % value
        return 'needs %s %sto be %s' % (value, 'not ' if fact.negated else '', fact.predicate)

    def describe(self) -> dict:
        """Return the state as plain JSON-ready data (lists sorted, held in pick order)."""
        return {'place': self.place, 'found': sorted(self.found), 'held': list(self.held),
                'open': sorted(self.opened), 'closed': sorted(self.closed)}
