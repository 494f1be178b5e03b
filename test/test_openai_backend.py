"""
The remote backend against a real `llamafactory-cli api` server, and its failure modes.

The failure-mode servers are real HTTP servers on 127.0.0.1 (test/doubles.py, scripted) that
answer slowly, with garbage or with errors, as a broken or overloaded inference server would.
"""

import json
import math
import os
import threading

from conftest import API_KEY
from doubles import CUT, FakeOpenAIServer
from helpers import codes, free_port
import jsonschema
import pytest

from robot_llm_planner.core.backend import GenerationConfig, RemoteError
from robot_llm_planner.core.planner import Planner
from robot_llm_planner.core.prompt import PromptBuilder
from robot_llm_planner.core.skills import package_share_path, SkillSet
from robot_llm_planner.inference.grammar import PlanGrammar
from robot_llm_planner.inference.openai_backend import OpenAIBackend
from robot_llm_planner.inference.transformers_backend import TransformersBackend

COMMANDS = ['帮我拿一瓶水。', '把红色的杯子放到厨房的桌子上', '去客厅']


@pytest.mark.slow
def test_remote_and_local_backends_give_the_same_plans(llamafactory_api, api_key, tiny_model,
                                                       tiny_adapter):
    skills = SkillSet.load()
    config = GenerationConfig(max_new_tokens=24)
    remote = OpenAIBackend(llamafactory_api, 'tiny', api_key)
    local = TransformersBackend(tiny_model, tiny_adapter, device='cpu', fast_path='off')
    plans = []
    for backend in (remote, local):
        planner = Planner(backend, skills, PromptBuilder(), config)
        planner.load()
        plans.append([(r.plan.raw_output, r.status, [s.action for s in r.plan.steps])
                      for r in planner.plan_batch(COMMANDS)])
    assert plans[0] == plans[1]
    assert all(raw for raw, _, _ in plans[0])


@pytest.mark.slow
def test_wrong_key_is_refused_without_leaking_it(llamafactory_api, monkeypatch):
    monkeypatch.setenv('PLANNER_TEST_KEY', 'sk-wrong-key-abcdef')
    backend = OpenAIBackend(llamafactory_api, 'tiny', 'PLANNER_TEST_KEY', retries=0)
    with pytest.raises(RemoteError, match='HTTP 401') as info:
        backend.load()
    assert 'sk-wrong-key' not in str(info.value)
    assert 'sk-wrong-key' not in json.dumps(backend.describe())


def _completion(text):
    return json.dumps({'choices': [{'message': {'role': 'assistant', 'content': text},
                                    'finish_reason': 'stop'}],
                       'usage': {'prompt_tokens': 30, 'completion_tokens': 9}},
                      ensure_ascii=False).encode('utf-8')


@pytest.fixture
def server():
    """Yield a function that starts a FakeOpenAIServer replying ``answers`` in turn."""
    servers = []

    def start(*answers, by_command=None):
        servers.append(FakeOpenAIServer().script(*answers))
        servers[-1].raw.update(by_command or {})
        return servers[-1]
    yield start
    for item in servers:
        item.close()


PLAN = '去客厅。移动到，客厅'


def _generate(backend):
    return backend.generate(['去客厅'], PromptBuilder(), GenerationConfig(max_new_tokens=16))[0]


def test_request_body_and_key_header(server, api_key):
    srv = server((0, 200, _completion(PLAN)))
    generation = _generate(OpenAIBackend(srv.url, 'lora-task2', api_key))
    assert generation.text == PLAN and generation.tokens == 9
    assert 'scoring_ms' not in generation.stats and generation.stats['request_ms'] > 0
    method, path, headers, body = srv.received[0]
    assert (method, path) == ('POST', '/v1/chat/completions')
    assert headers['Authorization'] == 'Bearer ' + API_KEY
    body = json.loads(body)
    assert body['model'] == 'lora-task2' and body['temperature'] == 0.0
    assert body['messages'][1] == {'role': 'user', 'content': '去客厅'}
    assert body['max_tokens'] == 16


