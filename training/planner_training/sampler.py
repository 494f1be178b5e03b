"""
Drawing one example: a command made of the vocabulary, and its plan built step by step.

:class:`Sampler` draws a command of a category (fetch, bring, put, open, close, go, or
several clauses joined) from :class:`Pools` (the part of :mod:`planner_training.vocabulary` a
split may use: with or without what is held out), wraps it in a polite or colloquial phrasing,
and builds its plan with the step builders (:func:`find_step`, ...), the one place where
output1 descriptions are worded. :mod:`planner_training.dataset` turns the examples into the
data set's splits and files.
"""

from dataclasses import dataclass, field
import random
from typing import Dict, List, Sequence, Tuple

from planner_training import vocabulary
from robot_llm_planner.core.plan import Step

# The actions the templates use; each must be a skill in the skills file.
FIND = '寻找物体'
PICK = '拿起物体'
PLACE = '放下物体'
GOTO = '移动到'
OPEN = '打开'
CLOSE = '关闭'
HAND = '递给'
ACTIONS = (FIND, PICK, PLACE, GOTO, OPEN, CLOSE, HAND)

NO_TASK_CATEGORY = 'no_task'  # the category of commands without a task (label 无法执行)
_DEFINITE_MARKERS = ('把', '将')


@dataclass
class Example:
    """One command, its plan, and what it was made of."""

    command: str
    steps: List[Step]
    category: str
    objects: List[str] = field(default_factory=list)
    places: List[str] = field(default_factory=list)
    templates: List[str] = field(default_factory=list)

    def heldout_kinds(self) -> List[str]:
        """Return which kinds of held-out items ('object', 'location', 'template') it uses."""
        kinds = []
        if any(o in vocabulary.HELDOUT_OBJECTS for o in self.objects):
            kinds.append('object')
        held_places = vocabulary.HELDOUT_ROOMS + vocabulary.HELDOUT_FURNITURE
        if any(p in held_places for p in self.places):
            kinds.append('location')
        if any(t in vocabulary.HELDOUT_TEMPLATES for t in self.templates):
            kinds.append('template')
        return kinds


# The step builders: the one place where output1 descriptions are worded.

def find_step(obj: str, location: str = '') -> Step:
    """Return the 寻找物体 step for ``obj`` (at ``location`` if given)."""
    text = '在%s寻找%s' % (location, obj) if location else '寻找' + obj
    return Step(text, FIND, obj, location)


def pick_step(obj: str, location: str = '') -> Step:
    """Return the 拿起物体 step for ``obj``."""
    return Step('拿起' + obj, PICK, obj, location)


def place_step(obj: str, location: str) -> Step:
    """Return the 放下物体 step putting ``obj`` at ``location``."""
    return Step('把%s放到%s' % (obj, location), PLACE, obj, location)


def goto_step(target: str) -> Step:
    """Return the 移动到 step to a place or a person."""
    text = '走到%s身边' % target if target in vocabulary.PEOPLE else '去' + target
    return Step(text, GOTO, target)


def hand_step(obj: str, person: str) -> Step:
    """Return the 递给 step handing ``obj`` to ``person``."""
    return Step('把%s递给%s' % (obj, person), HAND, person)


def open_step(item: str, room: str = '') -> Step:
    """Return the 打开 step for ``item`` (in ``room`` if given)."""
    return Step('打开' + _thing(item, room), OPEN, item, room)


def close_step(item: str, room: str = '') -> Step:
    """Return the 关闭 step for ``item``: 关掉 an appliance, 关上 a door or window."""
    verb = '关掉' if _is_switched(item) else '关上'
    return Step(verb + _thing(item, room), CLOSE, item, room)


def _thing(item: str, room: str) -> str:
    return '%s的%s' % (room, item) if room else item


def _is_switched(item: str) -> bool:
    return any(name == item and switched for name, _, switched in vocabulary.OPENABLES)


def fetch_steps(obj: str, location: str = '') -> List[Step]:
    """Return the plan of fetching ``obj``: find it, pick it up."""
    return [find_step(obj, location), pick_step(obj, location)]


def bring_steps(obj: str, person: str, location: str = '') -> List[Step]:
    """Return the plan of bringing ``obj`` to ``person``."""
    return fetch_steps(obj, location) + [goto_step(person), hand_step(obj, person)]


def put_steps(obj: str, location: str, source: str = '') -> List[Step]:
    """Return the plan of putting ``obj`` at ``location`` (taken from ``source``)."""
    return fetch_steps(obj, source) + [place_step(obj, location)]


