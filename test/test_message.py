"""The /action_plan JSON: every status validates against config/action_plan.schema.json."""

import json

import jsonschema
import pytest

from robot_llm_planner.core.message import plan_message, to_json
from robot_llm_planner.core.plan import parse_plan, PlanError
from robot_llm_planner.core.skills import package_share_path, SkillSet


@pytest.fixture(scope='module')
def validator():
    with open(package_share_path('config', 'action_plan.schema.json'), encoding='utf-8') as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _messages():
    skills = SkillSet.load()
    good = parse_plan('寻找一瓶水；拿起水瓶。寻找物体，一瓶水；拿起物体，水瓶', '帮我拿一瓶水。')
    bad = parse_plan('飞起来。飞行，天空', '飞')
    timing = {'queue_ms': 1.5, 'inference_ms': 20.0, 'parse_ms': 0.1, 'total_ms': 21.6,
              'tokens_generated': 17, 'cached': False}
    model = {'backend': 'transformers', 'base': '/models/qwen', 'adapter': '/adapters/a'}
    return [
        plan_message('1', good.command, 'ok', good, timing=timing, model=model),
        plan_message('2', bad.command, 'invalid', bad, errors=skills.validate(bad),
                     timing=timing, model=model),
        plan_message('3', 'x', 'error', errors=[PlanError('engine_error', 'out of memory')]),
        plan_message('4', '', 'rejected', errors=[PlanError('empty_command', 'empty')]),
    ]


def test_every_status_matches_the_schema(validator):
    for message in _messages():
        validator.validate(json.loads(to_json(message)))


def test_ok_message_content():
    message = _messages()[0]
    assert message['steps'][1] == {'index': 1, 'description': '拿起水瓶', 'action': '拿起物体',
                                   'target': '水瓶', 'location': '', 'confidence': None}
    assert '帮我拿一瓶水' in to_json(message)  # UTF-8, not \\u escapes


def test_schema_rejects_inconsistent_messages(validator):
    ok_with_errors = _messages()[1]
    ok_with_errors['status'] = 'ok'
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(ok_with_errors)
    rejected_without_reason = plan_message('5', 'x', 'rejected')
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(rejected_without_reason)


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match='status must be one of'):
        plan_message('1', 'x', 'maybe')