def test_unreachable_server():
    backend = OpenAIBackend('http://127.0.0.1:%d/v1' % free_port(), 'm', retries=1,
                            retry_backoff_s=0.01)
    with pytest.raises(RemoteError, match=r'unreachable .* \(after 2 attempts\)'):
        _generate(backend)


def test_timeout(server):
    srv = server((1.0, 200, _completion(PLAN)))
    backend = OpenAIBackend(srv.url, 'm', timeout_s=0.2, retries=0)
    with pytest.raises(RemoteError, match='did not answer .* within remote.timeout_s = 0.2 s'):
        _generate(backend)


@pytest.mark.parametrize('body,expected', [
    (b'<html>502 Bad Gateway</html>', 'not a JSON object'),
    (b'[1, 2]', 'not a JSON object'),
    (b'{"choices": []}', 'without choices\\[0\\].message.content'),
    (b'{"choices": [{"message": {"content": null}}]}', 'without choices'),
])
def test_garbage_answers(server, body, expected):
    backend = OpenAIBackend(server((0, 200, body)).url, 'm', retries=0)
    with pytest.raises(RemoteError, match=expected):
        _generate(backend)


def test_retries_server_errors_then_succeeds(server):
    srv = server((0, 503, b'{"error": "loading"}'), (0, 200, _completion(PLAN)))
    backend = OpenAIBackend(srv.url, 'm', retries=2, retry_backoff_s=0.01)
    assert _generate(backend).text == PLAN
    assert len(srv.requests) == 2


def test_a_no_task_answer_is_a_rejection_with_its_reason(server):
    srv = server((0, 200, _completion(' 无法执行')))
    planner = Planner(OpenAIBackend(srv.url, 'lora-x'), SkillSet.load(), PromptBuilder(),
                      GenerationConfig(max_new_tokens=16))
    result = planner.plan('今天天气怎么样？')
    assert result.status == 'rejected' and result.plan.no_task
    message = result.message('q1', {'backend': 'openai'})
    assert codes(message) == ['not_a_task']
    with open(package_share_path('config', 'action_plan.schema.json'), encoding='utf-8') as f:
        jsonschema.Draft202012Validator(json.load(f)).validate(message)
    assert message['steps'] == [] and message['raw_output'] == ' 无法执行'
    assert planner.plan('今天天气怎么样？').timing['cached'] is True  # greedy: asked once
    assert len(srv.requests) == 1
    truncated = json.dumps({'choices': [{'message': {'content': '无法执行'},
                                         'finish_reason': 'length'}]}, ensure_ascii=False)
    cut = Planner(OpenAIBackend(server((0, 200, truncated.encode())).url, 'm'), SkillSet.load(),
                  PromptBuilder(), GenerationConfig(max_new_tokens=4)).plan('你好')
    assert cut.status == 'invalid'  # the answer may have gone on: not a clear no
    assert {e['code'] for e in cut.message('q2')['errors']} == {'not_a_task', 'truncated_output'}


@pytest.mark.parametrize('grounded', [True, False])
def test_arguments_not_in_the_command_make_a_plan_invalid(server, grounded):
    srv = server((0, 200, _completion('寻找一瓶水；拿起一瓶水。寻找物体，一瓶水；拿起物体，一瓶水')))
    planner = Planner(OpenAIBackend(srv.url, 'm'), SkillSet.load(), PromptBuilder(),
                      GenerationConfig(max_new_tokens=64), grounded_arguments=grounded)
    copied, made_up = planner.plan_batch(['帮我拿一瓶水。', '帮我拿可乐'])
    assert copied.status == 'ok' and copied.errors == []
    if grounded:
        assert made_up.status == 'invalid'
        assert [e.code for e in made_up.errors] == ['argument_not_in_command'] * 2
    else:
        assert made_up.status == 'ok' and made_up.errors == []


