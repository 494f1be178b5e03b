"""
A plan as a BehaviorTree.CPP v4 XML document, and the ``Skill`` node model for Groot2.

One tree per plan: a ``Sequence`` of generic ``Skill`` nodes, one per step, in plan order::

    <root BTCPP_format="4" main_tree_to_execute="cli-1">
      <BehaviorTree ID="cli-1">
        <Sequence>
          <Skill name="寻找一瓶水" action="寻找物体" target="一瓶水" location=""/>
          ...

The robot's C++ code registers one action node type ``Skill`` with the input ports
``action``, ``target`` and ``location`` (``std::string``) and dispatches on ``action``. Port
names are ASCII; values are XML-escaped UTF-8. BehaviorTree.CPP reads a port value written
``{key}`` as a blackboard reference, so a value holding ``{`` or ``}`` is refused
(:class:`BtXmlError`), as is a character XML 1.0 cannot carry.

This module uses only the standard library.
"""

import re
from typing import Iterable, List, Optional, Union
from xml.sax.saxutils import escape

from robot_llm_planner.core.plan import Step

NODE = 'Skill'
PORTS = ('action', 'target', 'location')
PORT_HELP = {
    'action': 'the skill to run (config/skills.yaml)',
    'target': 'the object, place or person it acts on',
    'location': 'where (empty when the step gives none)',
}
_ATTRIBUTE = {'"': '&quot;', '\n': '&#10;', '\r': '&#13;', '\t': '&#9;'}
# Characters XML 1.0 cannot carry (C0 controls other than tab, newline, carriage return).
_NOT_XML = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')

StepLike = Union[Step, dict]


class BtXmlError(ValueError):
    """A plan value cannot be written for BehaviorTree.CPP."""


def _value(step: StepLike, name: str) -> str:
    value = step.get(name, '') if isinstance(step, dict) else getattr(step, name, '')
    return '' if value is None else str(value)


def _attribute(value: str) -> str:
    return '"%s"' % escape(value, _ATTRIBUTE)


def unsafe_value(steps: Iterable[StepLike]) -> Optional[str]:
    """Return why a step value cannot go into the XML (first one found), or None."""
    for index, step in enumerate(steps):
        for port in PORTS:
            value = _value(step, port)
            if '{' in value or '}' in value:
                return ('step %d: the %s %r holds { or }, which BehaviorTree.CPP reads as a '
                        'blackboard reference' % (index + 1, port, value))
            if _NOT_XML.search(value):
                return ('step %d: the %s %r holds a control character XML cannot carry'
                        % (index + 1, port, value))
        if _NOT_XML.search(_value(step, 'description')):
            return 'step %d: the description holds a control character XML cannot carry' % (
                index + 1)
    return None


def plan_to_bt_xml(tree_id: str, steps: List[StepLike]) -> str:
    """
    Return the BehaviorTree.CPP v4 document running ``steps`` in order as tree ``tree_id``.

    The tree ID loses any character XML cannot carry ('plan' if nothing is left). Raise
    :class:`BtXmlError` when there is no step or a value cannot be written
    (:func:`unsafe_value`).
    """
    if not steps:
        raise BtXmlError('a plan without steps has no behavior tree')
    tree_id = _NOT_XML.sub('', tree_id) or 'plan'
    problem = unsafe_value(steps)
    if problem:
        raise BtXmlError(problem)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<root BTCPP_format="4" main_tree_to_execute=%s>' % _attribute(tree_id),
             '  <BehaviorTree ID=%s>' % _attribute(tree_id),
             '    <Sequence>']
    for step in steps:
        name = _value(step, 'description')
        ports = ' '.join('%s=%s' % (port, _attribute(_value(step, port))) for port in PORTS)
        named = 'name=%s ' % _attribute(name) if name else ''
        lines.append('      <%s %s%s/>' % (NODE, named, ports))
    lines += ['    </Sequence>', '  </BehaviorTree>', '</root>']
    return '\n'.join(lines) + '\n'


def nodes_model_xml(skills: Iterable) -> str:
    """
    Return the ``TreeNodesModel`` of the ``Skill`` node for Groot2.

    ``skills`` are :class:`~robot_llm_planner.core.skills.Skill` objects (a SkillSet); the
    ``action`` port's description lists them.
    """
    names = ', '.join('%s (%s)' % (skill.name, skill.description.rstrip('.'))
                      if skill.description else skill.name for skill in skills)
    help_text = dict(PORT_HELP, action='%s: %s' % (PORT_HELP['action'], names))
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<root BTCPP_format="4">',
             '  <TreeNodesModel>',
             '    <Action ID="%s">' % NODE]
    for port in PORTS:
        lines.append('      <input_port name="%s" type="std::string">%s</input_port>'
                     % (port, escape(help_text[port])))
    lines += ['    </Action>', '  </TreeNodesModel>', '</root>']
    return '\n'.join(lines) + '\n'
