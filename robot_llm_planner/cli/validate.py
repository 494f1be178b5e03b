"""
``cli validate``: the /action_plan message the planner would publish for a model's answer.

No model runs: the answers are read from a file.
Each input line is a JSON object with the command and a model's raw answer::

    {"command": "帮我拿一瓶水。", "output": "寻找一瓶水；拿起一瓶水。寻找物体，一瓶水；..."}

``predict`` is read where ``output`` is missing and ``prompt`` where ``command`` is (so a
``cli evaluate`` run file or LLaMA-Factory's ``generated_predictions.jsonl`` can be checked as
it is); ``id`` (a string) names the message and ``confidence`` (a number in [0, 1] or null)
is checked against ``validation.min_confidence``. Each line is answered by one message line,
built by the planner's own :class:`~robot_llm_planner.core.output_check.OutputCheck`: parse,
skills, grounding, preconditions, confidence. A line that is not such an object is answered
``rejected`` (``invalid_request``) and reported on standard error.
"""

import json
import math
from typing import Iterable, Iterator, Optional, Tuple

from robot_llm_planner.cli.postprocess import command_from_prompt
from robot_llm_planner.core.command import prepare_command
from robot_llm_planner.core.message import plan_message
from robot_llm_planner.core.output_check import OutputCheck
from robot_llm_planner.core.plan import Plan, PlanError


def _json(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise ValueError('not JSON: %s' % exc) from exc


def _read(data: object, instruction: str) -> Tuple[str, str, Optional[str], Optional[float]]:
    # (command, answer, id, confidence) of one input object; ValueError says what is wrong
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object, got %s' % type(data).__name__)
    answer = data.get('output', data.get('predict'))
    if not isinstance(answer, str):
        raise ValueError('"output" (or "predict") must be a string, the model\'s answer')
    if 'command' in data:
        command = data['command']
    elif isinstance(data.get('prompt'), str):
        command = command_from_prompt(data['prompt'], instruction)
    else:
        raise ValueError('"command" (or "prompt") is missing')
    if not isinstance(command, str):
        raise ValueError('"command" must be a string')
    request_id = data.get('id')
    if request_id is not None and (not isinstance(request_id, str) or not request_id):
        raise ValueError('"id" must be a non-empty string')
    confidence = data.get('confidence')
    if confidence is not None and (isinstance(confidence, bool)
                                   or not isinstance(confidence, (int, float))
                                   or not math.isfinite(confidence)
                                   or not 0.0 <= confidence <= 1.0):
        raise ValueError('"confidence" must be a number from 0 to 1 or null, got %r'
                         % (confidence,))
    return command, answer, request_id, confidence


def validate_lines(lines: Iterable[str], checks: OutputCheck, max_command_chars: int,
                   instruction: str = '') -> Iterator[Tuple[dict, Optional[str]]]:
    """
    Yield, per non-blank line, the /action_plan message and the input problem (or None).

    A command the planner would not plan (empty, too long, a control token) is answered
    ``rejected`` as planner_node answers it, without looking at the answer.
    """
    number = 0
    for line in lines:
        if not line.strip():
            continue
        number += 1
        default_id = 'validate-%d' % number
        try:
            command, answer, request_id, confidence = _read(_json(line), instruction)
        except ValueError as exc:
            problem = 'line %d: %s' % (number, exc)
            yield plan_message(default_id, '', 'rejected', Plan(),
                               [PlanError('invalid_request', problem)]), problem
            continue
        request_id = request_id or default_id
        command, reason = prepare_command(command, max_command_chars)
        if reason is not None:
            yield plan_message(request_id, command, 'rejected', Plan(command=command),
                               [reason]), None
            continue
        result = checks.check(command, answer, confidence=confidence)
        yield result.message(request_id), None
