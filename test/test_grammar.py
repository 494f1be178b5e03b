"""
Grammar-constrained decoding (robot_llm_planner.inference.grammar) on the tiny models.

With random weights and the grammar on, every plan parses and validates against the skills;
with it off, the same check fails (so the check can fail). Both decode paths (generate() with a
logits processor, the static-cache fast path with and without prompt-lookup drafts) give the
same constrained output. A remote server gets the grammar in its request; llamafactory-cli api
ignores it. The labels and the random-weight model's fifty plans are checked on Qwen1.5's real
vocabulary too (``cli qwen-tokenizer``, a tiny model with its 151,936-row embedding), whose
merges join separators to text (，并 is one token).
"""

import glob
import itertools
import json
import os
import shutil

from hypothesis import given, HealthCheck, settings, strategies as st
import pytest

from robot_llm_planner.core.backend import EngineError, GenerationConfig, ModelLoadError
from robot_llm_planner.core.plan import format_plan, NO_TASK, parse_plan, SEPARATORS
from robot_llm_planner.core.planner import Planner
from robot_llm_planner.core.prompt import PromptBuilder
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.inference.grammar import GrammarError, PlanGrammar, REMOTE_FIELDS
from robot_llm_planner.inference.openai_backend import OpenAIBackend
from robot_llm_planner.inference.transformers_backend import TransformersBackend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKILLS = SkillSet.load()
PROMPT = PromptBuilder()
# Enough tokens for the longest plan the grammar allows: every constrained plan completes.
MAX_NEW = PlanGrammar(SKILLS).max_plan_tokens()
COMPLETE = GenerationConfig(max_new_tokens=MAX_NEW)

_OBJECTS = ['一瓶水', '红色的杯子', '遥控器', '那本蓝色的书', '苹果', '充电器', '毛巾', '钥匙']
_PLACES = ['厨房', '客厅', '卧室', '餐厅的桌子上', '沙发旁边', '冰箱里', '阳台']
_TEMPLATES = ['帮我拿{o}', '把{o}放到{p}', '去{p}', '打开{p}的门', '能不能把{o}拿给爸爸',
              '关上{p}的窗户吧', '在{p}找一下{o}', '请把{o}从{p}拿过来']
_ODD = ['水', 'hello robot, bring me the remote', '？？？', '帮我拿一瓶水。然后去厨房；再关灯',
        '把 手机 给我', '😀 拿苹果', '去客厅\n然后回来', '1234567890' * 5]


def _commands(count=50):
    pairs = itertools.cycle(itertools.product(_OBJECTS, _PLACES))
    commands = list(_ODD)
    for index in itertools.count():
        if len(commands) >= count:
            break
        obj, place = next(pairs)
        command = _TEMPLATES[index % len(_TEMPLATES)].format(o=obj, p=place)
        if command not in commands:
            commands.append(command)
    return commands


COMMANDS = _commands()


def _load(model, adapter='', grammar=True, **kwargs):
    backend = TransformersBackend(model, adapter, device='cpu',
                                  grammar=PlanGrammar(SKILLS) if grammar is True else grammar,
                                  **kwargs)
    backend.load()
    return backend


def _problems(results):
    """Return what keeps each planner result from being an executable plan."""
    problems = []
    for result in results:
        plan = result.plan
        errors = [e.code for e in plan.errors + result.errors] + SKILLS.validate(plan)
        if result.status != 'ok' or errors or not plan.steps:
            problems.append((result.command, result.status, errors, plan.raw_output[:80]))
            continue
        for step in plan.steps:
            skill = SKILLS.skills.get(step.action)
            count = len(step.arguments())
            if skill is None or not len(skill.required) <= count <= skill.max_arguments \
                    or not step.description:
                problems.append((result.command, 'bad step', step, plan.raw_output[:80]))
    return problems


@pytest.fixture(scope='module')
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope='module')
def grammar(tokenizer):
    compiled = PlanGrammar(SKILLS)
    compiled.compile(tokenizer)
    return compiled