@dataclass
class Pools:
    """What one split may draw from."""

    objects: Tuple
    rooms: Tuple[str, ...]
    furniture: Tuple
    templates: Dict[str, Tuple]
    wrappers: Tuple
    no_task: Tuple

    @classmethod
    def make(cls, heldout: bool) -> 'Pools':
        """Return the pools of a split: everything with ``heldout``, else the seen part."""
        def keep(name: str, held: Sequence[str]) -> bool:
            return heldout or name not in held
        held_templates = vocabulary.HELDOUT_TEMPLATES
        rooms = tuple(r for r in vocabulary.ROOMS if keep(r, vocabulary.HELDOUT_ROOMS))
        furniture = tuple((name, relations, tuple(r for r in in_rooms if r in rooms))
                          for name, relations, in_rooms in vocabulary.FURNITURE
                          if keep(name, vocabulary.HELDOUT_FURNITURE))
        templates = {category: tuple(t for t in table if keep(t[0], held_templates))
                     for category, table in vocabulary.CLAUSE_TEMPLATES}
        return cls(
            objects=tuple(o for o in vocabulary.OBJECTS
                          if keep(o[0], vocabulary.HELDOUT_OBJECTS)),
            rooms=rooms, furniture=furniture, templates=templates,
            wrappers=tuple(w for w in vocabulary.WRAPPERS if keep(w[0], held_templates)),
            no_task=tuple(t for t in vocabulary.NO_TASK_TEMPLATES
                          if keep(t[0], held_templates)))


