"""
The plan data model and the model-output convention, both ways.

The fine-tuned model answers with one string::

    <output1>。<output2>
    output1 = <step 1 description>；<step 2 description>；...
    output2 = <action>，<target>[，<location>]；<action>，<target>[，<location>]；...

A command that asks for nothing the robot can do (a question, chit-chat, an action it has no
skill for) is answered with :data:`NO_TASK` (``无法执行``) alone, in both tasks: a plan of
no steps. Task1 models emit output1 only. :func:`parse_plan` accepts what real models write
(ASCII ``;`` and ``,``, spaces around separators, trailing ``。``/``；``, empty segments) and
never raises: anything malformed becomes a :class:`Plan` with precise :class:`PlanError`
entries.
:func:`format_plan` is the inverse and is what the dataset generator labels with.

This module uses only the standard library.
"""

from dataclasses import dataclass, field
import re
from typing import List, Optional, Tuple

SECTION_SEP = '。'
STEP_SEP = '；'
PART_SEP = '，'

# Separators a model may write for each level, canonical one first.
STEP_SEPS = (STEP_SEP, ';')
PART_SEPS = (PART_SEP, ',')
SEPARATORS = (SECTION_SEP,) + STEP_SEPS + PART_SEPS

_STEP_SPLIT = re.compile('|'.join(re.escape(s) for s in STEP_SEPS))
_PART_SPLIT = re.compile('|'.join(re.escape(s) for s in PART_SEPS))

# The whole answer to a command that has no task for the robot: a plan of no steps.
NO_TASK = '无法执行'

# Parts of an output2 entry after the action, in order.
ARGUMENTS = ('target', 'location')


@dataclass
class Step:
    """One step of a plan: its output1 description and its output2 action with arguments."""

    description: str = ''
    action: str = ''
    target: str = ''
    location: str = ''
    # The lowest probability the model gave a token of this step (its description and its
    # output2 entry), where the backend tells (see :func:`assign_step_confidences`).
    confidence: Optional[float] = field(default=None, compare=False)

    def arguments(self) -> List[str]:
        """Return the given arguments in output2 order, without trailing empty ones."""
        args = [self.target, self.location]
        while args and not args[-1]:
            args.pop()
        return args


@dataclass
class PlanError:
    """A reason why a plan is not executable, tied to a step (0-based) where there is one."""

    code: str
    message: str
    step: Optional[int] = None

    def to_dict(self) -> dict:
        """Return the JSON form used in /action_plan."""
        return {'code': self.code, 'message': self.message, 'step': self.step}


@dataclass
class Plan:
    """
    A parsed plan: the command it answers, the model's raw text, its steps and errors.

    ``no_task`` is True when the model answered :data:`NO_TASK` (no steps, one
    ``not_a_task`` error).
    """

    command: str = ''
    raw_output: str = ''
    steps: List[Step] = field(default_factory=list)
    errors: List[PlanError] = field(default_factory=list)
    has_output2: bool = False
    no_task: bool = False

    @property
    def ok(self) -> bool:
        """Return True when the plan has steps and no errors."""
        return bool(self.steps) and not self.errors


def _split(pattern: 're.Pattern', text: str) -> List[str]:
    return [part.strip() for part in pattern.split(text)]


def _has_content(segment: str) -> bool:
    return bool(clean_text(segment))


def _entry_to_step(entry: str, index: int, errors: List[PlanError]) -> Step:
    parts = _split(_PART_SPLIT, entry)
    while parts and not parts[-1]:
        parts.pop()  # a trailing separator, e.g. '拿起物体，水瓶，'
    step = Step(action=parts[0] if parts else '')
    args = parts[1:]
    if len(args) > len(ARGUMENTS):
        errors.append(PlanError(
            'too_many_parts',
            'output2 entry %d has %d parts after the action, at most %d are allowed '
            '(target, location): %r' % (index + 1, len(args), len(ARGUMENTS), entry),
            index))
        args = args[:len(ARGUMENTS)]
    for name, value in zip(ARGUMENTS, args):
        setattr(step, name, value)
    if not step.action:
        errors.append(PlanError(
            'empty_action', 'output2 entry %d has no action: %r' % (index + 1, entry), index))
    for name, value in zip(ARGUMENTS, args):
        if not value:
            errors.append(PlanError(
                'empty_argument',
                'output2 entry %d has an empty %s: %r' % (index + 1, name, entry), index))
    return step


def _is_no_task(text: str) -> bool:
    return text.strip().rstrip(SECTION_SEP + '.' + ''.join(STEP_SEPS)).strip() == NO_TASK