@pytest.fixture(scope='module')
def constrained(tiny_model):
    """Return the random-weight tiny model with the grammar, generate() path (CPU default)."""
    return _load(tiny_model, fast_path='off', max_new_tokens=MAX_NEW)


# ------------------------------------------------------------------ the grammar itself
def test_grammar_text_has_every_skill_and_step_count():
    grammar = PlanGrammar(SKILLS, max_steps=5, max_text_chars=7)
    for skill in SKILLS:
        assert json.dumps(skill.name, ensure_ascii=False) in grammar.ebnf
    assert grammar.ebnf.count('plan') == 2 * 5 and 'plan5 ::=' in grammar.ebnf
    assert 'char{1,7}' in grammar.ebnf


@pytest.mark.parametrize('kwargs', [{'max_steps': 0}, {'max_text_chars': 0},
                                    {'remote_field': 'guided_json'}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        PlanGrammar(SKILLS, **kwargs)


def _labels():
    labels = []
    for path in sorted(glob.glob(os.path.join(ROOT, 'training', 'data', 'task2_prompt0_*.json'))):
        with open(path, encoding='utf-8') as stream:
            labels += [row['output'] for row in json.load(stream)]
    return labels


def _accepted_token_by_token(grammar, tokenizer, label):
    """Feed ``label``'s tokens and the stop token as decoding does; True if a complete plan."""
    matcher = grammar.matcher()
    for token in tokenizer.encode(label, add_special_tokens=False):
        matcher.accept(token)
    if matcher.is_complete():
        return False
    matcher.accept(grammar.stop_ids[0])
    return matcher.is_complete()


def test_every_training_label_is_accepted(grammar, tokenizer):
    labels = _labels()
    assert len(labels) > 1000
    refused = [label for label in labels if not grammar.accepts(label)]
    assert refused == []
    # token by token too, as decoding feeds it, ending with the stop token
    assert all(_accepted_token_by_token(grammar, tokenizer, label) for label in labels[:200])


@pytest.fixture(scope='module')
def qwen_tokenizer_loaded(qwen_tokenizer):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen_tokenizer)


def test_labels_in_real_tokens_are_accepted_token_by_token(qwen_tokenizer_loaded):
    tokenizer = qwen_tokenizer_loaded
    grammar = PlanGrammar(SKILLS)
    grammar.compile(tokenizer, len(tokenizer), 151936)  # Qwen1.5's padded logits
    assert grammar.vocab_size == 151936 and grammar.stop_ids == [151645]
    labels = _labels()[::40]
    assert len(labels) > 100
    assert [label for label in labels
            if not _accepted_token_by_token(grammar, tokenizer, label)] == []
    # a token that joins a part separator to the text after it is allowed where both are
    joined = tokenizer.convert_tokens_to_ids(tokenizer.tokenize('，并'))
    assert len(joined) == 1
    matcher = grammar.matcher()
    for token in tokenizer.encode('关闭。关闭', add_special_tokens=False) + joined:
        matcher.accept(token)
    matcher.accept(grammar.stop_ids[0])
    assert matcher.is_complete()


@pytest.mark.parametrize('text', [
    '',                                            # nothing
    '寻找水；拿起水。寻找物体，水',                # 2 descriptions, 1 action
    '寻找水。寻找物体，水；拿起物体，水',          # 1 description, 2 actions
    '寻找水',                                      # no output2 (a task1 answer)
    '飞过去。飞，厨房',                            # not a skill
    '去厨房。移动到，厨房，桌子',                  # 移动到 takes no location
    '拿。拿起物体',                                # missing target
    '拿。拿起物体，水，厨房，桌子',                # three arguments
    '拿。拿起物体，，厨房',                        # empty target
    '拿。拿起物体，水。',                          # trailing section separator
    '拿。拿起物体，水；',                          # trailing step separator
    '拿；。拿起物体，水',                          # empty description
    '拿;取。拿起物体，水;拿起物体，水',            # ASCII separators
    '拿 水。拿起物体，水',                         # whitespace
    '拿\n水。拿起物体，水',                        # newline
    '拿\x07。拿起物体，水',                        # control character
    '拿。拿起物体，' + '水' * 25,                  # text over 24 characters
    '；'.join(['拿'] * 13) + '。' + '；'.join(['拿起物体，水'] * 13),  # 13 steps
    '无法执行。',                                  # the no-task answer is alone
    '无法执行；拿起物体，水',
    '无法',
])
def test_refused(grammar, text):
    assert not grammar.accepts(text)


def test_the_no_task_answer_is_accepted_and_ends_the_answer(grammar, tokenizer):
    assert grammar.accepts(NO_TASK) and 'no_task' in grammar.ebnf
    # once a model has written 无法执行 it can only stop: no plan starts with it (a trained
    # model wrote 无法执行系统吻；拿起… for an injection, which the grammar now turns into 无法执行)
    for text in ('无法执行。移动到，客厅', '无法执行系统。移动到，客厅', '无法执行，好。移动到，客厅'):
        assert not grammar.accepts(text), text
    for text in ('无。移动到，客厅', '无法。移动到，客厅', '无法执。移动到，客厅', '无人机。移动到，客厅',
                 '无法打开门。打开，门', '去客厅；无法执行。移动到，客厅；移动到，客厅'):
        assert grammar.accepts(text), text
    short = PlanGrammar(SKILLS, max_text_chars=2)
    short.compile(tokenizer)
    assert short.accepts('无法。移动到，客厅') and short.accepts('无。移动到，客厅')
    assert not short.accepts('无法执。移动到，客厅')  # over 2 characters


def test_a_description_may_hold_part_separators(grammar):
    # output1 is not split on them: the planner's validation accepts such a plan, so the
    # grammar must not steer a model away from it (a trained model wrote these)
    for text in ('把水，给我。递给，我', '拿水,快。拿起物体，水'):
        assert grammar.accepts(text), text
        plan = parse_plan(text)
        assert plan.ok and SKILLS.validate(plan) == []
    assert not grammar.accepts('，。拿起物体，水')  # separators alone are no description
    assert not grammar.accepts('拿。拿起物体，水,杯')  # in an argument it stays a separator


def test_limits_are_parameters(tokenizer):
    small = PlanGrammar(SKILLS, max_steps=2, max_text_chars=3)
    small.compile(tokenizer)
    assert small.accepts('拿水；给我。拿起物体，水；递给，我')
    assert not small.accepts('拿水；给我；走。拿起物体，水；递给，我；移动到，门')
    assert small.accepts('拿水杯。拿起物体，水杯子')
    assert not small.accepts('拿水杯。拿起物体，水杯子们')


_CLEAN = st.text(st.sampled_from('水杯子厨房abc1、！'), min_size=1, max_size=6)
_DIRTY = st.one_of(_CLEAN, st.text(st.sampled_from('水杯 。；，;,\n\t\x00\u3000'), max_size=4),
                   st.sampled_from(['x' * 25, '寻找物体', '移动到，厨房', '，水', '水,', '，']))
_ACTIONS = st.sampled_from(SKILLS.names() + ['飞', '寻找', '寻找物体 ', ''])


@st.composite
def _plans(draw):
    """Return (description, action, arguments) triples, often valid, often not."""
    steps = []
    for _ in range(draw(st.integers(0, 14))):
        args = draw(st.lists(draw(st.sampled_from([_CLEAN, _DIRTY])), max_size=3))
        steps.append((draw(draw(st.sampled_from([_CLEAN, _DIRTY]))), draw(_ACTIONS), args))
    return steps


def _clean(text, limit=24, allowed=''):
    bad = set(SEPARATORS) | {chr(c) for c in range(0x21)} | {'\x7f', '\u3000'}
    return (1 <= len(text) <= limit and text[0] not in bad
            and not set(text) & (bad - set(allowed)))


def _valid(description, action, args):
    skill = SKILLS.skills.get(action)
    return (_clean(description, allowed='，,') and skill is not None
            and all(_clean(a) for a in args)
            and len(skill.required) <= len(args) <= skill.max_arguments)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_plans())
