"""
A plan as a BehaviorTree.CPP v4 XML document, and the ``Skill`` node model for Groot2.

Linear: one tree per plan, a ``Sequence`` of generic ``Skill`` nodes, one per step, in plan
order::

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

With recovery (:func:`recovery_bt_xml`), each step is the structure plan_executor ticks
(:mod:`robot_llm_planner.core.recovery`), with a condition node ``Holds`` (input port
``fact``: ``found(遥控器)``, ``hand_free``, ...) the robot registers beside ``Skill``::

    <Fallback name="1 寻找物体 遥控器">              only for a step that can be skipped
      <Holds fact="found(遥控器)"/>                its effects hold: skip it
      <ReactiveSequence>                           needs re-checked on every tick
        <Fallback>                                 per need: it holds, or achieve it
          <Holds fact="..."/>  <ReactiveSequence> the inserted step </ReactiveSequence>
        </Fallback>
        <Fallback>                                 the step's Skill: a first attempt, then
          TRY                                      attempts - 1 more, delay_s apart
          <RetryUntilSuccessful num_attempts="2"><Delay delay_msec="500"> TRY

where a TRY is the Skill, in ``<Timeout msec="...">`` when the skill's ``retry.timeout_s`` is
not 0 (a Skill still RUNNING then is halted and fails), and, for an action with needs, in
``<WhileDoElse> needs TRY <KeepRunningUntilFailure><AlwaysSuccess/>...``: the Skill starts
only while the needs checked before it hold, else the try stays RUNNING and the
ReactiveSequence achieves the need on its next tick (:func:`_try_lines`).

This module uses only the standard library.
"""

import re
from typing import Iterable, List, Optional, Tuple, Union
from xml.sax.saxutils import escape

from robot_llm_planner.core.message import message_steps
from robot_llm_planner.core.plan import Step
from robot_llm_planner.core.recovery import Action, Goal, reactive_plan
from robot_llm_planner.core.skills import SkillSet

NODE = 'Skill'
CONDITION = 'Holds'
FACT_HELP = ('a fact about a thing that must hold: at(X), found(X), held(X), open(X), '
             'closed(X) or hand_free; not in front negates it')
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
    return _document(tree_id, ['      ' + _skill(step) for step in steps])


def _document(tree_id: str, body: List[str]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<root BTCPP_format="4" main_tree_to_execute=%s>' % _attribute(tree_id),
             '  <BehaviorTree ID=%s>' % _attribute(tree_id),
             '    <Sequence>'] + body + ['    </Sequence>', '  </BehaviorTree>', '</root>']
    return '\n'.join(lines) + '\n'


def _skill(step: StepLike, name: str = '') -> str:
    name = name or _value(step, 'description')
    ports = ' '.join('%s=%s' % (port, _attribute(_value(step, port))) for port in PORTS)
    named = 'name=%s ' % _attribute(name) if name else ''
    return '<%s %s%s/>' % (NODE, named, ports)


def recovery_bt_xml(tree_id: str, steps: List[StepLike], skills: SkillSet) -> str:
    """
    Return the document running ``steps`` with recovery, as plan_executor does.

    Each step is skipped when its effects hold, makes every need true first (the inserted
    steps of :func:`~robot_llm_planner.core.recovery.reactive_plan`, re-checked on every
    tick) and tries its Skill as its ``retry`` says. Raise :class:`BtXmlError` as
    :func:`plan_to_bt_xml` does, or for a step that is not a skill of ``skills``.
    """
    plan_to_bt_xml(tree_id, steps)  # the same checks of the values
    try:
        actions = reactive_plan(skills, message_steps(steps))
    except ValueError as exc:
        raise BtXmlError(str(exc)) from exc
    body: List[str] = []
    for action in actions:
        body += _step_lines(action, 6)
    return _document(_NOT_XML.sub('', tree_id) or 'plan', body)


