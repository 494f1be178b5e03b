"""
Plan confidence: the lowest probability the model gave a token of its answer.

The local backend reports it on every decode path (generate(), the fast path, with drafts)
as the model's own distribution before the grammar's mask, checked here against a separate
forward pass over the answer; the planner turns plans below ``validation.min_confidence``
into ``invalid`` / ``low_confidence``; ``cli evaluate`` tabulates what each threshold keeps.
"""

import json
import math
import subprocess
import sys

from hypothesis import given, settings, strategies as st
import jsonschema
import pytest

from robot_llm_planner.cli.results import confidence_table
from robot_llm_planner.core.backend import GenerationConfig
from robot_llm_planner.core.byte_level import BYTE_TO_CHAR, CHAR_TO_BYTE
from robot_llm_planner.core.confidence import (assign_step_confidences, character_spans,
                                               published_confidence)
from robot_llm_planner.core.parameters import check_value, PARAMETERS_BY_NAME
from robot_llm_planner.core.plan import parse_plan, step_spans
from robot_llm_planner.core.planner import Planner
from robot_llm_planner.core.prompt import PromptBuilder
from robot_llm_planner.core.skills import package_share_path, SkillSet
from robot_llm_planner.inference.grammar import PlanGrammar
from robot_llm_planner.inference.transformers_backend import TransformersBackend
import torch

SKILLS = SkillSet.load()
PROMPT = PromptBuilder()
COMMANDS = ['帮我拿一瓶水。', '把红色的杯子放到厨房的桌子上', '去客厅', '打开冰箱门']
GREEDY = GenerationConfig(max_new_tokens=24)
# Enough tokens for the longest plan the grammar allows: every constrained plan completes.
COMPLETE = GenerationConfig(max_new_tokens=PlanGrammar(SKILLS).max_plan_tokens())


def _load(model, adapter, constrained, max_new_tokens=64, **kwargs):
    backend = TransformersBackend(model, adapter, device='cpu', max_new_tokens=max_new_tokens,
                                  grammar=PlanGrammar(SKILLS) if constrained else None, **kwargs)
    backend.load()
    return backend