def test_accepts_exactly_the_valid_plans(grammar, steps):
    text = '；'.join(d for d, _, _ in steps) + '。' + '；'.join(
        '，'.join([action] + args) for _, action, args in steps)
    if 1 <= len(steps) <= grammar.max_steps and all(_valid(*step) for step in steps):
        assert grammar.accepts(text), text
    if grammar.accepts(text):  # whatever it accepts is a valid, canonical plan
        plan = parse_plan(text)
        assert plan.ok and SKILLS.validate(plan) == [], text
        assert format_plan(plan.steps) == text and len(plan.steps) <= grammar.max_steps
        assert all(_valid(s.description, s.action, s.arguments()) for s in plan.steps)


# ------------------------------------------------------------------ the random-weight model


def _plan_all(backend, config=COMPLETE, commands=COMMANDS):
    # random weights write random names and steps: the grammar bounds form and skills, not
    # whether the names come from the command (validation.grounded_arguments) or the steps can
    # run in that order (validation.preconditions), so those are off here
    planner = Planner(backend, SKILLS, PROMPT, config, cache_size=0, grounded_arguments=False,
                      preconditions=False)
    return planner.plan_batch(commands)


def test_fifty_commands_give_valid_plans_with_the_grammar(constrained):
    assert len(set(COMMANDS)) == 50
    results = _plan_all(constrained)
    assert _problems(results) == []
    assert all(r.status == 'ok' and not r.errors and r.plan.ok for r in results)