def parse_plan(text: str, command: str = '') -> Plan:
    """Parse a model's output text into a :class:`Plan`; never raises."""
    if not isinstance(text, str):
        text = '' if text is None else str(text)
    plan = Plan(command=command, raw_output=text)
    if _is_no_task(text):
        plan.no_task = True
        plan.errors.append(PlanError(
            'not_a_task', 'the model answered %s: the command asks for nothing this robot '
            'can do' % NO_TASK))
        return plan
    sections = [s.strip() for s in text.split(SECTION_SEP)]
    sections = [s for s in sections if s] or ['']
    if len(sections) > 2:
        plan.errors.append(PlanError(
            'too_many_sections',
            'expected <output1>%s<output2>, found %d sections separated by %s; '
            'the extra ones are ignored' % (SECTION_SEP, len(sections), SECTION_SEP)))
    descriptions = [s for s in _split(_STEP_SPLIT, sections[0]) if _has_content(s)]
    entries = []
    if len(sections) > 1:
        plan.has_output2 = True
        entries = [s for s in _split(_STEP_SPLIT, sections[1]) if _has_content(s)]
    if plan.has_output2 and len(descriptions) != len(entries):
        plan.errors.append(PlanError(
            'step_count_mismatch',
            'output1 has %d steps but output2 has %d' % (len(descriptions), len(entries))))
    for index in range(max(len(descriptions), len(entries))):
        if index < len(entries):
            step = _entry_to_step(entries[index], index, plan.errors)
        else:
            step = Step()
        if index < len(descriptions):
            step.description = descriptions[index]
        plan.steps.append(step)
    if not plan.steps:
        plan.errors.append(PlanError('empty_output', 'the model output has no steps'))
    return plan


def _pieces(pattern: 're.Pattern', text: str, start: int, end: int) -> List[Tuple[int, int]]:
    # the (start, end) of each part of text[start:end] between matches of ``pattern``
    pieces, position = [], start
    for match in pattern.finditer(text, start, end):
        pieces.append((position, match.start()))
        position = match.end()
    pieces.append((position, end))
    return pieces


_SECTION_SPLIT = re.compile(re.escape(SECTION_SEP))


def _stripped(text: str, start: int, end: int) -> Tuple[int, int]:
    # the span without the whitespace around it, as str.strip() would leave it
    piece = text[start:end]
    start += len(piece) - len(piece.lstrip())
    return start, start + len(piece.strip())


def step_spans(text: str) -> List[List[Tuple[int, int]]]:
    """
    Return, per step :func:`parse_plan` finds in ``text``, where its text is.

    Each step gets the (start, end) character spans of its output1 description and its
    output2 entry, without the whitespace around them (one span when it has only one of them).
    The no-task answer has no steps.
    """
    if _is_no_task(text):
        return []
    sections = [(a, b) for a, b in _pieces(_SECTION_SPLIT, text, 0, len(text))
                if text[a:b].strip()] or [(0, 0)]
    descriptions = [_stripped(text, a, b) for a, b in _pieces(_STEP_SPLIT, text, *sections[0])
                    if _has_content(text[a:b])]
    entries = [_stripped(text, a, b) for a, b in _pieces(_STEP_SPLIT, text, *sections[1])
               if _has_content(text[a:b])] if len(sections) > 1 else []
    return [[span for span in (descriptions[i] if i < len(descriptions) else None,
                               entries[i] if i < len(entries) else None) if span]
            for i in range(max(len(descriptions), len(entries)))]


def ungrounded_arguments(plan: Plan, command: str) -> List[PlanError]:
    """
    Return an ``argument_not_in_command`` error per target or location not in ``command``.

    The data set's convention is that targets and locations are copied from the command
    ("把窗台上的雨伞..." -> 雨伞, 窗台上); an argument found nowhere in it was made up.
    """
    errors = []
    for index, step in enumerate(plan.steps):
        for name in ARGUMENTS:
            value = getattr(step, name).strip()
            if value and value not in command:
                errors.append(PlanError(
                    'argument_not_in_command', 'step %d: the %s %r does not appear in the '
                    'command' % (index + 1, name, value), index))
    return errors


def format_plan(steps: List[Step], with_output2: bool = True) -> str:
    """
    Write steps in the model's output convention (canonical full-width separators).

    With ``with_output2`` False the task1 form (output1 only) is written. No steps is
    :data:`NO_TASK`, the answer to a command without a task.
    """
    if not steps:
        return NO_TASK
    output1 = STEP_SEP.join(step.description for step in steps)
    if not with_output2:
        return output1
    output2 = STEP_SEP.join(
        PART_SEP.join([step.action] + step.arguments()) for step in steps)
    return output1 + SECTION_SEP + output2


def clean_text(text: str) -> str:
    """
    Return ``text`` stripped of the convention's separators and surrounding spaces.

    Use it to turn free text (an object or place name) into a value that can stand as one
    part of a step without changing the plan's structure.
    """
    for sep in SEPARATORS:
        text = text.replace(sep, ' ')
    return ' '.join(text.split())
