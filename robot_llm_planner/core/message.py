"""
The /action_plan JSON message: what behavior trees receive for every command.

Schema (also shipped as config/action_plan.schema.json)::

    {schema_version, id, command, status, steps: [{index, description, action, target,
     location, confidence}], errors: [{code, message, step}], confidence, raw_output, timing,
     model, stamp[, bt_xml]}

``confidence`` is the lowest probability the model gave a token of its answer (the local
backend: before the grammar's mask; a remote one: the server's log-probabilities), or null
where nothing was generated or the backend cannot tell: a low value flags a plan that is
likely wrong (``validation.min_confidence`` turns such plans ``invalid``, code
``low_confidence``). It is published to 4 decimals, rounded down
(:func:`~robot_llm_planner.core.confidence.published_confidence`).
Each step's ``confidence`` is the same over the tokens of that step alone (its description and
output2 entry; null where the backend cannot tell): the step a wrong plan most likely went
wrong at. Schema version 2 added both. ``bt_xml`` (schema version 3) is the plan as a
BehaviorTree.CPP v4 document, on ``ok`` plans when the parameter ``message.bt_xml`` is on.

``status`` is one of:

- ``ok``: the plan parsed and every step is a skill of this robot with the right arguments;
- ``invalid``: the model answered but the plan failed parsing, skill validation, grounding,
  preconditions (``precondition_failed``: a step cannot run where the plan puts it) or the
  confidence threshold (see errors);
- ``error``: the engine failed (model not loaded, generation failed, server unreachable);
- ``rejected``: the command was not planned: not run (empty, too long, queue full, node
  shutting down), or the model answered that it asks for nothing the robot can do
  (``not_a_task``).
"""

import json
import time
from typing import List, Optional

from robot_llm_planner.core.confidence import published_confidence
from robot_llm_planner.core.plan import Plan, PlanError, Step

SCHEMA_VERSION = 3
STATUSES = ('ok', 'invalid', 'error', 'rejected')


def plan_message(request_id: str, command: str, status: str, plan: Optional[Plan] = None,
                 errors: Optional[List[PlanError]] = None, timing: Optional[dict] = None,
                 model: Optional[dict] = None, stamp: Optional[float] = None,
                 confidence: Optional[float] = None, bt_xml: Optional[str] = None) -> dict:
    """
    Build the /action_plan dict; ``errors`` are added to the plan's own errors.

    ``bt_xml``, when given, is added as the message's ``bt_xml`` (the plan as a
    BehaviorTree.CPP document, :mod:`robot_llm_planner.core.bt_xml`).
    """
    if status not in STATUSES:
        raise ValueError('status must be one of %s, got %r' % (STATUSES, status))
    steps = plan.steps if plan is not None else []
    all_errors = list(plan.errors if plan is not None else []) + list(errors or [])
    message = {
        'schema_version': SCHEMA_VERSION,
        'id': request_id,
        'command': command,
        'status': status,
        'steps': [{'index': index, 'description': step.description, 'action': step.action,
                   'target': step.target, 'location': step.location,
                   'confidence': published_confidence(step.confidence)}
                  for index, step in enumerate(steps)],
        'errors': [error.to_dict() for error in all_errors],
        'confidence': published_confidence(confidence),
        'raw_output': plan.raw_output if plan is not None else '',
        'timing': dict(timing or {}),
        'model': dict(model or {}),
        'stamp': time.time() if stamp is None else stamp,
    }
    if bt_xml is not None:
        message['bt_xml'] = bt_xml
    return message


def message_steps(steps: object) -> List[Step]:
    """
    Return the plan steps of a message's ``steps`` (a Step passes as it is).

    ValueError for no steps, or for a step that is not an object with string ``action``,
    ``target``, ``location`` and ``description`` (absent ones are empty).
    """
    if not isinstance(steps, list) or not steps:
        raise ValueError('the plan has no steps')
    result = []
    for index, data in enumerate(steps):
        if isinstance(data, Step):
            result.append(data)
            continue
        fields = ('description', 'action', 'target', 'location')
        if not isinstance(data, dict) or not all(
                isinstance(data.get(key, ''), str) for key in fields):
            raise ValueError('step %d is not an object with string action, target, location'
                             % (index + 1))
        result.append(Step(*(data.get(key, '') for key in fields)))
    return result


def to_json(message: dict) -> str:
    """Serialize a message as compact UTF-8 JSON (Chinese stays readable)."""
    return json.dumps(message, ensure_ascii=False, separators=(',', ':'))
