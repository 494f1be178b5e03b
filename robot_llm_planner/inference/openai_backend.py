"""
The remote backend: an OpenAI-compatible server, for a fleet that shares one GPU server.

vLLM serves the base model with one LoRA adapter per robot type (``--enable-lora
--lora-modules NAME=PATH``; ``remote.model`` picks one); ``llamafactory-cli api`` serves one
model. ``remote.endpoint`` says how a command is sent:

- ``completions``: the planner's own prompt, the exact text the model was trained on, goes to
  ``/v1/completions``; the server's chat template is never used. Needs vLLM's ``/tokenize``.
- ``chat``: chat messages go to ``/v1/chat/completions`` and the server's chat template renders
  them. Where the server has ``/tokenize`` (vLLM), configure checks that the rendering is the
  training prompt token for token and fails, naming the first difference, when it is not.
- ``auto`` (default): ``completions`` where the server has ``/tokenize``, else ``chat``.

Confidence means the same as on the local backend (docs/confidence.md): the lowest
probability the model gave a token of the answer, the stop token included, before the plan
grammar's mask. vLLM reports log-probabilities after its grammar mask, so when a grammar was
sent the answer's tokens are scored again without one (``prompt_logprobs`` over the prompt and
the answer: a prefill, no decoding). ``llamafactory-cli api`` gives no log-probabilities: no
confidence.
"""

from concurrent.futures import ThreadPoolExecutor
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

from robot_llm_planner.core.backend import Backend, Generation, GenerationConfig, RemoteError
from robot_llm_planner.core.confidence import character_spans
from robot_llm_planner.core.prompt import IM_END, IM_START, PromptBuilder
from robot_llm_planner.core.settings import REMOTE_ENDPOINTS as ENDPOINTS
from robot_llm_planner.inference.json_client import JsonClient, ServerRefused

MAX_CONCURRENT_REQUESTS = 16
# The command whose prompt configure compares (any command renders the same template).
PROBE_COMMAND = '帮我拿一瓶水。'