@pytest.mark.slow
def test_fifty_commands_give_valid_plans_on_the_real_vocabulary(qwen_vocab_model):
    # Qwen1.5's 151,646 tokens, logits padded to 151,936: every mask covers the padding
    backend = _load(qwen_vocab_model, fast_path='off', max_new_tokens=MAX_NEW)
    assert backend.grammar.vocab_size == backend.model.config.vocab_size == 151936
    assert len(backend.tokenizer) == 151646
    results = _plan_all(backend)
    assert _problems(results) == []
    assert len({result.plan.raw_output for result in results}) >= 10  # not one plan fifty times


@pytest.mark.parametrize('grammar_on', [True, False])
def test_fifty_commands_on_the_fast_path(tiny_model, grammar_on):
    backend = _load(tiny_model, grammar=grammar_on or None, fast_path='on', draft_tokens=4,
                    max_new_tokens=MAX_NEW)
    if grammar_on:
        assert _problems(_plan_all(backend)) == []
    else:  # the same check fails without the grammar, and not just for running out of tokens
        results = _plan_all(backend, GenerationConfig(max_new_tokens=96))
        wrong = [p for p in _problems(results) if set(p[2]) - {'truncated_output'}]
        assert len(wrong) >= 45


@pytest.fixture(scope='module')
def generate_outputs(tiny_model, tiny_adapter):
    """Return generate()'s constrained outputs (computed once) by (adapter, max_new_tokens)."""
    backends, outputs = {}, {}

    def outputs_for(adapter, max_new):
        if adapter not in backends:
            backends[adapter] = _load(tiny_model, adapter, fast_path='off',
                                      max_new_tokens=MAX_NEW)
        if (adapter, max_new) not in outputs:
            config = GenerationConfig(max_new_tokens=max_new)
            outputs[adapter, max_new] = [(g.text, g.tokens, g.finished) for g in
                                         backends[adapter].generate(EQUAL, PROMPT, config)]
        return outputs[adapter, max_new], backends[adapter]
    return outputs_for


EQUAL = COMMANDS[::10]


