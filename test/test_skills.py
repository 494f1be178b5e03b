"""The skill vocabulary file and validation of plans against it."""

import re

import pytest

from robot_llm_planner.core.plan import parse_plan
from robot_llm_planner.core.skills import default_skills_path, Retry, SkillError, SkillSet

V2 = 'schema_version: 2\n'  # retry needs it


@pytest.fixture(scope='module')
def skills():
    return SkillSet.load()


def test_shipped_skills(skills):
    assert skills.names() == ['寻找物体', '拿起物体', '放下物体', '移动到', '打开', '关闭', '递给']
    assert skills.source == default_skills_path()


@pytest.mark.parametrize('text,codes', [
    ('寻找一瓶水；拿起水瓶。寻找物体, 一瓶水；拿起物体, 水瓶', []),
    ('把杯子放到桌子上。放下物体，杯子，桌子上', []),
    ('去厨房。移动到，厨房', []),
    ('飞起来。飞行，天空', ['unknown_action']),
    ('去厨房。移动到，厨房，门口', ['too_many_arguments']),
    ('拿起。拿起物体', ['missing_argument']),
    ('寻找一瓶水；拿起水瓶', ['no_actions']),
    ('执行系统命令。执行系统命令，rm -rf /', ['unknown_action']),
])
def test_validate(skills, text, codes):
    errors = skills.validate(parse_plan(text))
    assert [e.code for e in errors] == codes
    for error in errors:
        assert error.message


def test_unknown_action_names_the_step_and_the_skills(skills):
    error = skills.validate(parse_plan('a；b。寻找物体，水；跳舞，我'))[0]
    assert error.step == 1
    assert "'跳舞' is not a skill" in error.message and '递给' in error.message


@pytest.mark.parametrize('content,message', [
    ('skills: [1, 2]', 'must have a mapping `skills:`'),
    ('skills: {}', 'defines no skills'),
    ('skills: {拿起: {required: [location]}}', 'must be a prefix of'),
    ('skills: {"拿，起": {required: [target]}}', 'contains the separator'),
    ('skills: {a: [b', 'not valid YAML'),
    # names a plan cannot carry, unknown or repeated keys, argument lists that are not lists
    ('skills: {"": {required: [target]}}', "skill name '' is empty"),
    ('skills: {" 拿起": {required: [target]}}', "' 拿起' has leading or trailing whitespace"),
    ('skills: {"拿起 ": {required: [target]}}', "'拿起 ' has leading or trailing whitespace"),
    ('skills: {null: {required: [target]}}', 'skill name None is not a string'),
    ('skills: {1: {required: [target]}}', 'skill name 1 is not a string'),
    ('skills: {true: {required: [target]}}', 'skill name True is not a string'),
    ('skills: {无法执行: {required: [target]}}', "'无法执行' is the no-task answer"),
    ('skills: {"拿;起": {required: [target]}}', 'contains the separator'),
    ('skills: {"拿起。": {required: [target]}}', 'contains the separator'),
    ('skills: {"拿 起": {required: [target]}}', "'拿 起' contains whitespace"),
    ('skills: {"拿\\t起": {required: [target]}}', 'contains whitespace'),
    ('skills: {拿起: {require: [target]}}', "skill '拿起': unknown key.* 'require'"),
    # semantics: requires / effects and the state
    ('skills: {拿起: {required: [target], requires: [target]}}',
     "skill '拿起': requires: 'target': unknown predicate 'target' \\(known: at, found"),
    ('skills: {拿起: {required: [target], requires: found(target)}}',
     "skill '拿起': requires must be a list of facts"),
    ('skills: {拿起: {required: [target], requires: [found]}}',
     "requires: 'found': found needs an argument"),
    ('skills: {拿起: {required: [target], requires: [hand_free(target)]}}',
     'hand_free takes no argument'),
    ('skills: {拿起: {required: [target], requires: [found(object)]}}',
     "unknown argument 'object' \\(known: target, location, last\\)"),
    ('skills: {拿起: {required: [target], requires: [found(last)]}}',
     'last \\(the object picked up last\\) is only for held'),
    ('skills: {拿起: {required: [target], requires: [found(location)]}}',
     'found\\(location\\) is about location, which 拿起 does not take \\(it takes: target\\)'),
    ('skills: {拿起: {required: [target], requires: [1]}}',
     'a fact must be a string such as found\\(target\\), got 1'),
    ('skills: {拿起: {required: [target], requires: ["found(target) and held(target)"]}}',
     'is not a fact: write predicate\\(argument\\)'),
    ('skills: {拿起: {required: [target], effects: [hand_free]}}',
     'hand_free is a condition, not an effect'),
    ('skills: {拿起: {required: [target], effects: [not open(target)]}}',
     "'not open\\(target\\)' cannot be an effect: write closed\\(target\\)"),
    ('skills: {拿起: {required: [target], effects: [not at(target)]}}',
     "'not at\\(target\\)' cannot be an effect"),
    ('skills: {拿起: {required: [target], effects: [held(last)]}}',
     "'held\\(last\\)' cannot be an effect: pick up a step argument"),
    ('state: {max_held: 0}\nskills: {拿起: {required: [target]}}',
     'state.max_held must be an integer >= 1, got 0'),
    ('state: {max_held: true}\nskills: {拿起: {required: [target]}}',
     'state.max_held must be an integer >= 1, got True'),
    ('state: {hands: 2}\nskills: {拿起: {required: [target]}}',
     "state: unknown key\\(s\\) 'hands' \\(known: max_held\\)"),
    ('state: [2]\nskills: {拿起: {required: [target]}}', 'state must be a mapping'),
    ('skills: {拿起: {required: target}}', "skill '拿起': required must be a list"),
    ('skills: {拿起: {required: [target], optional: location}}',
     "skill '拿起': optional must be a list"),
    ('skills: {拿起: {required: [""]}}', "skill '拿起': required must be a list"),
    ('skills: {拿起: {required: [1]}}', "skill '拿起': required must be a list"),
    ('skills: {拿起: []}', "skill '拿起' must be a mapping"),
    ('skills:\n  拿起: {required: [target]}\n  拿起: {required: []}\n',
     "key '拿起' is given twice in one mapping \\(line 2 column 3 and line 3 column 3\\)"),
    ('skills:\n  拿起: {required: [target], required: []}\n', "key 'required' is given twice"),
    ('skills: {拿起: {}}\nskills: {放下: {}}\n', "key 'skills' is given twice"),
    # retries and the file's own keys
    (V2 + 'retry: 3\nskills: {拿起: {}}', 'retry must be a mapping \\(e.g. \\{attempts: 3'),
    (V2 + 'retry: {tries: 3}\nskills: {拿起: {}}', "retry: unknown key\\(s\\) 'tries'"),
    (V2 + 'retry: {attempts: 0}\nskills: {拿起: {}}', 'retry.attempts must be an integer >= 1'),
    (V2 + 'retry: {attempts: 2.5}\nskills: {拿起: {}}', 'retry.attempts must be an integer >= 1'),
    (V2 + 'retry: {delay_s: -1}\nskills: {拿起: {}}', 'retry.delay_s must be seconds from 0'),
    (V2 + 'retry: {delay_s: .nan}\nskills: {拿起: {}}', 'retry.delay_s must be seconds from 0'),
    (V2 + 'skills: {拿起: {retry: {attempts: true}}}',
     "skill '拿起': retry.attempts must be"),
    (V2 + 'retry: {timeout_s: -2}\nskills: {拿起: {}}',
     'retry.timeout_s must be seconds from 0 to 86400 \\(0: no limit\\), got -2'),
    (V2 + 'skills: {拿起: {retry: {timeout_s: "5 s"}}}',
     "skill '拿起': retry.timeout_s must be"),
    ('schema_version: 1\nretry: {attempts: 2}\nskills: {拿起: {}}',
     'retry needs schema_version: 2 \\(the file is version 1\\)'),
    ('skills: {拿起: {retry: {attempts: 2}}}', "skill '拿起': retry needs schema_version: 2 "
     '\\(the file is version 1: it gives no schema_version\\)'),
    ('retries: {attempts: 2}\nskills: {拿起: {}}', "unknown key\\(s\\) 'retries' \\(known: "
     'schema_version, state, retry, skills\\)'),
    ('schema_version: 3\nskills: {拿起: {}}', 'schema_version 3 is not one this'),
])
def test_malformed_skills_file(tmp_path, content, message):
    path = tmp_path / 'skills.yaml'
    path.write_text(content, encoding='utf-8')
    with pytest.raises(SkillError, match=message) as info:
        SkillSet.load(str(path))
    assert str(path) in str(info.value)


