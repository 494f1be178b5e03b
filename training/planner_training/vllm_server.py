"""
A vLLM OpenAI-compatible server on this machine, for the fleet tests and benchmark.

It runs the pinned CPU build of ``.venv-vllm`` (``make vllm-env``; requirements-vllm.txt) as
``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1, with one LoRA adapter per
robot type (``--lora-modules NAME=PATH``). On the CPU build ``--gpu-memory-utilization`` is the
share of RAM set aside for the KV cache: 0.1 here (its default 0.92 does not start).
"""

import os
import signal
import socket
import subprocess
import time
from typing import Dict, Optional, Sequence
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VLLM_PYTHON = os.path.join(ROOT, '.venv-vllm', 'bin', 'python')

# LLaMA-Factory's qwen template as a chat template: the prompt core.prompt builds, for a
# system message and one user message (LLaMA-Factory writes such a chat_template.jinja beside
# the models it trains).
TRAINING_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    '{% set turns = messages[1:] %}{% else %}'
    "{% set system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}"
    '{% set turns = messages %}{% endif %}'
    "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{% for message in turns %}{% if message['role'] == 'user' %}"
    "{{ '<|im_start|>user\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>assistant\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    '{% endif %}')


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class VllmServer:
    """One vLLM server process: started, waited for, stopped and started again."""

    def __init__(self, model: str, adapters: Dict[str, str], log_path: str,
                 api_key: str = '', chat_template: str = '', port: int = 0,
                 max_model_len: int = 2048, extra: Sequence[str] = ()) -> None:
        """
        Serve ``model`` with ``adapters`` ({served name: adapter directory}).

        ``api_key`` (if any) is required from clients; ``chat_template`` is a template file
        (empty: the model directory's own). Nothing starts before :meth:`start`.
        """
        self.model = model
        self.adapters = dict(adapters)
        self.log_path = log_path
        self.api_key = api_key
        self.chat_template = chat_template
        self.port = port or free_port()
        self.max_model_len = max_model_len
        self.extra = list(extra)
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        """Return the OpenAI base URL (``remote.base_url``)."""
        return 'http://127.0.0.1:%d/v1' % self.port

    def command(self) -> list:
        """Return the server's command line."""
        command = [VLLM_PYTHON, '-m', 'vllm.entrypoints.openai.api_server',
                   '--model', self.model, '--host', '127.0.0.1', '--port', str(self.port),
                   '--dtype', 'float32', '--max-model-len', str(self.max_model_len),
                   '--gpu-memory-utilization', '0.1', '--seed', '0']
        if self.adapters:
            command += ['--enable-lora', '--max-lora-rank', '16', '--max-loras',
                        str(len(self.adapters)), '--lora-modules']
            command += ['%s=%s' % item for item in sorted(self.adapters.items())]
        if self.chat_template:
            command += ['--chat-template', self.chat_template]
        if self.api_key:
            command += ['--api-key', self.api_key]
        return command + self.extra

    def start(self, timeout_s: float = 420.0) -> 'VllmServer':
        """Start the server and wait until ``GET /v1/models`` answers; raise if it does not."""
        if not os.access(VLLM_PYTHON, os.X_OK):
            raise RuntimeError('%s is missing: run `make vllm-env`' % VLLM_PYTHON)
        with open(self.log_path, 'a') as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
                         VLLM_NO_USAGE_STATS='1', DO_NOT_TRACK='1'))
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            exited = self.process.poll()
            if exited is not None or time.monotonic() > deadline:
                self.stop()
                why = ('exited with %d' % exited if exited is not None
                       else 'did not answer within %g s' % timeout_s)
                raise RuntimeError('vLLM %s:\n%s' % (why, self.log_tail()))
            time.sleep(1.0)
        return self

    def ready(self) -> bool:
        """Return True when the server answers ``GET /v1/models``."""
        headers = {'Authorization': 'Bearer ' + self.api_key} if self.api_key else {}
        request = urllib.request.Request(self.url + '/models', headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the server (its whole process group: the engine runs in a child)."""
        if self.process is None or self.process.poll() is not None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout_s)
                break
            except subprocess.TimeoutExpired:
                continue
        _wait_until_closed(self.port)

    def log_tail(self, characters: int = 4000) -> str:
        """Return the end of the server's log."""
        with open(self.log_path, encoding='utf-8', errors='replace') as stream:
            return stream.read()[-characters:]

    def __enter__(self) -> 'VllmServer':
        """Start the server."""
        return self.start()

    def __exit__(self, *exc_info) -> None:
        """Stop the server."""
        self.stop()


def _wait_until_closed(port: int, timeout_s: float = 30.0) -> None:
    """Wait until nothing listens on ``port`` (the engine process may outlive the server)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(('127.0.0.1', port)) != 0:
                return
        time.sleep(0.2)