class Sampler:
    """
    Draws one example at a time from a pool with a seeded random generator.

    With ``no_task`` it draws commands without a task (:data:`vocabulary.NO_TASK_TEMPLATES`).
    """

    def __init__(self, rng: random.Random, pools: Pools, no_task: bool = False) -> None:
        """Draw from ``pools`` with ``rng`` (shared by the samplers of one data set)."""
        self.rng = rng
        self.pools = pools
        self.no_task = no_task
        self.objects: List[str] = []
        self.places: List[str] = []
        self.templates: List[str] = []

    def example(self) -> Example:
        """Return the next example: a command, its steps and what it was made of."""
        self.objects, self.places, self.templates = [], [], []
        if self.no_task:
            return self._no_task_example()
        category = self._weighted(vocabulary.CATEGORIES)
        if category == 'multi':
            count = self.rng.choice((2, 2, 3))
            clauses, steps = [], []
            while len(clauses) < count:
                sub = self._weighted([c for c in vocabulary.CATEGORIES if c[0] != 'multi'])
                used = (len(self.objects), len(self.places), len(self.templates))
                text, sub_steps = self._clause(sub)
                if text in clauses:  # forget what the dropped clause used
                    del self.objects[used[0]:], self.places[used[1]:], self.templates[used[2]:]
                    continue
                clauses.append(text)
                steps += sub_steps
            core = self.rng.choice(vocabulary.FIRST_PREFIXES) + clauses[0]
            for index, clause in enumerate(clauses[1:], start=2):
                joiners = vocabulary.LAST_JOINERS if index == count else vocabulary.JOINERS
                core += self.rng.choice(joiners) + clause
        else:
            core, steps = self._clause(category)
        command = self._wrap(core)
        return Example(command, steps, category, self.objects, self.places, self.templates)

    def _no_task_example(self) -> Example:
        name, pattern, wrapped = self.rng.choice(self.pools.no_task)
        self.templates.append(name)
        fields = {}
        if '{obj}' in pattern:
            fields['obj'] = self._object(definite=True)
        if '{noun}' in pattern:
            fields['noun'] = self.rng.choice(self.pools.objects)[0]
            self.objects.append(fields['noun'])
        if '{person}' in pattern:
            fields['person'] = self.rng.choice([p for p in vocabulary.PEOPLE
                                                if p != vocabulary.SPEAKER])
        if '{room}' in pattern:
            fields['room'] = self._room()
        text = pattern.format(**fields)
        return Example(self._wrap(text) if wrapped else text, [], NO_TASK_CATEGORY, self.objects,
                       self.places, self.templates)

    def _weighted(self, table: Sequence[Tuple[str, int]]) -> str:
        names = [name for name, _ in table]
        return self.rng.choices(names, weights=[w for _, w in table])[0]

    def _wrap(self, core: str) -> str:
        wrappers = [w for w in self.pools.wrappers if not core.startswith(w[3])]
        name, pattern, question, _ = self.rng.choice(wrappers)
        self.templates.append(name)
        command = pattern.format(core)
        return command if question else command + self.rng.choice(vocabulary.ENDINGS)

    def _template(self, category: str) -> str:
        name, pattern = self.rng.choice(self.pools.templates[category])
        self.templates.append(name)
        return pattern

    def _object(self, definite: bool) -> str:
        noun, classifier, attributes = self.rng.choice(self.pools.objects)
        self.objects.append(noun)
        forms = ['bare', 'bare', 'demonstrative']
        if not definite:
            forms += ['count', 'count']
        if attributes:
            forms += ['attribute', 'attribute', 'demonstrative_attribute']
            if not definite:
                forms.append('count_attribute')
        form = self.rng.choice(forms)
        attribute = self.rng.choice(attributes) + '的' if attributes else ''
        demonstrative = self.rng.choice(('那', '这'))
        return {
            'bare': noun,
            'count': '一' + classifier + noun,
            'attribute': attribute + noun,
            'demonstrative': demonstrative + classifier + noun,
            'demonstrative_attribute': demonstrative + classifier + attribute + noun,
            'count_attribute': '一' + classifier + attribute + noun,
        }[form]

    def _room(self) -> str:
        room = self.rng.choice(self.pools.rooms)
        self.places.append(room)
        return room

    def _location(self, relations: Sequence[str] = ()) -> str:
        """Return "<furniture><relation>" or "<room>的<furniture><relation>"."""
        furniture = [f for f in self.pools.furniture
                     if not relations or set(relations) & set(f[1])]
        name, own_relations, rooms = self.rng.choice(furniture)
        self.places.append(name)
        relation = self.rng.choice([r for r in own_relations
                                    if not relations or r in relations])
        location = name + relation
        if rooms and self.rng.random() < 0.4:
            room = self.rng.choice(rooms)
            self.places.append(room)
            location = room + '的' + location
        return location

    def _place(self) -> str:
        """Return somewhere to go: a room, 门口 or "<furniture>旁边"."""
        draw = self.rng.random()
        if draw < 0.7:
            return self._room()
        if draw < 0.8:
            return self.rng.choice(vocabulary.OTHER_PLACES)
        return self._location(relations=('旁边',))

    def _openable(self) -> Tuple[str, str]:
        name, rooms, _ = self.rng.choice(vocabulary.OPENABLES)
        rooms = tuple(r for r in rooms if r in self.pools.rooms)
        room = ''
        if rooms and self.rng.random() < 0.5:
            room = self.rng.choice(rooms)
            self.places.append(room)
        return name, room

    def _clause(self, category: str) -> Tuple[str, List[Step]]:
        pattern = self._template(category)
        # 把/将, "<place>的<object>" and "一下<object>" take a definite object phrase (no
        # "一瓶"-style count).
        definite = pattern.startswith(_DEFINITE_MARKERS) or any(
            marker + '{obj}' in pattern for marker in ('的', '一下'))
        if category in ('fetch', 'bring', 'put'):
            obj = self._object(definite)
        if category == 'fetch':
            if '{room}' in pattern:
                room = self._room()
                return (pattern.format(obj=obj, room=room),
                        [goto_step(room)] + fetch_steps(obj, room))
            loc = self._location() if '{loc}' in pattern else ''
            return pattern.format(obj=obj, loc=loc), fetch_steps(obj, loc)
        if category == 'bring':
            # 给我拿 X means 帮我拿 X, a fetch: 给<person>拿 is drawn for others only.
            person = self.rng.choice([p for p in vocabulary.PEOPLE
                                      if p != vocabulary.SPEAKER or not pattern.startswith('给')])
            loc = self._location() if '{loc}' in pattern else ''
            return (pattern.format(obj=obj, person=person, loc=loc),
                    bring_steps(obj, person, loc))
        if category == 'put':
            src = self._location() if '{src}' in pattern else ''
            loc = self._location()
            while loc == src:
                loc = self._location()
            return pattern.format(obj=obj, loc=loc, src=src), put_steps(obj, loc, src)
        if category in ('open', 'close'):
            item, room = self._openable()
            thing = _thing(item, room)
            if category == 'open':
                return pattern.format(thing=thing), [open_step(item, room)]
            close = self.rng.choice(('关掉' if _is_switched(item) else '关上', '关闭'))
            return pattern.format(thing=thing, close=close), [close_step(item, room)]
        if '{person}' in pattern:
            person = self.rng.choice([p for p in vocabulary.PEOPLE if p != vocabulary.SPEAKER])
            return pattern.format(person=person), [goto_step(person)]
        place = self._place()
        return pattern.format(place=place), [goto_step(place)]


def command_key(command: str) -> str:
    """Return what two commands share when they count as the same (final punctuation aside)."""
    return command.rstrip('。！？!?.')
