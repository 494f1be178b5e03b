"""The model-output convention: parsing (table-driven), formatting and the round trip."""

from hypothesis import given, settings, strategies as st
import pytest

from robot_llm_planner.core.plan import (clean_text, format_plan, NO_TASK, parse_plan, SEPARATORS,
                                         Step, ungrounded_arguments)

SEED = '寻找一瓶水；拿起水瓶。寻找物体, 一瓶水；拿起物体, 水瓶'
SEED_STEPS = [('寻找一瓶水', '寻找物体', '一瓶水', ''), ('拿起水瓶', '拿起物体', '水瓶', '')]

# (name, text, expected steps as (description, action, target, location), error codes)
CASES = [
    ('seed output', SEED, SEED_STEPS, []),
    ('canonical separators', '寻找一瓶水；拿起水瓶。寻找物体，一瓶水；拿起物体，水瓶', SEED_STEPS, []),
    ('ascii separators', '寻找一瓶水;拿起水瓶。寻找物体,一瓶水;拿起物体,水瓶', SEED_STEPS, []),
    ('spaces everywhere', '  寻找一瓶水 ； 拿起水瓶 。 寻找物体 ， 一瓶水 ；拿起物体 ,水瓶  ',
     SEED_STEPS, []),
    ('trailing period', SEED + '。', SEED_STEPS, []),
    ('trailing step separator', '寻找一瓶水；拿起水瓶；。寻找物体, 一瓶水；拿起物体, 水瓶；',
     SEED_STEPS, []),
    ('empty segments', '寻找一瓶水；；拿起水瓶。；寻找物体, 一瓶水;;拿起物体, 水瓶', SEED_STEPS, []),
    ('trailing part separator', '拿起水瓶。拿起物体，水瓶，', [('拿起水瓶', '拿起物体', '水瓶', '')], []),
    ('with location', '把杯子放到厨房的桌子上。放下物体，杯子，厨房的桌子上',
     [('把杯子放到厨房的桌子上', '放下物体', '杯子', '厨房的桌子上')], []),
    ('task1 output only', '寻找一瓶水；拿起水瓶',
     [('寻找一瓶水', '', '', ''), ('拿起水瓶', '', '', '')], []),
    ('task1 with trailing period', '寻找一瓶水；拿起水瓶。',
     [('寻找一瓶水', '', '', ''), ('拿起水瓶', '', '', '')], []),
    ('output1 longer than output2', '寻找水；拿起水；递给我。寻找物体，水；拿起物体，水',
     [('寻找水', '寻找物体', '水', ''), ('拿起水', '拿起物体', '水', ''), ('递给我', '', '', '')],
     ['step_count_mismatch']),
    ('output2 longer than output1', '寻找水。寻找物体，水；拿起物体，水',
     [('寻找水', '寻找物体', '水', ''), ('', '拿起物体', '水', '')], ['step_count_mismatch']),
    ('too many parts', '放下杯子。放下物体，杯子，桌子上，慢慢地',
     [('放下杯子', '放下物体', '杯子', '桌子上')], ['too_many_parts']),
    ('empty target', '拿起。拿起物体，，桌子上', [('拿起', '拿起物体', '', '桌子上')], ['empty_argument']),
    ('empty action', '拿起水。，水', [('拿起水', '', '水', '')], ['empty_action']),
    ('three sections', '寻找水。寻找物体，水。多余的',
     [('寻找水', '寻找物体', '水', '')], ['too_many_sections']),
    ('empty', '', [], ['empty_output']),
    ('only separators', ' 。；，;, 。', [], ['empty_output']),
    ('no separators at all', '随便说点什么', [('随便说点什么', '', '', '')], []),
]


@pytest.mark.parametrize('name,text,steps,codes', CASES, ids=[c[0] for c in CASES])
def test_parse(name, text, steps, codes):
    plan = parse_plan(text, command='cmd')
    got = [(s.description, s.action, s.target, s.location) for s in plan.steps]
    assert got == steps
    assert [e.code for e in plan.errors] == codes
    assert plan.raw_output == text and plan.command == 'cmd'


