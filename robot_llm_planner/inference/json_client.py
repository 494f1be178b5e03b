"""
A small JSON-over-HTTP client for an OpenAI-compatible server, with bounded retries.

Only the standard library. The API key is read from the environment variable named by
``api_key_env`` at each request and never logged, published or put in an error message.
Redirects are refused: urllib would send the key on to wherever they point.
"""

import http.client
import json
import os
import socket
import time
from typing import Optional
import urllib.error
import urllib.request

from robot_llm_planner.core.backend import RemoteError

RETRYABLE_HTTP = (429, 500, 502, 503, 504)


class ServerRefused(RemoteError):
    """The server answered with an HTTP error status that a retry won't change."""

    def __init__(self, message: str, status: int, body: str = '') -> None:
        """Record the message, the HTTP status and the answer's body (its start)."""
        super().__init__(message)
        self.status = status
        self.body = body

    def missing_route(self) -> bool:
        """Return True when the server has no such endpoint (not an error of the request)."""
        if self.status == 405:
            return True
        try:
            return self.status == 404 and json.loads(self.body) == {'detail': 'Not Found'}
        except ValueError:
            return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would send the API key on and turn a POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the redirect as an HTTPError


class JsonClient:
    """Send JSON requests to one server; every failure is a :class:`RemoteError`."""

    def __init__(self, base_url: str, api_key_env: str = '', timeout_s: float = 30.0,
                 retries: int = 2, retry_backoff_s: float = 0.5) -> None:
        """
        Talk to ``base_url`` (e.g. http://gpu-server:8000/v1).

        A request that times out, cannot connect, breaks off or gets HTTP 429/5xx is tried
        ``retries`` more times, ``retry_backoff_s`` apart (doubling); then it raises a
        transient :class:`RemoteError`. Other HTTP errors raise :class:`ServerRefused` at once.
        """
        self.base_url = (base_url or '').rstrip('/')
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.retries = max(0, int(retries))
        self.retry_backoff_s = retry_backoff_s
        self._opener = urllib.request.build_opener(_NoRedirect)

    @property
    def root(self) -> str:
        """Return the server root: ``base_url`` without ``/v1`` (where vLLM has /tokenize)."""
        return self.base_url[:-3] if self.base_url.endswith('/v1') else self.base_url

    def request(self, method: str, path: str, body: Optional[dict] = None,
                at_root: bool = False) -> dict:
        """Send one request to ``base_url + path`` (``root + path`` with ``at_root``)."""
        url = (self.root if at_root else self.base_url) + path
        data = json.dumps(body, ensure_ascii=False).encode('utf-8') if body is not None else None
        headers = {'Content-Type': 'application/json', 'Accept': 'application/json'}
        key = os.environ.get(self.api_key_env, '') if self.api_key_env else ''
        if key:
            headers['Authorization'] = 'Bearer ' + key
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_backoff_s * (2 ** (attempt - 1)))
            try:
                raw = self._send(urllib.request.Request(url, data=data, headers=headers,
                                                        method=method), method, path)
            except RemoteError as exc:
                if not exc.transient:
                    raise
                last = exc
                continue
            return self._decode(raw, method, path)
        raise RemoteError('%s (after %d attempts)' % (last, self.retries + 1), transient=True)

    def _send(self, request, method: str, path: str) -> bytes:
        """Return the answer's bytes; a failure worth retrying is a transient RemoteError."""
        where = '%s %s' % (method, path)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise RemoteError(
                    'remote server %s answered %s with a redirect (HTTP %d) to %s: set '
                    'remote.base_url to the address it points to (redirects are not '
                    'followed: they would carry the API key elsewhere)'
                    % (self.base_url, where, exc.code,
                       exc.headers.get('Location', '(no Location)'))) from None
            try:
                body = exc.read().decode('utf-8', 'replace')
            except (OSError, http.client.HTTPException):
                body = '(its answer broke off)'
            message = 'remote server %s answered HTTP %d to %s: %s' % (
                self.base_url, exc.code, where, _excerpt(body))
            if exc.code in RETRYABLE_HTTP:
                raise RemoteError(message, transient=True) from None
            if exc.code == 401:
                message += ('; the server wants an API key: set remote.api_key_env to the name '
                            'of an environment variable that holds it'
                            if not self.api_key_env else
                            '; the key in %s was refused' % self.api_key_env)
            raise ServerRefused(message, exc.code, body[:1000]) from None
        except http.client.HTTPException as exc:  # IncompleteRead, BadStatusLine, ...
            raise RemoteError('remote server %s broke off its answer to %s (%s)'
                              % (self.base_url, where, type(exc).__name__), transient=True)
        except (socket.timeout, TimeoutError):
            raise RemoteError('remote server %s did not answer %s within remote.timeout_s = %g s'
                              % (self.base_url, where, self.timeout_s), transient=True)
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError('remote server %s is unreachable (%s): %s'
                              % (self.base_url, where, getattr(exc, 'reason', exc)),
                              transient=True)

    def _decode(self, raw: bytes, method: str, path: str) -> dict:
        try:
            answer = json.loads(raw.decode('utf-8'))
            if not isinstance(answer, dict):
                raise ValueError('not a JSON object')
        except ValueError as exc:
            raise RemoteError('remote server %s answered %s %s with something that is not a '
                              'JSON object (%s): %s' % (self.base_url, method, path, exc,
                                                        _excerpt(raw)))
        return answer


def _excerpt(value, limit: int = 200) -> str:
    text = value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + '...'