def test_client_errors_are_not_retried(server):
    srv = server((0, 404, b'{"error": "model lora-x not found"}'))
    backend = OpenAIBackend(srv.url, 'lora-x', retries=3, retry_backoff_s=0.01)
    with pytest.raises(RemoteError, match='HTTP 404 .*model lora-x not found'):
        _generate(backend)
    assert len(srv.requests) == 1


def test_truncated_answer_is_reported(server):
    body = json.dumps({'choices': [{'message': {'content': '去客厅'}, 'finish_reason': 'length'}]})
    generation = _generate(OpenAIBackend(server((0, 200, body.encode())).url, 'm'))
    assert not generation.finished


@pytest.mark.parametrize('url,model,env,expected', [
    ('gpu:8000/v1', 'm', '', 'must start with http'),
    ('http://gpu:8000/v1', '', '', 'remote.model is empty'),
    ('http://gpu:8000/v1', 'm', 'PLANNER_UNSET_KEY_VAR', 'PLANNER_UNSET_KEY_VAR but that'),
])
def test_bad_settings(url, model, env, expected):
    os.environ.pop('PLANNER_UNSET_KEY_VAR', None)
    with pytest.raises(RemoteError, match=expected):
        OpenAIBackend(url, model, env).load()


def test_redirects_are_refused_without_sending_the_key_on(server, api_key):
    target = server((0, 200, _completion(PLAN)))
    moved = server((0, 302, b'', {'Location': target.url + '/chat/completions'}))
    with pytest.raises(RemoteError, match='redirect \\(HTTP 302\\) to %s' % target.url):
        _generate(OpenAIBackend(moved.url, 'm', api_key, retries=2))
    assert len(moved.requests) == 1 and target.requests == []


def test_an_answer_broken_off_is_retried(server):
    srv = server((0, CUT, _completion(PLAN)[:20]), (0, 200, _completion(PLAN)))
    backend = OpenAIBackend(srv.url, 'm', retries=1, retry_backoff_s=0.01)
    assert _generate(backend).text == PLAN and len(srv.requests) == 2
    broken = OpenAIBackend(server((0, CUT, b'{"choi')).url, 'm', retries=1,
                           retry_backoff_s=0.01)
    with pytest.raises(RemoteError, match='broke off its answer .*IncompleteRead') as info:
        _generate(broken)
    assert info.value.transient  # the node retries loading, as for a server that is down


def test_a_batch_is_sent_at_once_and_one_failure_fails_one_command(server):
    srv = server((0, 200, _completion(PLAN)), by_command={'坏': (0, 404, b'{"error": "bad"}')})
    srv.barrier = threading.Barrier(3, timeout=10)
    planner = Planner(OpenAIBackend(srv.url, 'm', retries=0), SkillSet.load(), PromptBuilder(),
                      GenerationConfig(max_new_tokens=16), grounded_arguments=False)
    results = planner.plan_batch(['去客厅', '坏', '去客厅吧'])
    assert srv.most_in_flight == 3  # concurrent, so the server can batch them
    assert [r.status for r in results] == ['ok', 'error', 'ok']
    assert [e.code for e in results[1].errors] == ['engine_error']
    assert 'HTTP 404' in results[1].errors[0].message
    srv.barrier = None
    backend = OpenAIBackend(srv.url, 'm', retries=0)
    with pytest.raises(RemoteError, match='HTTP 404'):  # nothing succeeded: the batch fails
        backend.generate(['坏', '坏'], PromptBuilder(), GenerationConfig(max_new_tokens=16))


def test_odd_usage_figures_do_not_lose_the_plan(server):
    body = json.dumps({'choices': [{'message': {'content': PLAN}, 'finish_reason': 'stop'}],
                       'usage': {'completion_tokens': 'n/a', 'prompt_tokens': None}})
    generation = _generate(OpenAIBackend(server((0, 200, body.encode())).url, 'm'))
    assert generation.text == PLAN and generation.tokens == 0
    listed = json.dumps({'choices': [{'message': {'content': PLAN}}], 'usage': [1, 2]})
    assert _generate(OpenAIBackend(server((0, 200, listed.encode())).url, 'm')).text == PLAN