class OpenAIBackend(Backend):
    """Plan through an OpenAI-compatible server's completions or chat completions."""

    name = 'openai'

    def __init__(self, base_url: str, model: str, api_key_env: str = '',
                 timeout_s: float = 30.0, retries: int = 2, retry_backoff_s: float = 0.5,
                 grammar=None, endpoint: str = 'auto') -> None:
        """
        Talk to ``base_url`` (e.g. http://gpu-server:8000/v1) asking for ``model``.

        ``grammar`` (optional :class:`~robot_llm_planner.inference.grammar.PlanGrammar`) is sent
        as a structured-outputs grammar to servers that support it (vLLM). ``endpoint`` is one
        of :data:`ENDPOINTS`.
        """
        self.client = JsonClient(base_url, api_key_env, timeout_s, retries, retry_backoff_s)
        self.model = model
        self.grammar = grammar
        self._grammar_fields = grammar.guided_request() if grammar is not None else {}
        self.endpoint = endpoint
        self.served_endpoint = ''  # the endpoint in use, once warm_up has looked at the server
        self.prompt_check = ''     # what configure found of the served prompt
        self._stop_ids: List[int] = []  # known where the server tokenizes (vLLM's /tokenize)

    @property
    def base_url(self) -> str:
        """Return the server URL in use."""
        return self.client.base_url

    def describe(self) -> Dict[str, str]:
        """Return the backend, server, model name and endpoint (never the key)."""
        described = {'backend': self.name, 'base': self.base_url, 'adapter': self.model}
        if self.served_endpoint:
            described['endpoint'] = self.served_endpoint
        if self.prompt_check:
            described['prompt_check'] = self.prompt_check
        return described

    def placement(self) -> Dict[str, str]:
        """Return where the model runs: on the server (its dtype is the server's business)."""
        return {'device': 'remote', 'dtype': ''}

    def load(self) -> None:
        """Check the settings and that the server answers ``GET /models`` (with the key)."""
        if not self.base_url.startswith(('http://', 'https://')):
            raise RemoteError('remote.base_url must start with http:// or https://, got %r'
                              % self.base_url)
        if not self.model:
            raise RemoteError('remote.model is empty: set the model (or LoRA) name the server '
                              'serves')
        if self.endpoint not in ENDPOINTS:
            raise RemoteError('remote.endpoint must be one of %s, got %r'
                              % (', '.join(ENDPOINTS), self.endpoint))
        env = self.client.api_key_env
        if env and not os.environ.get(env):
            raise RemoteError('remote.api_key_env names %s but that environment variable is '
                              'not set' % env)
        self.client.request('GET', '/models')

    def warm_up(self, prompt: PromptBuilder) -> None:
        """
        Choose the endpoint and check that the server serves the training prompt.

        Raises a RemoteError naming the first difference when the server's chat template
        renders another prompt (``chat``), or when its tokenizer does not know the template's
        special tokens (``completions``).
        """
        probe = prompt.text(PROBE_COMMAND)
        self._stop_ids = []
        try:
            served = self.client.request('POST', '/tokenize', {
                'model': self.model, 'prompt': probe, 'add_special_tokens': False,
                'return_token_strs': True}, at_root=True)
        except ServerRefused as exc:
            if not exc.missing_route():
                raise  # e.g. vLLM: the model remote.model names does not exist
            if self.endpoint == 'completions':
                raise RemoteError('remote.endpoint is completions, but remote server %s has no '
                                  '/tokenize (vLLM has): set remote.endpoint to chat or auto'
                                  % self.base_url) from None
            self.served_endpoint = 'chat'
            self.prompt_check = ('not checked: the server has no /tokenize; it must render '
                                 'chat messages with the training template')
            return
        ids = _int_list(served.get('tokens'), 'tokens of /tokenize')
        strings = _str_list(served.get('token_strs'), 'token_strs of /tokenize')
        self._stop_ids = _special_token_ids(ids, strings, self.base_url)
        self.served_endpoint = 'chat' if self.endpoint == 'chat' else 'completions'
        if self.served_endpoint == 'chat':
            self._check_chat_template(prompt, probe, ids)
            self.prompt_check = 'the chat template renders the training prompt (%d tokens)' \
                % len(ids)
        else:
            self.prompt_check = 'the planner sends the training prompt (%d tokens)' % len(ids)

    def _check_chat_template(self, prompt: PromptBuilder, probe: str, ids: List[int]) -> None:
        rendered = self.client.request('POST', '/tokenize', {
            'model': self.model, 'messages': prompt.messages(PROBE_COMMAND),
            'add_generation_prompt': True, 'add_special_tokens': False}, at_root=True)
        chat_ids = _int_list(rendered.get('tokens'), 'tokens of /tokenize')
        if chat_ids == ids:
            return
        text = self.client.request('POST', '/detokenize', {
            'model': self.model, 'tokens': chat_ids}, at_root=True).get('prompt', '')
        text = str(text)
        if text == probe:
            difference = 'the same text in other tokens'
        else:
            at = next((i for i, (a, b) in enumerate(zip(probe, text)) if a != b),
                      min(len(probe), len(text)))
            difference = 'from character %d the server has %r where the planner has %r' % (
                at, text[at:at + 40], probe[at:at + 40])
        raise RemoteError(
            'the server renders another prompt than the model was trained on (its chat '
            'template differs): %s; start vLLM with the training chat template '
            '(--chat-template) or set remote.endpoint to completions' % difference)

    def generate(self, commands: List[str], prompt: PromptBuilder,
                 config: GenerationConfig) -> List[Generation]:
        """
        Send one request per command, all at once (the server batches them).

        A command whose request fails gets a Generation with ``error`` set; when every
        request fails, the first failure is raised.
        """
        if len(commands) == 1:
            return [self._complete(commands[0], prompt, config)]
        with ThreadPoolExecutor(min(len(commands), MAX_CONCURRENT_REQUESTS)) as pool:
            futures = [pool.submit(self._complete, command, prompt, config)
                       for command in commands]
        generations, failures = [], []
        for future in futures:
            try:
                generations.append(future.result())
            except Exception as exc:  # RemoteError, or an answer this code could not read
                failures.append(exc)
                text = str(exc) if isinstance(exc, RemoteError) \
                    else '%s: %s' % (type(exc).__name__, exc)
                generations.append(Generation('', finished=False, error=text))
        if len(failures) == len(commands):
            raise failures[0]
        return generations

    def _request_body(self, command: str, prompt: PromptBuilder,
                      config: GenerationConfig) -> dict:
        body = {'model': self.model, 'max_tokens': config.max_new_tokens, 'stream': False}
        if self.served_endpoint == 'completions':
            body.update(prompt=prompt.text(command), logprobs=0, add_special_tokens=False)
        else:
            body.update(messages=prompt.messages(command), logprobs=True)
        if self._stop_ids:  # vLLM: stop where training did; the token ids, to score them again
            body.update(stop_token_ids=self._stop_ids, return_token_ids=True)
        if config.do_sample:
            body.update(temperature=config.temperature, top_p=config.top_p)
        else:
            body['temperature'] = 0.0  # greedy on vLLM and on LLaMA-Factory's api
        body.update(self._grammar_fields)
        return body

    def _complete(self, command: str, prompt: PromptBuilder,
                  config: GenerationConfig) -> Generation:
        body = self._request_body(command, prompt, config)
        chat = 'messages' in body
        started = time.perf_counter()
        answer = self.client.request('POST', '/chat/completions' if chat else '/completions',
                                     body)
        try:
            choice = answer['choices'][0]
            text = choice['message']['content'] if chat else choice['text']
            if not isinstance(text, str):
                raise TypeError('the text is %s' % type(text).__name__)
        except (KeyError, IndexError, TypeError) as exc:
            raise RemoteError('remote server %s answered without choices[0].%s (%s): %s'
                              % (self.base_url, 'message.content' if chat else 'text', exc,
                                 str(answer)[:200])) from exc
        usage = answer.get('usage')
        usage = usage if isinstance(usage, dict) else {}  # only statistics: never fatal
        tokens = _answer_tokens(choice.get('logprobs'), chat)
        ids = choice.get('token_ids')
        ids = ids if isinstance(ids, list) else None
        stats = {}
        if tokens is not None and ids is not None and self._grammar_fields:
            scoring = time.perf_counter()
            tokens = self._score(answer, choice, tokens[0])
            stats['scoring_ms'] = (time.perf_counter() - scoring) * 1000.0
        confidence, token_probabilities = None, None
        if tokens is not None:
            probabilities = [math.exp(value) for value in tokens[1]]
            confidence = min(probabilities)
            spans = self._spans(text, tokens[0], ids)
            if spans is not None:
                token_probabilities = [(start, end, probability) for (start, end), probability
                                       in zip(spans, probabilities)]
        stopped = bool(ids) and ids[-1] in self._stop_ids
        return Generation(text, tokens=len(ids) - stopped if ids is not None
                          else _count(usage.get('completion_tokens')),
                          prompt_tokens=_count(usage.get('prompt_tokens')),
                          finished=stopped or choice.get('finish_reason') != 'length',
                          stats=dict(stats, request_ms=(time.perf_counter() - started) * 1000.0),
                          confidence=confidence, token_probabilities=token_probabilities)

    def _score(self, answer: dict, choice: dict, pieces: List[str]):
        """
        Return the answer's pieces and log-probabilities as the model gives them.

        vLLM takes its log-probabilities after its grammar mask; the planner's confidence is
        the model's own, before it: the server scores prompt and answer (stop token
        included, where there is one) again, without a grammar.
        """
        prompt_ids = choice.get('prompt_token_ids') or answer.get('prompt_token_ids')
        prompt_ids = _int_list(prompt_ids, 'prompt_token_ids')
        answer_ids = _int_list(choice.get('token_ids'), 'token_ids')
        scored = self.client.request('POST', '/completions', {
            'model': self.model, 'prompt': prompt_ids + answer_ids, 'max_tokens': 1,
            'temperature': 0.0, 'prompt_logprobs': 0})
        rows = scored.get('prompt_logprobs')
        if rows is None and scored.get('choices'):
            rows = scored['choices'][0].get('prompt_logprobs')
        if not isinstance(rows, list) or len(rows) != len(prompt_ids) + len(answer_ids):
            raise RemoteError('remote server %s scored the answer without one prompt_logprobs '
                              'entry per token' % self.base_url)
        values = []
        for row, token in zip(rows[len(prompt_ids):], answer_ids):
            entry = row.get(str(token)) if isinstance(row, dict) else None
            value = entry.get('logprob') if isinstance(entry, dict) else None
            if not _is_number(value):
                raise RemoteError('remote server %s scored token %d without a log-probability'
                                  % (self.base_url, token))
            values.append(min(0.0, float(value)))
        return pieces[:len(values)] + [''] * (len(values) - len(pieces)), values

    def _spans(self, text: str, pieces: list, ids) -> Optional[List[Tuple[int, int]]]:
        """
        Return the characters of ``text`` each token falls in (:func:`character_spans`).

        Raw bytes (some servers list them) give them at once. vLLM's token texts give each
        character to the token that completes it; for a token holding part of a character
        (its text is not the text's next characters) the server decodes the answer up to it
        (``/detokenize``): the characters done so far, and one begun when the decoding ends
        in U+FFFD. None where the pieces do not spell the text.
        """
        if any(isinstance(piece, bytes) for piece in pieces):
            return _byte_spans(text, pieces)
        spans: List[Tuple[int, int]] = []
        offset = 0
        for index, piece in enumerate(pieces):
            if offset >= len(text):
                spans.append((len(text), len(text)))  # the stop token
            elif piece and text.startswith(piece, offset):
                spans.append((offset, offset + len(piece)))
                offset += len(piece)
            elif ids is not None and len(ids) > index:
                try:
                    done = str(self.client.request('POST', '/detokenize', {
                        'model': self.model, 'tokens': ids[:index + 1]},
                        at_root=True).get('prompt'))
                except RemoteError:
                    return None  # no step confidences, but the plan and its confidence stand
                begun = done.endswith('\ufffd') and not text.startswith(done)
                done = done[:-1] if begun else done
                if len(done) < offset or not text.startswith(done):
                    return None
                spans.append((offset, min(len(done) + begun, len(text))))
                offset = len(done)
            else:
                return None
        return spans if offset == len(text) else None