def _reference(model, prompt_ids, tokens):
    """Return the lowest probability of ``tokens`` after ``prompt_ids``: one plain forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + tokens])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
    return math.exp(min(logprobs[i, token].item() for i, token in enumerate(tokens)))


@pytest.fixture(scope='module', params=[False, True], ids=['unconstrained', 'grammar'])
def backends(request, tiny_model, tiny_adapter):
    return {path: _load(tiny_model, tiny_adapter, request.param, fast_path=path)
            for path in ('on', 'off')}


def test_fast_path_confidence_is_the_models_own_lowest_token_probability(backends):
    fast = backends['on']
    for command in COMMANDS:
        ids = fast.encode(command, PROMPT)
        constraint = fast.grammar.matcher() if fast.grammar is not None else None
        result = fast.decoder.decode(ids, GREEDY.max_new_tokens, constraint)
        answer = result.tokens + (fast.stop_ids[:1] if result.finished else [])
        # unmasked: under the grammar, the reference forward knows nothing of the mask
        confidence = math.exp(min(result.logprobs))
        assert confidence == pytest.approx(_reference(fast.model, ids, answer), rel=1e-3)
        generation = fast.generate([command], PROMPT, GREEDY)[0]
        assert generation.confidence == pytest.approx(confidence, rel=1e-6)


def test_every_decode_path_reports_the_same_confidence(backends, tiny_model, tiny_adapter):
    fast = [fast_one for command in COMMANDS
            for fast_one in backends['on'].generate([command], PROMPT, GREEDY)]
    batch = backends['off'].generate(COMMANDS, PROMPT, GREEDY)   # left-padded generate()
    one = [backends['off'].generate([c], PROMPT, GREEDY)[0] for c in COMMANDS]
    constrained = backends['on'].grammar is not None
    drafts = _load(tiny_model, tiny_adapter, constrained, fast_path='on', draft_tokens=4)
    drafted = [drafts.generate([c], PROMPT, GREEDY)[0] for c in COMMANDS]
    for run in (batch, one, drafted):
        assert [g.text for g in run] == [g.text for g in fast]
        for generation, reference in zip(run, fast):
            assert 0.0 < generation.confidence <= 1.0
            assert generation.confidence == pytest.approx(reference.confidence, rel=1e-3)


def test_the_grammar_forces_tokens_the_random_model_finds_unlikely(backends):
    # With random weights the grammar overrules the model at almost every step: the tokens
    # it keeps are ones the model itself gave little probability (the signal that the plan
    # is not the model's own).
    generations = backends['on'].generate(COMMANDS[:1], PROMPT, GREEDY)
    if backends['on'].grammar is not None:
        assert generations[0].confidence < 0.05


@pytest.fixture(scope='module')
def random_backend(tiny_model):
    return _load(tiny_model, '', True, COMPLETE.max_new_tokens, fast_path='off')


def test_min_confidence_turns_a_less_confident_plan_invalid(random_backend):
    def plan(threshold):
        # the random model's plan: arguments and step order are not checked
        planner = Planner(random_backend, SKILLS, PROMPT, COMPLETE, grounded_arguments=False,
                          preconditions=False, min_confidence=threshold)
        return planner.plan('去客厅')

    free = plan(0.0)
    assert free.status == 'ok' and free.errors == []
    confidence = free.confidence
    assert 0.0 < confidence < 1.0
    assert plan(confidence * 0.999).status == 'ok'
    threshold = min(1.0, confidence * 1.001)
    refused = plan(threshold)
    assert refused.status == 'invalid' and refused.plan.steps == free.plan.steps
    assert [e.code for e in refused.errors] == ['low_confidence']
    assert '%.4f' % confidence in refused.errors[0].message
    message = refused.message('r1')
    assert message['confidence'] == confidence < threshold
    with open(package_share_path('config', 'action_plan.schema.json'), encoding='utf-8') as f:
        schema = json.load(f)
    jsonschema.validate(message, schema)
    jsonschema.validate(free.message('r0'), schema)


def test_a_cached_plan_keeps_its_confidence(random_backend):
    planner = Planner(random_backend, SKILLS, PROMPT, COMPLETE, grounded_arguments=False,
                      preconditions=False)
    first, second = planner.plan('去客厅'), planner.plan('去客厅')
    assert second.timing['cached'] and second.confidence == first.confidence is not None


def test_nothing_generated_means_no_confidence(random_backend):
    result = Planner(random_backend, SKILLS, min_confidence=0.5).plan('   ')
    assert result.status == 'rejected' and result.confidence is None
    assert result.message('r')['confidence'] is None


def test_a_model_with_nan_logits_has_confidence_zero_on_every_path(tiny_model):
    for path in ('on', 'off'):
        backend = _load(tiny_model, '', False, fast_path=path)
        with torch.no_grad():
            backend.model.model.norm.weight.fill_(float('nan'))
        generation = backend.generate(['去客厅'], PROMPT, GenerationConfig(max_new_tokens=4))[0]
        assert generation.confidence == 0.0, path
        result = Planner(backend, SKILLS, PROMPT, GenerationConfig(max_new_tokens=4)).plan('去客厅')
        assert result.confidence == 0.0 and result.message('r')['confidence'] == 0.0


@pytest.mark.parametrize('value,published', [
    (0.59996, 0.5999),            # rounded down: a plan held back at 0.6 never shows 0.6
    (0.8999999999999999, 0.9),    # exp(log(0.9)): an exact decimal keeps its digits
    (1.0, 1.0), (1.2, 1.0), (0.0, 0.0), (-0.1, 0.0), (float('nan'), 0.0), (None, None)])
def test_published_confidence(value, published):
    assert published_confidence(value) == published


def test_a_plan_held_back_shows_a_confidence_below_the_threshold(random_backend):
    # the value compared is the value published
    confidence = Planner(random_backend, SKILLS, PROMPT, COMPLETE,
                         grounded_arguments=False, preconditions=False).plan('去客厅').confidence
    for threshold in (confidence, confidence + 0.00005, confidence + 0.0001):
        result = Planner(random_backend, SKILLS, PROMPT, COMPLETE, grounded_arguments=False,
                         preconditions=False,
                         min_confidence=min(1.0, threshold)).plan('去客厅')
        shown = result.message('r')['confidence']
        assert (result.status == 'ok') == (shown >= threshold)


@pytest.mark.parametrize('value', [-0.1, 1.5, float('nan'), float('inf')])
def test_min_confidence_outside_zero_to_one_is_refused(value):
    with pytest.raises(ValueError, match='min_confidence'):
        Planner(None, SKILLS, min_confidence=value)
    converted, error = check_value(PARAMETERS_BY_NAME['validation.min_confidence'], value)
    assert converted is None and 'validation.min_confidence' in error


def test_min_confidence_parameter_accepts_a_probability():
    assert check_value(PARAMETERS_BY_NAME['validation.min_confidence'], 0.6) == (0.6, None)
    assert check_value(PARAMETERS_BY_NAME['validation.min_confidence'], 1) == (1.0, None)


def test_cli_refuses_a_min_confidence_that_is_not_a_probability():
    run = subprocess.run([sys.executable, '-m', 'robot_llm_planner.cli', 'plan',
                          '--min-confidence', '2', 'x'], capture_output=True, text=True)
    assert run.returncode == 2 and 'expected a number from 0 to 1' in run.stderr


def _row(predict, label, status='ok', confidence=0.5, errors=()):
    return {'command': '去客厅', 'predict': predict, 'label': label, 'status': status,
            'confidence': confidence, 'errors': list(errors)}


def test_confidence_table_counts_what_each_threshold_keeps_and_catches():
    right, wrong = '去客厅。移动到，客厅', '去客。移动到，客'
    rows = [_row(right, right, confidence=0.9), _row(right, right, confidence=0.35),
            _row(wrong, right, confidence=0.25), _row(wrong, right, confidence=0.65),
            # refused below a threshold set while planning: still counted
            _row(wrong, right, 'invalid', 0.05, ['low_confidence']),
            # not counted: failed another check, no confidence, no label
            _row(wrong, right, 'invalid', 0.9, ['argument_not_in_command']),
            _row(right, right, confidence=None), _row(right, '', confidence=0.9),
            # a plan for a command without a task is a wrong plan
            _row(right, '无法执行', confidence=0.1)]
    table = confidence_table(rows, thresholds=(0.3, 0.7))
    lines = table.splitlines()
    assert lines[0].startswith('| min_confidence | right plans kept (of 2) | '
                               'wrong plans caught (of 4)')
    assert lines[2] == '| 0 | 2 (100.0 %) | 0 (0.0 %) | 66.7 % |'
    assert lines[3] == '| 0.3 | 2 (100.0 %) | 3 (75.0 %) | 33.3 % |'
    assert lines[4] == '| 0.7 | 1 (50.0 %) | 4 (100.0 %) | 0.0 % |'
    assert confidence_table([_row(right, right, confidence=None)]) == ''


# ------------------------------------------------------------------ each step's confidence
PLAN_TEXT = '寻找水；拿起水。寻找物体，水；拿起物体，水'


def test_step_spans_find_each_steps_description_and_entry():
    spans = step_spans(PLAN_TEXT)
    assert [[PLAN_TEXT[a:b] for a, b in step] for step in spans] == [
        ['寻找水', '寻找物体，水'], ['拿起水', '拿起物体，水']]
    assert step_spans('无法执行') == [] and step_spans('') == []
    # what parse_plan skips is skipped here too: empty steps, a leading 。, a third section
    messy = '。 寻找水 ；；拿起水;。寻找物体,水；拿起物体，水；。多余'
    assert [[messy[a:b].strip() for a, b in step] for step in step_spans(messy)] == [
        ['寻找水', '寻找物体,水'], ['拿起水', '拿起物体，水']]
    assert [[PLAN_TEXT[a:b] for a, b in s] for s in step_spans('寻找水；拿起水')] == [
        ['寻找水'], ['拿起水']]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='水杯拿 ，,；;。', max_size=30))
def test_step_spans_agree_with_parse_plan(text):
    plan = parse_plan(text)
    spans = step_spans(text)
    assert len(spans) == len(plan.steps)
    for step, step_span in zip(plan.steps, spans):
        texts = [text[a:b].strip() for a, b in step_span]
        if step.description:
            assert texts[0] == step.description
        if step.action:
            entry = parse_plan('x。' + texts[-1]).steps[0]
            assert (entry.action, entry.target, entry.location) == (
                step.action, step.target, step.location)


def test_a_steps_confidence_is_its_least_likely_token():
    # one token per character; the stop token holds none
    probabilities = [0.9] * len(PLAN_TEXT) + [0.05]
    probabilities[PLAN_TEXT.index('；')] = 0.01          # a separator: no step's
    probabilities[PLAN_TEXT.rindex('水')] = 0.3           # step 2's entry
    probabilities[1] = 0.6                                # step 1's description
    ends = list(range(1, len(PLAN_TEXT) + 1))
    tokens = [(end - 1, end, p) for end, p in zip(ends, probabilities)]
    tokens.append((len(PLAN_TEXT), len(PLAN_TEXT), probabilities[-1]))
    plan = parse_plan(PLAN_TEXT)
    assign_step_confidences(plan, tokens)
    assert [step.confidence for step in plan.steps] == [0.6, 0.3]
    # a token that spans two steps counts for both
    plan = parse_plan(PLAN_TEXT)
    assign_step_confidences(plan, [(0, 5, 0.5), (5, len(PLAN_TEXT), 0.9)])  # 寻找水；拿, the rest
    assert [step.confidence for step in plan.steps] == [0.5, 0.5]
    unknown = parse_plan(PLAN_TEXT)
    assign_step_confidences(unknown, None)
    assert [step.confidence for step in unknown.steps] == [None, None]


def test_every_decode_path_reports_where_each_token_ends_and_its_probability(
        backends, tiny_model, tiny_adapter):
    fast, batch_backend = backends['on'], backends['off']
    constrained = fast.grammar is not None
    drafts = _load(tiny_model, tiny_adapter, constrained, fast_path='on', draft_tokens=4)
    runs = [[fast.generate([c], PROMPT, GREEDY)[0] for c in COMMANDS],
            batch_backend.generate(COMMANDS, PROMPT, GREEDY),
            [drafts.generate([c], PROMPT, GREEDY)[0] for c in COMMANDS]]
    for command, generations in zip(COMMANDS, zip(*runs)):
        ids = fast.encode(command, PROMPT)
        constraint = fast.grammar.matcher() if constrained else None
        result = fast.decoder.decode(ids, GREEDY.max_new_tokens, constraint)
        answer = result.tokens + (fast.stop_ids[:1] if result.finished else [])
        # independently: each prefix decoded, each token's probability from a plain forward
        with torch.no_grad():
            logits = fast.model(input_ids=torch.tensor([ids + answer])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(ids) - 1:-1], dim=-1)
        expected = [(len(fast.tokenizer.decode(answer[:k + 1], skip_special_tokens=True)),
                     math.exp(logprobs[k, token].item())) for k, token in enumerate(answer)]
        for generation in generations:
            got = generation.token_probabilities
            assert [end for _, end, _ in got] == [end for end, _ in expected]
            assert [p for _, _, p in got] == pytest.approx([p for _, p in expected], rel=2e-3)
            assert generation.confidence == pytest.approx(min(p for _, _, p in got), rel=1e-6)
            # a token starts where the one before ends, or inside that token's last character
            for (start, end, _), before in zip(got, [0] + [end for _, end, _ in got]):
                assert before - 1 <= start <= min(before, end)
        assert [[(start, end) for start, end, _ in g.token_probabilities]
                for g in generations[1:]] == [[(start, end) for start, end, _ in
                                               generations[0].token_probabilities]] * 2


def test_each_published_step_carries_its_confidence(random_backend):
    result = Planner(random_backend, SKILLS, PROMPT, COMPLETE, grounded_arguments=False,
                     preconditions=False).plan('把红色的杯子放到厨房的桌子上')
    message = result.message('r')
    values = [step['confidence'] for step in message['steps']]
    assert values and all(0.0 <= value <= 1.0 for value in values)
    # the plan's least likely token is in a step, a separator or the stop token
    assert message['confidence'] <= min(values)
    with open(package_share_path('config', 'action_plan.schema.json'), encoding='utf-8') as f:
        jsonschema.validate(message, json.load(f))


def _expected_spans(pieces):
    """Return, from the bytes of valid UTF-8, each token's first and past-last character."""
    whole, spans, offset = b''.join(pieces), [], 0
    for piece in pieces:
        start = len(whole[:offset].decode('utf-8', 'ignore'))  # complete characters before
        offset += len(piece)
        end = len(whole[:offset].decode('utf-8', 'replace'))   # a begun character counts
        spans.append((start if piece else end, end))
    return spans