def _completion_with_logprobs(text, logprobs):
    answer = json.loads(_completion(text))
    answer['choices'][0]['logprobs'] = logprobs
    return json.dumps(answer, ensure_ascii=False).encode('utf-8')


@pytest.mark.parametrize('logprobs,expected', [
    ({'content': [{'token': '去', 'logprob': -0.01}, {'token': '客', 'logprob': -1.2},
                  {'token': '厅', 'logprob': 0.0}]}, math.exp(-1.2)),
    (None, None),                                     # a server without log-probabilities
    ({'content': []}, None),
    ({'content': [{'token': '去', 'logprob': 'low'}]}, None),   # unreadable: no evidence
    ({'content': [{'token': '去', 'logprob': float('nan')}]}, None),
    ('garbage', None),
])
def test_confidence_is_the_lowest_token_probability_the_server_gives(
        server, logprobs, expected):
    srv = server((0, 200, _completion_with_logprobs(PLAN, logprobs)))
    generation = _generate(OpenAIBackend(srv.url, 'm'))
    assert json.loads(srv.received[0][3])['logprobs'] is True
    assert generation.text == PLAN
    if expected is None:
        assert generation.confidence is None
    else:
        assert generation.confidence == pytest.approx(expected)


def test_a_remote_plan_below_min_confidence_is_invalid(server):
    low = {'content': [{'token': '去', 'logprob': math.log(0.2)}]}
    srv = server((0, 200, _completion_with_logprobs(PLAN, low)))
    results = {}
    for threshold in (0.1, 0.3):
        planner = Planner(OpenAIBackend(srv.url, 'm'), SkillSet.load(), cache_size=0,
                          min_confidence=threshold)
        results[threshold] = planner.plan('去客厅')
    assert results[0.1].status == 'ok' and results[0.1].confidence == pytest.approx(0.2)
    assert results[0.3].status == 'invalid'
    assert [e.code for e in results[0.3].errors] == ['low_confidence']
    assert results[0.3].message('x')['confidence'] == 0.2


@pytest.mark.slow
def test_llamafactory_api_gives_no_confidence_and_is_never_refused_for_it(
        llamafactory_api, api_key):
    # its request model has no logprobs: the field is ignored, the answer has none
    planner = Planner(OpenAIBackend(llamafactory_api, 'tiny', api_key), SkillSet.load(),
                      generation=GenerationConfig(max_new_tokens=24), min_confidence=1.0)
    planner.load()
    result = planner.plan('去客厅')
    assert result.confidence is None and result.plan.raw_output
    assert 'low_confidence' not in [e.code for e in result.errors]


def test_an_unsure_refusal_stays_a_refusal(server):
    # refusing is safe: min_confidence only ever stops plans from being executed
    unsure = {'content': [{'token': '无', 'logprob': math.log(0.05)}]}
    srv = server((0, 200, _completion_with_logprobs('无法执行', unsure)))
    planner = Planner(OpenAIBackend(srv.url, 'm'), SkillSet.load(), min_confidence=0.9)
    message = planner.plan('唱歌').message('r')
    assert message['status'] == 'rejected' and message['confidence'] == 0.05
    assert codes(message) == ['not_a_task']