@pytest.mark.parametrize('draft_tokens', [0, 1, 4])
def test_fast_path_equals_generate_with_the_grammar(tiny_model, tiny_adapter, generate_outputs,
                                                    draft_tokens):
    for adapter in ('', tiny_adapter):
        fast = _load(tiny_model, adapter, fast_path='on', draft_tokens=draft_tokens,
                     max_new_tokens=MAX_NEW)
        for max_new in (5, 40, MAX_NEW):
            expected, slow = generate_outputs(adapter, max_new)
            config = GenerationConfig(max_new_tokens=max_new)
            assert [(g.text, g.tokens, g.finished)
                    for g in fast.generate(EQUAL, PROMPT, config)] == expected
        assert all(finished for _, _, finished in expected)
        if draft_tokens == 0 and not adapter:  # the batch equals one by one
            assert [slow.generate([c], PROMPT, COMPLETE)[0].text for c in EQUAL] == \
                [text for text, _, _ in expected]


def test_grammar_changes_the_unconstrained_output(tiny_model, constrained):
    free = _load(tiny_model, grammar=None, fast_path='off')
    config = GenerationConfig(max_new_tokens=24)
    assert [g.text for g in free.generate(COMMANDS[:4], PROMPT, config)] != \
        [g.text for g in constrained.generate(COMMANDS[:4], PROMPT, config)]


def test_sampling_with_the_grammar_gives_valid_plans(constrained):
    config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=True, temperature=1.0,
                              top_p=0.9)
    assert _problems(_plan_all(constrained, config, COMMANDS[:6])) == []


def test_compiled_once_at_load(tiny_model, monkeypatch):
    grammar = PlanGrammar(SKILLS)
    calls = []
    original = grammar.compile
    monkeypatch.setattr(grammar, 'compile', lambda *a, **k: calls.append(1) or original(*a, **k))
    backend = _load(tiny_model, grammar=grammar, fast_path='on')
    backend.warm_up(PROMPT)
    backend.generate(COMMANDS[:2], PROMPT, GenerationConfig(max_new_tokens=8))
    assert calls == [1] and grammar.compile_ms > 0
    assert grammar.vocab_size == backend.model.config.vocab_size
    assert grammar.stop_ids == backend.stop_ids


def test_grammar_that_does_not_compile_fails_at_load(tiny_model):
    grammar = PlanGrammar(SKILLS)
    grammar.ebnf = 'root ::= ("unclosed"'
    with pytest.raises(GrammarError, match='generation.constrained: cannot compile') as info:
        _load(tiny_model, grammar=grammar)
    assert isinstance(info.value, ModelLoadError)


def test_matcher_before_compile_is_an_engine_error():
    with pytest.raises(EngineError, match='not compiled'):
        PlanGrammar(SKILLS).matcher()


