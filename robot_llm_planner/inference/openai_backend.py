"""
The remote backend: an OpenAI-compatible chat-completions server.

For when the GPU is elsewhere or a fleet shares one server: vLLM (``--enable-lora``, the
adapter served under its own model name) or ``llamafactory-cli api``. The server applies the
chat template, so it must use the same one as training (LLaMA-Factory's api does; for vLLM
pass ``--chat-template`` if the model's own template differs). Uses only the standard library.

Every request asks for the answer's token log-probabilities (``logprobs``, part of the
OpenAI API); where the server gives them (vLLM does, ``llamafactory-cli api`` does not), the
lowest one is the answer's ``confidence``.

The API key is read from the environment variable named by ``api_key_env`` at each request and
never logged, published or put in an error message.
"""

from concurrent.futures import ThreadPoolExecutor
import http.client
import json
import math
import os
import socket
import time
from typing import Dict, List, Optional, Tuple
import urllib.error
import urllib.request

from robot_llm_planner.core.backend import Backend, Generation, GenerationConfig, RemoteError
from robot_llm_planner.core.confidence import character_spans
from robot_llm_planner.core.prompt import PromptBuilder

RETRYABLE_HTTP = (429, 500, 502, 503, 504)
MAX_CONCURRENT_REQUESTS = 16


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would send the API key on and turn a POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the redirect as an HTTPError


class OpenAIBackend(Backend):
    """Plan through ``POST {base_url}/chat/completions``."""

    name = 'openai'

    def __init__(self, base_url: str, model: str, api_key_env: str = '',
                 timeout_s: float = 30.0, retries: int = 2, retry_backoff_s: float = 0.5,
                 grammar=None) -> None:
        """
        Talk to ``base_url`` (e.g. http://gpu-server:8000/v1) asking for ``model``.

        ``grammar`` (optional :class:`~robot_llm_planner.inference.grammar.PlanGrammar`) is sent
        as a guided-decoding grammar to servers that support it (vLLM).
        """
        self.base_url = (base_url or '').rstrip('/')
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.retries = max(0, int(retries))
        self.retry_backoff_s = retry_backoff_s
        self.grammar = grammar
        self._opener = urllib.request.build_opener(_NoRedirect)

    def describe(self) -> Dict[str, str]:
        """Return the backend, server and model name (never the key)."""
        return {'backend': self.name, 'base': self.base_url, 'adapter': self.model}

    def placement(self) -> Dict[str, str]:
        """Return where the model runs: on the server (its dtype is the server's business)."""
        return {'device': 'remote', 'dtype': ''}

    def load(self) -> None:
        """Check the settings and that the server answers ``GET /models``."""
        if not self.base_url.startswith(('http://', 'https://')):
            raise RemoteError('remote.base_url must start with http:// or https://, got %r'
                              % self.base_url)
        if not self.model:
            raise RemoteError('remote.model is empty: set the model (or LoRA) name the server '
                              'serves')
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise RemoteError('remote.api_key_env names %s but that environment variable is '
                              'not set' % self.api_key_env)
        self._request('GET', '/models')

    def generate(self, commands: List[str], prompt: PromptBuilder,
                 config: GenerationConfig) -> List[Generation]:
        """
        Send one chat request per command, all at once (the server batches them).

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

    def _complete(self, command: str, prompt: PromptBuilder,
                  config: GenerationConfig) -> Generation:
        body = {'model': self.model, 'messages': prompt.messages(command),
                'max_tokens': config.max_new_tokens, 'stream': False, 'logprobs': True}
        if config.do_sample:
            body.update(temperature=config.temperature, top_p=config.top_p)
        else:
            body['temperature'] = 0.0  # greedy on vLLM and on LLaMA-Factory's api
        if self.grammar is not None:
            body.update(self.grammar.guided_request())
        started = time.perf_counter()
        answer = self._request('POST', '/chat/completions', body)
        try:
            choice = answer['choices'][0]
            text = choice['message']['content']
            if not isinstance(text, str):
                raise TypeError('content is %s' % type(text).__name__)
        except (KeyError, IndexError, TypeError) as exc:
            raise RemoteError('remote server %s answered without choices[0].message.content '
                              '(%s): %s' % (self.base_url, exc, _excerpt(answer))) from exc
        usage = answer.get('usage')
        usage = usage if isinstance(usage, dict) else {}  # only statistics: never fatal
        return Generation(text, tokens=_count(usage.get('completion_tokens')),
                          prompt_tokens=_count(usage.get('prompt_tokens')),
                          finished=choice.get('finish_reason') != 'length',
                          stats={'request_ms': (time.perf_counter() - started) * 1000.0},
                          confidence=_lowest_probability(choice.get('logprobs')),
                          token_probabilities=_token_probabilities(choice.get('logprobs'), text))

    def _request(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        url = self.base_url + path
        data = json.dumps(body, ensure_ascii=False).encode('utf-8') if body is not None else None
        headers = {'Content-Type': 'application/json', 'Accept': 'application/json'}
        key = os.environ.get(self.api_key_env, '') if self.api_key_env else ''
        if key:
            headers['Authorization'] = 'Bearer ' + key
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_backoff_s * (2 ** (attempt - 1)))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                if 300 <= exc.code < 400:
                    raise RemoteError(
                        'remote server %s answered %s %s with a redirect (HTTP %d) to %s: set '
                        'remote.base_url to the address it points to (redirects are not '
                        'followed: they would carry the API key elsewhere)'
                        % (self.base_url, method, path, exc.code,
                           exc.headers.get('Location', '(no Location)'))) from None
                detail = _excerpt(exc.read().decode('utf-8', 'replace'))
                last = RemoteError('remote server %s answered HTTP %d to %s %s: %s'
                                   % (self.base_url, exc.code, method, path, detail))
                if exc.code in RETRYABLE_HTTP:
                    continue
                raise last from None
            except http.client.HTTPException as exc:  # IncompleteRead, BadStatusLine, ...
                last = RemoteError('remote server %s broke off its answer to %s %s (%s)'
                                   % (self.base_url, method, path, type(exc).__name__))
                continue
            except (socket.timeout, TimeoutError):
                last = RemoteError('remote server %s did not answer %s %s within remote.timeout_s'
                                   ' = %g s' % (self.base_url, method, path, self.timeout_s))
                continue
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, 'reason', exc)
                last = RemoteError('remote server %s is unreachable (%s %s): %s'
                                   % (self.base_url, method, path, reason))
                continue
            try:
                answer = json.loads(raw.decode('utf-8'))
                if not isinstance(answer, dict):
                    raise ValueError('not a JSON object')
            except ValueError as exc:
                raise RemoteError('remote server %s answered %s %s with something that is not a '
                                  'JSON object (%s): %s' % (self.base_url, method, path, exc,
                                                            _excerpt(raw)))
            return answer
        raise RemoteError('%s (after %d attempts)' % (last, self.retries + 1), transient=True)


def _lowest_probability(logprobs) -> Optional[float]:
    """Return the lowest token probability of a choice's ``logprobs``, None if it has none."""
    content = logprobs.get('content') if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    values = []
    for entry in content:
        value = entry.get('logprob') if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return None  # an answer this code cannot read is no evidence either way
        values.append(min(0.0, float(value)))
    return math.exp(min(values))