def test_token_offsets_come_from_the_servers_token_texts_or_bytes(server):
    entries = [{'token': token, 'logprob': math.log(p), 'bytes': list(token.encode())}
               for token, p in (('去', 0.9), ('客厅', 0.5), ('。', 0.99), ('移动到', 0.8),
                                ('，', 0.95), ('客', 0.7), ('厅', 0.6))]
    expected = [(0, 1), (1, 3), (3, 4), (4, 7), (7, 8), (8, 9), (9, 10)]
    # the token texts (vLLM) or the bytes (servers that list raw bytes) give the same offsets
    for listed in (entries, [dict(e, bytes=None) for e in entries]):
        srv = server((0, 200, _completion_with_logprobs(PLAN, {'content': listed})))
        generation = _generate(OpenAIBackend(srv.url, 'm'))
        assert [(start, end) for start, end, _ in generation.token_probabilities] == expected
        assert [p for _, _, p in generation.token_probabilities] == pytest.approx(
            [0.9, 0.5, 0.99, 0.8, 0.95, 0.7, 0.6])
    result = Planner(OpenAIBackend(srv.url, 'm'), SkillSet.load()).plan('去客厅')
    assert [step['confidence'] for step in result.message('r')['steps']] == [0.5]
    # bytes, or texts without bytes, that do not spell the answer: no offsets, the confidence
    # stays
    for broken in ([dict(e, bytes=[65]) for e in entries],
                   [dict(e, token='x', bytes=None) for e in entries]):
        srv = server((0, 200, _completion_with_logprobs(PLAN, {'content': broken})))
        generation = _generate(OpenAIBackend(srv.url, 'm'))
        assert generation.token_probabilities is None
        assert generation.confidence == pytest.approx(0.5)


def test_a_token_holding_part_of_a_character_without_token_ids_gives_no_offsets(server):
    """
    The server (vLLM) lists such a token as '' and gives the character to the next token.

    Where it was, only the server can tell (it decodes the answer up to that token, as
    test_vllm shows); a server that gives no token ids gets no offsets rather than guesses.
    """
    entries = [{'token': token, 'logprob': math.log(p)}
               for token, p in (('去客厅。', 0.9), ('', 0.3), ('移动到，客厅', 0.8))]
    srv = server((0, 200, _completion_with_logprobs(PLAN, {'content': entries})))
    generation = _generate(OpenAIBackend(srv.url, 'm'))
    assert generation.token_probabilities is None
    assert generation.confidence == pytest.approx(0.3)


def test_a_stop_token_the_server_lists_ends_where_the_text_does(server):
    entries = [{'token': token, 'logprob': math.log(p), 'bytes': list(token.encode())}
               for token, p in (('去客厅。', 0.9), ('移动到，客厅', 0.8), ('<|im_end|>', 0.4))]
    srv = server((0, 200, _completion_with_logprobs(PLAN, {'content': entries})))
    generation = _generate(OpenAIBackend(srv.url, 'm'))
    assert [(start, end) for start, end, _ in generation.token_probabilities] == [
        (0, 4), (4, 10), (10, 10)]
    # but text that ends inside a token is not the answer's
    entries[1]['bytes'] = list('移动到，客厅吧'.encode())
    srv = server((0, 200, _completion_with_logprobs(PLAN, {'content': entries})))
    assert _generate(OpenAIBackend(srv.url, 'm')).token_probabilities is None


def test_a_server_tokenizer_without_the_templates_special_tokens_fails_configure(server):
    """Where the server tokenizes (vLLM's /tokenize), <|im_start|> must be one token."""
    models = json.dumps({'data': [{'id': 'm'}]}).encode()
    split = json.dumps({'tokens': [1, 2, 3], 'token_strs': ['<|im_', 'start|>', 'x']}).encode()
    srv = server((0, 200, models), (0, 200, split))
    with pytest.raises(RemoteError, match='does not read <.im_start.> and <.im_end.> as single'):
        Planner(OpenAIBackend(srv.url, 'm'), SkillSet.load()).load()
    assert [path for _, path, _, _ in srv.received] == ['/v1/models', '/tokenize']


