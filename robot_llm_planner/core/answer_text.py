"""
An answer (an /action_plan message) as text for people: the step table and the whole answer.

``plan_client`` prints answers with :func:`format_answer`; the demo builds its own block from
the same pieces (:func:`format_steps`, :func:`latency_text`, :func:`error_lines`). Tables
count a CJK character as two columns, so Chinese steps line up in a terminal. Plain strings
only: no ROS, so anything that has the message as a dict can show it.
"""

from typing import List, Sequence
import unicodedata


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ('W', 'F') else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + ' ' * max(0, width - _width(text))


def format_table(rows: List[List[str]]) -> List[str]:
    """Return ``rows`` as aligned text lines (CJK characters count two columns)."""
    widths = [max(_width(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ['  '.join(_pad(cell, width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]


def _probability(value) -> str:
    return '%.2f' % value if isinstance(value, (int, float)) else '-'


def format_steps(steps: List[dict], descriptions: bool = True) -> List[str]:
    """
    Return an answer's steps as aligned table lines.

    Columns: number, action, target, location, the description (unless ``descriptions`` is
    False) and the step's confidence where the message has confidences.
    """
    scored = any(isinstance(step.get('confidence'), (int, float)) for step in steps)
    rows = [['#', 'action', 'target', 'location'] + ['description'] * descriptions
            + ['confidence'] * scored]
    rows += [[str(number), step.get('action', ''), step.get('target', ''),
              step.get('location', '')] + [step.get('description', '')] * descriptions
             + [_probability(step.get('confidence'))] * scored
             for number, step in enumerate(steps, start=1)]
    return format_table(rows)


def latency_text(timing: dict) -> str:
    """Return an answer's latency with where it went, e.g. ``812 ms (inference 800 ms)``."""
    if 'total_ms' not in timing:
        return ''
    details = ['%s %.0f ms' % (name, timing[key]) for name, key in
               (('queue', 'queue_ms'), ('inference', 'inference_ms')) if key in timing]
    if timing.get('tokens_generated'):
        details.append('%d tokens' % timing['tokens_generated'])
    if timing.get('cached'):
        details.append('cached')
    text = '%.0f ms' % timing['total_ms']
    return text + (' (%s)' % ', '.join(details) if details else '')


def error_lines(errors: Sequence[dict]) -> List[str]:
    """Return one line per error of an answer: its code, its step and its message."""
    lines = []
    for error in errors:
        where = '' if error.get('step') is None else ' (step %d)' % (error['step'] + 1)
        lines.append('%s%s: %s' % (error.get('code'), where, error.get('message')))
    return lines


def format_answer(answer: dict) -> str:
    """Return an answer as readable text: command, status, latency, steps, errors."""
    lines = ['%s  [id %s]' % (answer.get('command', ''), answer.get('id', ''))]
    status = 'status: %s' % answer.get('status')
    latency = latency_text(answer.get('timing') or {})
    if latency:
        status += '   latency: ' + latency
    if isinstance(answer.get('confidence'), (int, float)):
        status += '   confidence: %.2f' % answer['confidence']
    lines.append(status)
    steps = answer.get('steps') or []
    if steps:
        lines += ['  ' + line for line in format_steps(steps)]
    errors = answer.get('errors') or []
    if errors:
        lines.append('errors:')
        lines += ['  - ' + line for line in error_lines(errors)]
    if answer.get('status') == 'invalid' and answer.get('raw_output'):
        lines.append('model output: %s' % answer['raw_output'])
    return '\n'.join(lines)