def test_a_refused_token_leaves_the_matcher_as_it_was(grammar, tokenizer):
    import xgrammar as xgr
    matcher = grammar.matcher()
    before = xgr.allocate_token_bitmask(1, grammar.vocab_size)
    matcher.fill(before)
    allowed = [t for t in range(grammar.vocab_size) if (int(before[0, t // 32]) >> (t % 32)) & 1]
    refused = sorted(set(range(grammar.vocab_size)) - set(allowed))
    assert allowed and refused
    assert [matcher.accept_if_allowed(token) for token in refused[:50]] == [False] * 50
    after = xgr.allocate_token_bitmask(1, grammar.vocab_size)
    matcher.fill(after)
    assert bool((before == after).all()) and matcher.tokens == 0
    assert matcher.accept_if_allowed(allowed[0]) and matcher.tokens == 1


def test_best_allowed_is_the_argmax_of_the_masked_row(grammar):
    import torch
    matcher = grammar.matcher()
    logits = torch.randn(grammar.vocab_size, generator=torch.Generator().manual_seed(3))
    expected = int(grammar.matcher().mask(logits.clone()).argmax())
    assert matcher.best_allowed(logits) == expected and matcher.tokens == 1
    assert torch.isinf(logits).any()  # masked in place


class _CountingMatcher:
    """A real PlanMatcher that counts the rows it had to mask (the grammar refused them)."""

    def __init__(self, matcher):
        self.matcher = matcher
        self.masked = 0

    def accept_if_allowed(self, token):
        return self.matcher.accept_if_allowed(token)

    def best_allowed(self, logits):
        self.masked += 1
        return self.matcher.best_allowed(logits)


@pytest.mark.slow
def test_a_trained_models_own_choices_are_kept_without_a_mask(trained_model):
    # The plans the trained model writes are valid: the grammar never refuses its choice, so
    # the fast path never fills a bitmask or masks a row, and the answers stay the same.
    backend = _load(trained_model.base, trained_model.adapter, fast_path='on', draft_tokens=8,
                    max_new_tokens=256)
    for command in trained_model.correct[:8]:
        counting = _CountingMatcher(backend.grammar.matcher())
        result = backend.decoder.decode(backend.encode(command, PROMPT), 256, counting)
        assert backend.tokenizer.decode(result.tokens) == trained_model.labels[command]
        assert result.finished and counting.masked == 0
        assert counting.matcher.is_complete()


# ------------------------------------------------------------------ padded vocabulary
def test_masks_cover_padding_beyond_the_tokenizer(grammar, tokenizer):
    import torch
    padded = PlanGrammar(SKILLS)
    padded.compile(tokenizer, len(tokenizer), len(tokenizer) + 64)
    assert padded.vocab_size == len(tokenizer) + 64
    logits = torch.zeros(len(tokenizer) + 64)
    logits[len(tokenizer):] = 1e4  # padding the model prefers
    masked = padded.matcher().mask(logits.clone())
    assert int(torch.argmax(masked)) < len(tokenizer)
    assert torch.isinf(masked[len(tokenizer):]).all()
    processor = padded.logits_processor(2)
    scores = processor(torch.zeros(2, 3, dtype=torch.long), logits.repeat(2, 1))
    assert torch.isinf(scores[:, len(tokenizer):]).all()


def test_model_with_padded_embedding(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM
    padded = str(tmp_path / 'padded')
    shutil.copytree(tiny_model, padded)
    model = AutoModelForCausalLM.from_pretrained(padded)
    model.resize_token_embeddings(model.config.vocab_size + 64, mean_resizing=False)
    model.save_pretrained(padded)
    for fast_path in ('off', 'on'):
        backend = _load(padded, fast_path=fast_path, max_new_tokens=MAX_NEW)
        assert backend.grammar.vocab_size == backend.model.config.vocab_size \
            > len(backend.tokenizer)
        assert _problems(_plan_all(backend, commands=COMMANDS[:3])) == []


# ------------------------------------------------------------------ remote servers
def test_guided_request_fields():
    assert PlanGrammar(SKILLS).guided_request() == {
        'structured_outputs': {'grammar': PlanGrammar(SKILLS).ebnf}}
    assert PlanGrammar(SKILLS, remote_field='guided_grammar').guided_request() == {
        'guided_grammar': PlanGrammar(SKILLS).ebnf}
    assert PlanGrammar(SKILLS, remote_field='none').guided_request() == {}
    assert REMOTE_FIELDS == ('structured_outputs', 'guided_grammar', 'none')


@pytest.mark.parametrize('field', REMOTE_FIELDS)
def test_remote_request_carries_the_grammar(field, server):
    from robot_llm_planner.core.settings import PlannerSettings
    from robot_llm_planner.inference.build import build_planner
    planner = build_planner(PlannerSettings(backend='openai', remote_base_url=server.url,
                                            remote_model='tiny', remote_grammar_field=field))
    planner.load()
    result = planner.plan('帮我拿一瓶水。')  # the fake server's plan names 一瓶水
    assert result.status == 'ok'
    body = server.bodies[-1]
    ebnf = planner.backend.grammar.ebnf
    expected = {'structured_outputs': {'structured_outputs': {'grammar': ebnf}},
                'guided_grammar': {'guided_grammar': ebnf}, 'none': {}}[field]
    assert {k: body[k] for k in body if k in ('structured_outputs', 'guided_grammar')} == expected


@pytest.mark.slow
def test_llamafactory_api_ignores_the_grammar(llamafactory_api, api_key):
    config = GenerationConfig(max_new_tokens=24)
    answers = []
    for field in REMOTE_FIELDS:
        backend = OpenAIBackend(llamafactory_api, 'tiny', api_key,
                                grammar=PlanGrammar(SKILLS, remote_field=field))
        backend.load()
        answers.append([g.text for g in backend.generate(COMMANDS[:3], PROMPT, config)])
    plain = OpenAIBackend(llamafactory_api, 'tiny', api_key)
    assert answers == [[g.text for g in plain.generate(COMMANDS[:3], PROMPT, config)]] * 3
    assert all(answers[0])


# ------------------------------------------------------------------ settings
def test_constrained_is_the_default():
    from robot_llm_planner.cli.commands import build_parser, settings_from_args
    from robot_llm_planner.core.settings import PlannerSettings
    from robot_llm_planner.inference.build import build_backend
    assert PlannerSettings().constrained is True
    args = build_parser().parse_args(['plan', 'x'])
    assert settings_from_args(args).constrained is True
    args = build_parser().parse_args(['plan', '--no-constrained', '--remote-grammar-field',
                                      'guided_grammar', 'x'])
    settings_ = settings_from_args(args)
    assert settings_.constrained is False and settings_.remote_grammar_field == 'guided_grammar'
    assert build_backend(settings_, SKILLS).grammar is None
    backend = build_backend(PlannerSettings(remote_grammar_field='none'), SKILLS)
    assert isinstance(backend.grammar, PlanGrammar) and backend.grammar.remote_field == 'none'


# ------------------------------------------------------------------ a trained model
@pytest.mark.slow
def test_trained_model_valid_outputs_are_unchanged(trained_model):
    commands = [row['input'] for row in trained_model.rows]
    model, adapter = trained_model.base, trained_model.adapter
    free = Planner(_load(model, adapter, grammar=None, fast_path='off', max_new_tokens=256),
                   SKILLS, PROMPT, GenerationConfig(max_new_tokens=256), cache_size=0)
    valid = [(r.command, r.plan.raw_output) for r in free.plan_batch(commands)
             if r.status == 'ok']
    assert len(valid) >= len(commands) // 2, 'the trained model should answer most correctly'
    assert {c: trained_model.labels[c] for c in trained_model.correct}.items() <= set(valid)
    for fast_path, draft_tokens in (('off', 0), ('on', 0), ('on', 4)):
        backend = _load(model, adapter, fast_path=fast_path, draft_tokens=draft_tokens,
                        max_new_tokens=256)
        planner = Planner(backend, SKILLS, PROMPT, GenerationConfig(max_new_tokens=256),
                          cache_size=0)
        results = planner.plan_batch([command for command, _ in valid])
        assert [(r.command, r.plan.raw_output) for r in results] == valid
        assert all(r.status == 'ok' for r in results)


# ------------------------------------------------------------------ the benchmark
def test_overhead_benchmark_smoke(tmp_path):
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'grammar_overhead.py'), '--config',
         'tiny', '--device', 'cpu', '--runs', '1', '--commands', '2', '--max-new-tokens', '8',
         '--labels', '5', '--out', str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'grammar_overhead.json').read_text())
    assert len(report['paths']) == 2 and report['compile_ms'] > 0
    for path in report['paths'].values():
        assert path['ms_per_token_with'] > 0 and path['ms_per_token_without'] > 0
    assert report['mask_alone']['tokens'] > 0 and report['label_mask_alone']['tokens'] > 0
    assert '| fast path (static cache) |' in (tmp_path / 'grammar_overhead.md').read_text()