def _step_lines(action: Action, indent: int) -> List[str]:
    name = '%d %s %s' % (action.index + 1, action.step.action, action.step.target)
    if not action.skippable:
        return _achieve_lines(action, indent, name)
    facts = [' ' * (indent + 2) + _holds(str(goal)) for goal in action.effects]
    if len(facts) > 1:
        facts = [' ' * (indent + 2) + '<Sequence>'] + ['  ' + f for f in facts] + \
            [' ' * (indent + 2) + '</Sequence>']
    return ([' ' * indent + '<Fallback name=%s>' % _attribute(name)] + facts
            + _achieve_lines(action, indent + 2) + [' ' * indent + '</Fallback>'])


def _achieve_lines(action: Action, indent: int, name: str = '',
                   before: Tuple[Goal, ...] = ()) -> List[str]:
    """Return the ReactiveSequence of ``action``; ``before``: the needs checked ahead of it."""
    pad = ' ' * indent
    named = ' name=%s' % _attribute(name) if name else ''
    lines = [pad + '<ReactiveSequence%s>' % named]
    guards = before + tuple(need.goal for need in action.needs)
    for number, need in enumerate(action.needs):
        if need.achieve is None:
            lines.append(pad + '  ' + _holds(str(need.goal)))
            continue
        lines += [pad + '  <Fallback>', pad + '    ' + _holds(str(need.goal))]
        lines += _achieve_lines(need.achieve, indent + 4,
                                before=guards[:len(before) + number])
        lines.append(pad + '  </Fallback>')
    return lines + _attempt_lines(action, guards, indent + 2) + [pad + '</ReactiveSequence>']


def _attempt_lines(action: Action, guards: Tuple[Goal, ...], indent: int) -> List[str]:
    """Return the first try of ``action`` and its retries (the module docstring)."""
    one = _try_lines(action, guards)
    if action.retry.attempts == 1:
        return _indented(one, indent)
    retried = _indented(one, 4)
    if action.retry.delay_s > 0:
        retried = (['    <Delay delay_msec="%d">' % round(action.retry.delay_s * 1000)]
                   + _indented(retried, 2) + ['    </Delay>'])
    return _indented(['<Fallback>'] + _indented(one, 2)
                     + ['  <RetryUntilSuccessful num_attempts="%d">'
                        % (action.retry.attempts - 1)]
                     + retried + ['  </RetryUntilSuccessful>', '</Fallback>'], indent)


def _try_lines(action: Action, guards: Tuple[Goal, ...]) -> List[str]:
    """
    Return one try: the Skill, started only while every guard holds (else RUNNING).

    The Skill sits in a ``Timeout`` of ``retry.timeout_s`` when the skill has one.
    ``WhileDoElse`` checks the guards on every tick: when one does not hold, its third child
    (``KeepRunningUntilFailure`` over ``AlwaysSuccess``: RUNNING) runs instead of the Skill,
    so the enclosing ``ReactiveSequence`` achieves the need on its next tick.
    """
    name = '%s (for %s)' % (action.step.description, action.achieves) if action.achieves \
        else ''
    skill = [_skill(action.step, name)]
    if action.retry.timeout_s > 0:  # halted and FAILURE when it runs longer
        skill = (['<Timeout msec="%d">' % max(1, round(action.retry.timeout_s * 1000))]
                 + _indented(skill, 2) + ['</Timeout>'])
    if not guards:
        return skill
    condition = [_holds(str(goal)) for goal in guards]
    if len(condition) > 1:
        condition = ['<Sequence>'] + _indented(condition, 2) + ['</Sequence>']
    return (['<WhileDoElse>'] + _indented(condition + skill, 2)
            + ['  <KeepRunningUntilFailure>', '    <AlwaysSuccess/>',
               '  </KeepRunningUntilFailure>', '</WhileDoElse>'])


def _indented(lines: List[str], indent: int) -> List[str]:
    return [' ' * indent + line for line in lines]


def _holds(fact: str) -> str:
    return '<%s fact=%s/>' % (CONDITION, _attribute(fact))


def nodes_model_xml(skills: Iterable) -> str:
    """
    Return the ``TreeNodesModel`` of the ``Skill`` action and ``Holds`` condition for Groot2.

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
    lines += ['    </Action>',
              '    <Condition ID="%s">' % CONDITION,
              '      <input_port name="fact" type="std::string">%s</input_port>'
              % escape(FACT_HELP),
              '    </Condition>', '  </TreeNodesModel>', '</root>']
    return '\n'.join(lines) + '\n'
