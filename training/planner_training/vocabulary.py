"""
The data set's words and phrasings, read from ``vocabulary.yaml`` beside this module.

Objects, rooms, furniture, people and the things a robot opens; the clause templates of each
task category, the wrappers around a whole command, the commands without a task; what is
held out of train and validation. Every table is a tuple of tuples, in the file's order, so
that a seed draws the same commands as long as the file stays the same. The generator
(:mod:`planner_training.dataset`) reads these names through the module
(``vocabulary.OBJECTS``), so a test may replace one.
"""

import os
from typing import Any

import yaml

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocabulary.yaml')


def _tuples(value: Any) -> Any:
    """Return YAML lists as tuples, all the way down (the tables are read, never changed)."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


with open(PATH, encoding='utf-8') as _stream:
    _DATA = yaml.safe_load(_stream)

OBJECTS = _tuples(_DATA['objects'])          # (noun, classifier, attributes)
ROOMS = _tuples(_DATA['rooms'])
FURNITURE = _tuples(_DATA['furniture'])      # (name, relations, rooms)
OTHER_PLACES = _tuples(_DATA['other_places'])
PEOPLE = _tuples(_DATA['people'])
SPEAKER = _DATA['speaker']
OPENABLES = _tuples(_DATA['openables'])      # (name, rooms, switched on/off)

CLAUSE_TEMPLATES = tuple((category, _tuples(table))
                         for category, table in _DATA['clause_templates'].items())
_CLAUSES = dict(CLAUSE_TEMPLATES)
FETCH_TEMPLATES = _CLAUSES['fetch']
BRING_TEMPLATES = _CLAUSES['bring']
PUT_TEMPLATES = _CLAUSES['put']
OPEN_TEMPLATES = _CLAUSES['open']
CLOSE_TEMPLATES = _CLAUSES['close']
GO_TEMPLATES = _CLAUSES['go']
WRAPPERS = _tuples(_DATA['wrappers'])        # (id, pattern, question, starts it does not fit)
ENDINGS = _tuples(_DATA['endings'])
NO_TASK_TEMPLATES = _tuples(_DATA['no_task_templates'])  # (id, pattern, wrapped)
NO_TASK_EVERY = _DATA['no_task_every']

FIRST_PREFIXES = _tuples(_DATA['first_prefixes'])
JOINERS = _tuples(_DATA['joiners'])
LAST_JOINERS = JOINERS + _tuples(_DATA['last_joiners'])
CATEGORIES = tuple(_DATA['categories'].items())  # (category, weight)

HELDOUT_OBJECTS = _tuples(_DATA['heldout']['objects'])
HELDOUT_ROOMS = _tuples(_DATA['heldout']['rooms'])
HELDOUT_FURNITURE = _tuples(_DATA['heldout']['furniture'])
HELDOUT_NO_TASK_TEMPLATES = _tuples(_DATA['heldout']['no_task_templates'])
HELDOUT_TEMPLATES = _tuples(_DATA['heldout']['templates']) + HELDOUT_NO_TASK_TEMPLATES