def _pieces(tokenizer, ids):
    special = set(tokenizer.all_special_ids)
    return [b'' if token in special else bytes(CHAR_TO_BYTE[char] for char in piece)
            for token, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids))]


def test_token_spans_of_a_byte_level_tokenizer_need_no_decoding(random_backend, monkeypatch):
    tokenizer = random_backend.tokenizer
    ids = tokenizer.encode('寻找物体，iPad；拿起😀', add_special_tokens=False) + \
        random_backend.stop_ids[:1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ends = [len(tokenizer.decode(ids[:k + 1], skip_special_tokens=True))
            for k in range(len(ids))]
    expected = _expected_spans(_pieces(tokenizer, ids))
    assert [end for _, end in expected] == ends
    calls = []
    decode = tokenizer.decode
    monkeypatch.setattr(tokenizer, 'decode', lambda *a, **k: calls.append(a) or decode(*a, **k))
    assert random_backend._token_spans(ids, text) == expected and calls == []
    # a tokenizer whose tokens are not byte-level pieces: every prefix is decoded instead,
    # and a token starts where the one before it ends
    monkeypatch.setattr(tokenizer, 'convert_ids_to_tokens', lambda ids: [None] * len(ids))
    assert random_backend._token_spans(ids, text) == list(zip([0] + ends[:-1], ends))
    assert len(calls) == len(ids)
    assert random_backend._token_spans(ids, text + 'x') is None  # does not spell the text


@pytest.mark.parametrize('pieces', [
    [b'\xe6\x8b\xbf', b'\x80\x80', b'\xe6\xb0\xb4'],          # stray continuation bytes
    [b'\xc0\x80', b'a'],                                        # an invalid lead byte
    [b'\xed\xa0\x80', b'a'],                                    # a surrogate's bytes
    [b'\xf0\x9f', b'\x98\x80', b'\xe6\xb0\xb4'],                # an emoji over two tokens
    [b'\xe6\xb0', b''],                                         # cut inside a character
])
def test_character_spans_count_characters_as_python_decodes_them(pieces):
    spans, text = character_spans(pieces)
    assert text == b''.join(pieces).decode('utf-8', 'replace') and spans[-1][1] == len(text)
    for count in range(1, len(pieces)):
        # a token ends after what its bytes complete, plus a character it begins, and the
        # next one starts there or in that begun character
        complete = b''.join(pieces[:count]).decode('utf-8', 'replace')
        bounds = (len(complete.rstrip('\ufffd')), len(complete))
        assert spans[count - 1][1] in bounds and spans[count][0] in bounds
        assert spans[count][0] <= spans[count][1]


def test_token_spans_of_undecodable_bytes_end_where_decoding_every_prefix_does(random_backend):
    # a weak or sampled model can write byte tokens that are no UTF-8 at all
    tokenizer = random_backend.tokenizer
    byte_ids = [tokenizer.convert_tokens_to_ids(BYTE_TO_CHAR[byte]) for byte in (0x80, 0xC0, 0xED)]
    words = tokenizer.encode('拿起水', add_special_tokens=False)
    for ids in ([words[0], byte_ids[0], byte_ids[0]] + words[1:],
                [byte_ids[1], byte_ids[0]] + words, [byte_ids[2], byte_ids[0]] + words):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert [end for _, end in random_backend._token_spans(ids, text)] == [
            len(tokenizer.decode(ids[:k + 1], skip_special_tokens=True)) for k in range(len(ids))]


def test_a_space_beside_a_separator_belongs_to_no_step():
    text = '寻找水 ；拿起水。寻找物体，水；拿起物体，水'
    tokens = [(end - 1, end, 0.01 if text[end - 1] == ' ' else 0.9)
              for end in range(1, len(text) + 1)]
    plan = parse_plan(text)
    assign_step_confidences(plan, tokens)
    assert [step.confidence for step in plan.steps] == [0.9, 0.9]


# ------------------------------------------------------------------ Qwen1.5's real merges
# 龘 and 靐 are two byte-level tokens each in Qwen1.5's vocabulary; ，并 is one token
REAL_PLAN = '寻找龘；拿起靐。寻找物体，龘；拿起物体，并靐'


@pytest.fixture(scope='module')
def qwen_backend(qwen_vocab_model):
    """Return the random-weight tiny model with Qwen1.5's tokenizer, fast path, no grammar."""
    return _load(qwen_vocab_model, '', False, fast_path='on')


def _byte_ranges(text, character_spans):
    def offset(index):
        return len(text[:index].encode('utf-8'))
    return [(offset(a), offset(b)) for a, b in character_spans]


def test_each_step_gets_the_tokens_that_hold_its_bytes_on_real_merges(qwen_backend):
    tokenizer = qwen_backend.tokenizer
    ids = tokenizer.encode(REAL_PLAN, add_special_tokens=False)
    pieces = _pieces(tokenizer, ids)
    assert b'\xe9\xbe' in pieces and '，并'.encode() in pieces  # a split 龘, a joined separator
    token_ranges, start = [], 0
    for piece in pieces:
        token_ranges.append((start, start + len(piece)))
        start += len(piece)
    steps = [_byte_ranges(REAL_PLAN, step) for step in step_spans(REAL_PLAN)]
    for lowest in range(len(ids)):  # each token in turn is the least likely one
        logprobs = [math.log(0.9)] * len(ids) + [math.log(0.95)]  # the stop token last
        logprobs[lowest] = math.log(0.1)
        generation = qwen_backend._generation(ids, True, logprobs, 0, {})
        assert generation.text == REAL_PLAN
        plan = parse_plan(generation.text)
        assign_step_confidences(plan, generation.token_probabilities)
        a, b = token_ranges[lowest]
        expected = [0.1 if any(a < end and b > begin for begin, end in step) else 0.9
                    for step in steps]
        assert [step.confidence for step in plan.steps] == pytest.approx(expected), (
            lowest, pieces[lowest].decode('utf-8', 'replace'))


def test_token_spans_on_real_merges(qwen_backend):
    tokenizer = qwen_backend.tokenizer
    for text in (REAL_PLAN, '把龘放到靐的桌子上', '麤。拿起物体，𠮷😀'):
        ids = tokenizer.encode(text, add_special_tokens=False) + qwen_backend.stop_ids[:1]
        assert qwen_backend._token_spans(ids, text) == _expected_spans(_pieces(tokenizer, ids))


def test_a_random_model_on_real_merges_reports_its_tokens(qwen_backend):
    # unconstrained, the random model writes byte tokens, rare characters and whitespace
    for command in COMMANDS[:2]:
        generation = qwen_backend.generate([command], PROMPT, GREEDY)[0]
        ids = qwen_backend.encode(command, PROMPT)
        result = qwen_backend.decoder.decode(ids, GREEDY.max_new_tokens)
        answer = result.tokens + (qwen_backend.stop_ids[:1] if result.finished else [])
        pieces = _pieces(qwen_backend.tokenizer, answer)
        got = generation.token_probabilities
        expected_text = b''.join(pieces).decode('utf-8', 'replace')
        assert generation.text == expected_text and len(got) == len(answer)
        if '\ufffd' not in expected_text:  # valid UTF-8: every span from the bytes alone
            assert [(start, end) for start, end, _ in got] == _expected_spans(pieces)
        with torch.no_grad():
            logits = qwen_backend.model(input_ids=torch.tensor([ids + answer])).logits[0]
        logprobs = torch.log_softmax(logits[len(ids) - 1:-1].float(), dim=-1)
        assert [p for _, _, p in got] == pytest.approx(
            [math.exp(logprobs[k, token].item()) for k, token in enumerate(answer)], rel=2e-3)