def test_mismatch_message_is_precise():
    plan = parse_plan('a；b；c。寻找物体，x；拿起物体，y')
    assert plan.errors[0].message == 'output1 has 3 steps but output2 has 2'


def test_error_steps_point_at_the_step():
    plan = parse_plan('a；b。寻找物体，x；拿起物体，，y')
    assert [(e.code, e.step) for e in plan.errors] == [('empty_argument', 1)]


@pytest.mark.parametrize('value', [None, 42, b'\xe5\xaf\xbb', ['a'], '\x00\x1b[31m。；'])
def test_parse_never_raises(value):
    plan = parse_plan(value)
    assert isinstance(plan.errors, list)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('。；，;, \n\t水杯寻找物体a1\x00')), max_size=40))
def test_parse_never_raises_on_separator_soup(text):
    plan = parse_plan(text)
    for error in plan.errors:
        assert error.message


_word = st.text(alphabet=st.characters(blacklist_categories=('Cs', 'Cc', 'Zs', 'Zl', 'Zp')),
                min_size=1, max_size=8).map(clean_text).filter(bool)


@st.composite
def _steps(draw):
    count = draw(st.integers(min_value=1, max_value=6))
    steps = []
    for _ in range(count):
        location = draw(st.one_of(st.just(''), _word))
        steps.append(Step(draw(_word), draw(_word), draw(_word), location))
    return steps


@settings(max_examples=300, deadline=None)
@given(_steps())
def test_round_trip(steps):
    plan = parse_plan(format_plan(steps))
    assert plan.errors == []
    assert plan.steps == steps


@settings(max_examples=100, deadline=None)
@given(_steps())
def test_round_trip_task1(steps):
    plan = parse_plan(format_plan(steps, with_output2=False))
    assert plan.errors == [] and not plan.has_output2
    assert [s.description for s in plan.steps] == [s.description for s in steps]


def test_format_is_canonical():
    steps = [Step(*row) for row in SEED_STEPS]
    assert format_plan(steps) == '寻找一瓶水；拿起水瓶。寻找物体，一瓶水；拿起物体，水瓶'
    assert format_plan(steps, with_output2=False) == '寻找一瓶水；拿起水瓶'


@pytest.mark.parametrize('text', ['无法执行', ' 无法执行。', '无法执行.\n', '无法执行；', '无法执行;'])
def test_no_task_answer(text):
    plan = parse_plan(text, '今天天气怎么样？')
    assert plan.no_task and plan.steps == [] and not plan.ok
    assert [e.code for e in plan.errors] == ['not_a_task'] and '无法执行' in plan.errors[0].message
    assert plan.raw_output == text
    assert format_plan([]) == format_plan([], with_output2=False) == NO_TASK == '无法执行'


@pytest.mark.parametrize('text', ['无法执行；拿起水', '无法执行。移动到，客厅', '无法执行吧', ''])
def test_only_the_no_task_answer_alone_is_no_task(text):
    assert not parse_plan(text).no_task


def test_ungrounded_arguments():
    plan = parse_plan('在窗台上寻找雨伞；拿起雨伞；把雨伞放到床上。寻找物体，雨伞，窗台上；'
                      '拿起物体，雨伞；放下物体，纸果，柜子上')
    command = '把窗台上的雨伞放到床上'
    errors = ungrounded_arguments(plan, command)
    assert [(e.code, e.step) for e in errors] == [('argument_not_in_command', 2)] * 2
    assert "target '纸果'" in errors[0].message and "location '柜子上'" in errors[1].message
    assert ungrounded_arguments(parse_plan('去客厅。移动到，客厅'), '请去客厅') == []
    assert ungrounded_arguments(parse_plan('无法执行'), '你好') == []


def test_clean_text_removes_every_separator():
    assert clean_text(' 厨房，的;桌子。上 ') == '厨房 的 桌子 上'
    assert not any(sep in clean_text('。；，;,'.join('abc')) for sep in SEPARATORS)