def _token_probabilities(logprobs, text: str) -> Optional[List[Tuple[int, int, float]]]:
    """
    Return (start, end, probability) per token of a choice's logprobs.

    Start and end are the characters of ``text`` the token's ``bytes`` fall in
    (:func:`character_spans`); entries past the end of the text (a stop token the server
    lists) hold none of it. None when an entry has no bytes, or when the
    bytes do not spell ``text`` (a server that reports each token decoded on its own, as
    vLLM does, cannot spell a character split over two tokens).
    """
    if _lowest_probability(logprobs) is None:
        return None
    pieces = []
    for entry in logprobs['content']:
        spelled = entry.get('bytes')
        if not isinstance(spelled, list) or not all(
                isinstance(byte, int) and not isinstance(byte, bool) and 0 <= byte < 256
                for byte in spelled):
            return None
        pieces.append(bytes(spelled))
    spans, decoded = character_spans(pieces)
    if not decoded.startswith(text):
        return None
    past = [index for index, (_, end) in enumerate(spans) if end > len(text)]
    if past and (spans[past[0] - 1][1] if past[0] else 0) != len(text):
        return None  # the text ends inside a token, not before the trailing ones
    return [(min(start, len(text)), min(end, len(text)),
             math.exp(min(0.0, float(entry['logprob']))))
            for (start, end), entry in zip(spans, logprobs['content'])]


def _count(value) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _excerpt(value, limit: int = 200) -> str:
    text = value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + '...'