def test_retries_come_from_the_skill_or_the_files_default(tmp_path, skills):
    shipped = Retry(3, 0.5, 300.0)
    assert skills.retry == shipped and skills.retry_of('拿起物体') == shipped
    path = tmp_path / 'skills.yaml'
    path.write_text('schema_version: 2\nretry: {delay_s: 0}\nskills:\n'
                    '  拿起: {required: [target], retry: {attempts: 5, timeout_s: 20}}\n'
                    '  放下: {required: [target]}\n', encoding='utf-8')
    own = SkillSet.load(str(path))
    assert own.retry_of('拿起') == Retry(5, 0.0, 20.0)  # the default's delay, its own rest
    assert own.retry_of('放下') == Retry(3, 0.0, 0.0) == own.retry_of('not a skill')


def test_retry_bounds_are_included(tmp_path):
    path = tmp_path / 'skills.yaml'
    path.write_text('schema_version: 2\nretry: {delay_s: 3600, timeout_s: 86400}\n'
                    'skills: {拿起: {}}\n', encoding='utf-8')
    assert SkillSet.load(str(path)).retry == Retry(3, 3600.0, 86400.0)
    path.write_text('schema_version: 2\nretry: {delay_s: 3600.5}\nskills: {拿起: {}}\n',
                    encoding='utf-8')
    with pytest.raises(SkillError, match='delay_s must be seconds from 0 to 3600, got 3600.5'):
        SkillSet.load(str(path))


def test_missing_skills_file(tmp_path):
    with pytest.raises(SkillError, match='cannot read skills file .*nope.yaml'):
        SkillSet.load(str(tmp_path / 'nope.yaml'))


def test_empty_argument_lists_and_merge_keys_stay_valid(tmp_path):
    path = tmp_path / 'skills.yaml'
    path.write_text('skills:\n'
                    '  停下: {description: stop, required: [], optional: []}\n'
                    '  等待:\n'
                    '  挥手: {required: , optional: }\n'
                    '  拿起: &grasp {required: [target]}\n'
                    '  抓住: {<<: *grasp, optional: [location]}\n', encoding='utf-8')
    skills = SkillSet.load(str(path))
    assert [(s.name, s.required, s.optional) for s in skills] == [
        ('停下', (), ()), ('等待', (), ()), ('挥手', (), ()), ('拿起', ('target',), ()),
        ('抓住', ('target',), ('location',))]


def test_non_utf8_skills_file(tmp_path):
    path = tmp_path / 'skills.yaml'
    path.write_bytes('skills: {拿起: {required: [target]}}\n'.encode('gbk'))
    with pytest.raises(SkillError, match=re.escape('skills file %s is not UTF-8 text' % path)):
        SkillSet.load(str(path))