def _special_token_ids(ids: Sequence[int], strings: Sequence, base_url: str) -> List[int]:
    """Return the stop token's id; the template's special tokens must be single tokens."""
    found = {IM_START: set(), IM_END: set()}
    for token, string in zip(ids, strings):
        if string in found:
            found[string].add(token)
    if len(strings) != len(ids) or not all(len(seen) == 1 for seen in found.values()):
        raise RemoteError('the tokenizer of remote server %s does not read %s and %s as single '
                          'tokens: it is not the tokenizer the model was trained with'
                          % (base_url, IM_START, IM_END))
    return sorted(found[IM_END])


def _answer_tokens(logprobs, chat: bool):
    """
    Return the server's per-token pieces and log-probabilities, None if it gave none.

    A piece is the token's text, or its bytes where a chat answer lists them and they are
    not just the text's bytes (a server that reports the raw bytes of a token holding part of
    a character).
    """
    if not isinstance(logprobs, dict):
        return None
    if chat:
        content = logprobs.get('content')
        if not isinstance(content, list) or not content or \
                not all(isinstance(entry, dict) for entry in content):
            return None
        pieces = [entry.get('token') for entry in content]
        values = [entry.get('logprob') for entry in content]
        spelled = [entry.get('bytes') for entry in content]
        if all(_is_bytes(item) for item in spelled):
            pieces = [piece if isinstance(piece, str) and bytes(item) == piece.encode('utf-8')
                      else bytes(item) for piece, item in zip(pieces, spelled)]
    else:
        pieces, values = logprobs.get('tokens'), logprobs.get('token_logprobs')
        if not isinstance(pieces, list) or not isinstance(values, list) or \
                len(pieces) != len(values) or not pieces:
            return None
    if not all(_is_number(value) for value in values):
        return None  # an answer this code cannot read is no evidence either way
    pieces = [piece if isinstance(piece, (str, bytes)) else '' for piece in pieces]
    return pieces, [min(0.0, float(value)) for value in values]


def _byte_spans(text: str, pieces: list) -> Optional[List[Tuple[int, int]]]:
    """Return the characters each token's bytes fall in; None if they do not spell ``text``."""
    spans, decoded = character_spans([piece if isinstance(piece, bytes)
                                      else piece.encode('utf-8') for piece in pieces])
    if not decoded.startswith(text) or any(start < len(text) < end for start, end in spans):
        return None  # not this text, or the text ends inside a token
    return [(min(start, len(text)), min(end, len(text))) for start, end in spans]


def _is_bytes(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(byte, int) and not isinstance(byte, bool) and 0 <= byte < 256
        for byte in value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        not math.isnan(value)


def _int_list(value, what: str) -> List[int]:
    if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise RemoteError('the remote server answered without a list of %s' % what)
    return value


def _str_list(value, what: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RemoteError('the remote server answered without a list of %s' % what)
    return value


def _count(value) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
