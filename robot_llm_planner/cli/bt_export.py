"""
``cli bt-xml``: /action_plan messages in, BehaviorTree.CPP v4 XML documents out.

Each input line is an /action_plan JSON message (what planner_node publishes, ``cli plan``
and ``cli validate`` print). Every ``ok`` plan becomes one document (tree ID: the message
id) written to standard output, one after the other, or to ``DIR/<id>.xml`` with ``--out``:
with recovery (the skills' needs, effects and retries, as plan_executor runs it) unless
``--linear`` asks for the plain Sequence of ``Skill`` nodes.
A line that is not an ok plan, or whose values BehaviorTree.CPP cannot take, is reported on
standard error and skipped. ``--nodes-model`` prints the ``TreeNodesModel`` of the ``Skill``
node for Groot2 instead.
"""

import json
import os
import re
from typing import Iterable, Iterator, Optional, Tuple

from robot_llm_planner.core.bt_xml import BtXmlError, plan_to_bt_xml, recovery_bt_xml
from robot_llm_planner.core.skills import SkillSet

_UNSAFE_FILE_CHARS = re.compile(r'[^\w.-]')


def documents(lines: Iterable[str],
              skills: Optional[SkillSet] = None) -> Iterator[Tuple[str, str, str]]:
    """
    Yield ``(id, xml, problem)`` per non-blank line: the document, or '' and why there is none.

    The id is '' when the line has none (not JSON, not an object). With ``skills`` the
    document has the recovery structure, else it is linear.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError as exc:
            yield '', '', 'line %d is not JSON: %s' % (number, exc)
            continue
        if not isinstance(message, dict):
            yield '', '', 'line %d is not an /action_plan object' % number
            continue
        request_id = message.get('id')
        if not isinstance(request_id, str) or not request_id:
            yield '', '', 'line %d has no "id"' % number
            continue
        status = message.get('status')
        steps = message.get('steps')
        if status != 'ok':
            yield request_id, '', 'line %d (id %s) is %s, not an ok plan: no tree' % (
                number, request_id, status)
            continue
        if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
            yield request_id, '', 'line %d (id %s): "steps" is not a list of steps' % (
                number, request_id)
            continue
        try:
            yield request_id, (plan_to_bt_xml(request_id, steps) if skills is None
                               else recovery_bt_xml(request_id, steps, skills)), ''
        except BtXmlError as exc:
            yield request_id, '', 'line %d (id %s): %s' % (number, request_id, exc)


def file_name(request_id: str, taken: set) -> str:
    """Return a file name for the tree of ``request_id`` that is not in ``taken``; add it."""
    stem = _UNSAFE_FILE_CHARS.sub('_', request_id).strip('.') or 'plan'
    name, count = stem + '.xml', 1
    while name in taken:
        count += 1
        name = '%s-%d.xml' % (stem, count)
    taken.add(name)
    return name


def write_documents(lines: Iterable[str], out_dir: str, stdout, stderr,
                    skills: Optional[SkillSet] = None) -> Tuple[int, int]:
    """
    Write the document of each ok plan in ``lines`` (:func:`documents`); return (written, skipped).

    With ``out_dir`` each goes to its own file (its path printed on ``stdout``), else to
    ``stdout``. Skipped lines are reported on ``stderr``.
    """
    written = skipped = 0
    taken: set = set()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    for request_id, xml, problem in documents(lines, skills):
        if problem:
            skipped += 1
            print('bt-xml: %s' % problem, file=stderr)
            continue
        if out_dir:
            path = os.path.join(out_dir, file_name(request_id, taken))
            with open(path, 'w', encoding='utf-8') as stream:
                stream.write(xml)
            print(path, file=stdout)
        else:
            stdout.write(xml)
        written += 1
    return written, skipped
