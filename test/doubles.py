"""
Test doubles without ROS: one OpenAI-compatible chat server whose replies each test decides.

:class:`FakeOpenAIServer` is a real HTTP server on 127.0.0.1 (the planner's openai backend
talks to it as to ``llamafactory-cli api``: chat completions, no vLLM ``/tokenize``). By
default it answers every chat request with :data:`OK_PLAN`; a test configures it per command
(``answers``, ``logprobs``), scripts the wire itself (:meth:`FakeOpenAIServer.script`,
``raw``: a status, a body, a delay, a broken connection) and holds replies back (``gate``,
``barrier``) to drive queues and shutdowns deterministically. :func:`fake_server_parameters`
points planner_node at it.
"""

import http.server
import json
import threading
import time

from helpers import wait_until

OK_PLAN = '寻找一瓶水；拿起一瓶水。寻找物体，一瓶水；拿起物体，一瓶水'
ANSWERED = 60.0  # seconds a test waits for an answer (a loaded tiny model answers in < 1 s)
CUT = 'cut'      # a scripted status: a 200 that promises more bytes than it sends


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _handle(self):
        self.server.fake.serve(self)

    do_GET = do_POST = _handle


class FakeOpenAIServer:
    """
    An OpenAI-compatible chat server on 127.0.0.1 whose replies a test decides.

    Replies, first that applies: ``raw[command]`` or the :meth:`script` (raw replies
    ``(delay_s, status, body bytes[, headers])``); else, for a chat request, ``answers[command]``
    (the reply text, or an int HTTP status to fail with) or :data:`OK_PLAN`, with the token
    log-probabilities of ``logprobs[command]`` if given; a GET lists one model. The command is
    the last line of the user message. While ``gate`` is clear every reply waits (at most
    ``hold_s``); with a ``barrier`` (a threading.Barrier) a reply waits for that many requests.

    Records: ``requests`` (the commands of the chat requests), ``bodies`` (their JSON),
    ``received`` ((method, path, headers, raw body) of every request) and ``most_in_flight``.
    """

    def __init__(self, hold_s: float = 20.0, port: int = 0) -> None:
        """Start serving on ``port`` (0: any free one) in a thread; the gate starts open."""
        self.gate = threading.Event()
        self.gate.set()
        self.hold_s = hold_s
        self.answers = {}
        self.logprobs = {}
        self.raw = {}
        self.barrier = None
        self.requests = []
        self.bodies = []
        self.received = []
        self.most_in_flight = 0
        self._script = []
        self._in_flight = 0
        self._lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.url = 'http://127.0.0.1:%d/v1' % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def script(self, *replies) -> 'FakeOpenAIServer':
        """Reply ``(delay_s, status, body[, headers])`` in turn, the last one repeating."""
        self._script = list(replies)
        return self

    def serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        """Record one request and send its reply (the handler's thread)."""
        data = handler.rfile.read(int(handler.headers.get('Content-Length') or 0))
        body, command = _chat_request(data)
        with self._lock:
            self.received.append((handler.command, handler.path, dict(handler.headers), data))
            if command is not None:
                self.requests.append(command)
                self.bodies.append(body)
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        if self.barrier is not None:
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                pass  # fewer came at once: reply anyway (the test sees it)
        self.gate.wait(self.hold_s)
        delay, status, payload, headers = (
            tuple(self._reply(handler.command, handler.path, command)) + ({},))[:4]
        time.sleep(delay)
        with self._lock:
            self._in_flight -= 1
        _send(handler, status, payload, headers)

    def _reply(self, method, path, command):
        with self._lock:
            if command in self.raw:
                return self.raw[command]
            if self._script:
                return self._script.pop(0) if len(self._script) > 1 else self._script[0]
        if method == 'GET':
            return 0, 200, _json({'object': 'list', 'data': [{'id': 'fake', 'object': 'model'}]})
        if not path.endswith('/chat/completions'):  # e.g. vLLM's /tokenize: not served here
            return 0, 404, _json({'detail': 'Not Found'})
        answer = self.answers.get(command, OK_PLAN)
        if isinstance(answer, int):
            return 0, answer, _json({'error': {'message': 'fake failure'}})
        choice = {'message': {'role': 'assistant', 'content': answer}, 'finish_reason': 'stop'}
        if command in self.logprobs:
            choice['logprobs'] = {'content': [{'token': 't', 'logprob': value}
                                              for value in self.logprobs[command]]}
        return 0, 200, _json({'choices': [choice],
                              'usage': {'prompt_tokens': 20, 'completion_tokens': 12}})

    def wait_for_requests(self, count: int, timeout: float = ANSWERED) -> None:
        """Wait until ``count`` chat requests arrived."""
        wait_until(lambda: len(self.requests) >= count, timeout,
                   lambda: 'the fake server got %d requests, expected %d'
                   % (len(self.requests), count))

    def close(self) -> None:
        """Release held replies and stop serving."""
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _chat_request(data: bytes):
    """Return (the JSON body, the command: the user message's last line) or (None, None)."""
    try:
        body = json.loads(data)
        return body, body['messages'][-1]['content'].split('\n')[-1]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None, None


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode('utf-8')


def _send(handler, status, payload: bytes, headers: dict) -> None:
    try:
        handler.send_response(200 if status == CUT else status)
        handler.send_header('Content-Type', 'application/json')
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header('Content-Length', str(len(payload) + (100 if status == CUT else 0)))
        handler.end_headers()
        handler.wfile.write(payload)
    except OSError:
        pass  # the client gave up waiting (a timeout test)


def fake_server_parameters(server: FakeOpenAIServer, **extra) -> dict:
    """
    Return planner_node parameters for the openai backend on ``server``.

    The server answers :data:`OK_PLAN` to any command, so its arguments are not checked
    against the command (``validation.grounded_arguments`` false) unless ``extra`` says so.
    """
    parameters = {'model.backend': 'openai', 'remote.base_url': server.url,
                  'remote.model': 'fake', 'remote.retries': 0, 'remote.timeout_s': 60.0,
                  'generation.constrained': False, 'validation.grounded_arguments': False}
    parameters.update(extra)
    return parameters