def _vllm_configure_replies():
    """Return vLLM's answers at configure: its models, then the probe prompt's tokens."""
    strings = ['<|im_start|>', 'system', '<|im_end|>', '\n', '<|im_start|>', 'user',
               '<|im_end|>', '\n', '<|im_start|>', 'assistant']
    return [(0, 200, json.dumps({'data': [{'id': 'm'}]}).encode()),
            (0, 200, json.dumps({'tokens': [1, 5, 2, 6, 1, 7, 2, 6, 1, 8],
                                 'token_strs': strings}).encode())]


def test_on_vllm_the_training_prompt_goes_to_completions_and_the_answer_is_scored_again(server):
    """
    The request and the scoring as vLLM sees them (the real server: test_vllm.py).

    The answer's second token holds the first bytes of 移 (vLLM lists it as ''): the server
    decodes the answer up to it to place it.
    """
    text = PLAN
    answer = {'choices': [{
        'text': text, 'finish_reason': 'stop', 'token_ids': [10, 12, 11, 2],
        'prompt_token_ids': [1, 5, 2], 'logprobs': {
            'tokens': ['去客厅。', '', '移动到，客厅', ''], 'token_logprobs': [0.0] * 4}}],
        'usage': {'prompt_tokens': 3, 'completion_tokens': 4}}
    rows = [None, {'5': {'logprob': -1.0}}, {'2': {'logprob': -1.0}}, {'10': {'logprob': -0.1}},
            {'12': {'logprob': -0.9}}, {'11': {'logprob': -0.2}}, {'2': {'logprob': -0.3}}]
    srv = server(*_vllm_configure_replies(),
                 (0, 200, json.dumps(answer, ensure_ascii=False).encode()),
                 (0, 200, json.dumps({'choices': [{'prompt_logprobs': rows}]}).encode()),
                 (0, 200, json.dumps({'prompt': '去客厅。\ufffd'}, ensure_ascii=False).encode()))
    skills = SkillSet.load()
    backend = OpenAIBackend(srv.url, 'm', grammar=PlanGrammar(skills))
    planner = Planner(backend, skills)
    planner.load()
    assert backend.describe()['endpoint'] == 'completions'
    generation = backend.generate(['去客厅'], PromptBuilder(), GenerationConfig(64))[0]
    paths = [path for _, path, _, _ in srv.received]
    assert paths == ['/v1/models', '/tokenize', '/v1/completions', '/v1/completions',
                     '/detokenize']
    request, scoring = (json.loads(srv.received[i][3]) for i in (2, 3))
    assert request['prompt'] == PromptBuilder().text('去客厅')
    assert (request['stop_token_ids'], request['add_special_tokens'],
            request['return_token_ids']) == ([2], False, True)
    assert 'grammar' in request['structured_outputs'] and 'messages' not in request
    assert (scoring['prompt'], scoring['prompt_logprobs'], scoring['max_tokens']) == (
        [1, 5, 2, 10, 12, 11, 2], 0, 1)
    assert 'structured_outputs' not in scoring
    assert json.loads(srv.received[4][3])['tokens'] == [10, 12]
    assert generation.confidence == pytest.approx(math.exp(-0.9))  # before the grammar's mask
    assert [(start, end) for start, end, _ in generation.token_probabilities] == [
        (0, 4), (4, 5), (4, 10), (10, 10)]
    assert generation.finished and generation.tokens == 3  # the stop token is not counted
    # the scoring request's own time, within the whole request's
    assert 0 < generation.stats['scoring_ms'] < generation.stats['request_ms']


@pytest.mark.parametrize('endpoint, reply, expected', [
    ('auto', (0, 404, b'{"error": {"message": "The model `m` does not exist."}}'),
     'does not exist'),
    ('completions', (0, 404, b'{"detail": "Not Found"}'), 'remote.endpoint is completions'),
])
def test_configure_names_a_model_the_server_lacks_or_an_endpoint_it_lacks(
        server, endpoint, reply, expected):
    srv = server(_vllm_configure_replies()[0], reply)
    with pytest.raises(RemoteError, match=expected):
        Planner(OpenAIBackend(srv.url, 'm', endpoint=endpoint), SkillSet.load()).load()
