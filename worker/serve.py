"""`python -m worker serve`: the Lambda handler behind a local stand-in for API Gateway.

Each HTTP request becomes an API Gateway REST API proxy event (payload 1.0: `resource`,
`path`, `httpMethod`, `headers`, `multiValueHeaders`, query parameters, `requestContext`,
`body`, `isBase64Encoded`) and goes to `worker.lambda_function.lambda_handler` with a Lambda
context; the proxy response it returns becomes the HTTP response. With `--schedule N` an
EventBridge scheduled event is also fired every N seconds (the first one at once).

Like one warm Lambda container, the server runs one invocation at a time, on the handler's
module-level event loop: an HTTP request that arrives during a scheduled drain waits for it.
A scheduled drain lingers `DRAIN_LINGER_SECONDS` (default 120) on an empty queue, holding the
server that long: set it to 0 here unless that is what you want to see.
Like API Gateway, it answers 502 `{"message": "Internal server error"}` when the handler
raises or returns something that is not a proxy response, and 504 when an HTTP invocation
outlived the 29-second integration limit (once it has ended: the handler is not interrupted).
"""

from __future__ import annotations

import base64
import http.server
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from coclib.settings import Settings
from coclib.testing.lambda_context import LambdaContext, rest_event, scheduled_event

log = logging.getLogger(__name__)

API_GATEWAY_LIMIT_SECONDS = 29.0
FUNCTION_TIMEOUT_SECONDS = 300.0  # tofu/lambda.tf
STAGE = "local"

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def _default_handler() -> Handler:
    from worker.lambda_function import lambda_handler

    return lambda_handler


class LocalGateway:
    """An HTTP server and an optional scheduler, both invoking one handler, one call at a time."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        schedule_seconds: float = 0,
        handler: Handler | None = None,
        function_timeout: float = FUNCTION_TIMEOUT_SECONDS,
    ) -> None:
        self.handler = handler or _default_handler()
        self.schedule_seconds = schedule_seconds
        self.function_timeout = function_timeout
        self._invoke_lock = threading.Lock()  # one invocation at a time, like one container
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        gateway = self

        class RequestHandler(_ProxyRequestHandler):
            owner = gateway

        self.server = http.server.ThreadingHTTPServer((host, port), RequestHandler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """Call the handler as Lambda would: a fresh context, never two at once."""
        with self._invoke_lock:
            context = LambdaContext(timeout_seconds=self.function_timeout)
            return self.handler(event, context)

    def start(self) -> LocalGateway:
        """Serve (and schedule) in background threads; returns at once."""
        serving = threading.Thread(target=self.server.serve_forever, name="local-gateway", daemon=True)
        serving.start()
        self._threads.append(serving)
        if self.schedule_seconds > 0:
            ticking = threading.Thread(target=self._tick, name="local-schedule", daemon=True)
            ticking.start()
            self._threads.append(ticking)
        return self

    def stop(self) -> None:
        """Stop serving and scheduling; waits for a running invocation to end."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=FUNCTION_TIMEOUT_SECONDS)
        with self._invoke_lock:  # let an invocation in flight finish first
            pass

    def _tick(self) -> None:
        while not self._stop.is_set():
            try:
                summary = self.invoke(scheduled_event())
                log.info("scheduled run: %s", summary.get("stopped"), extra={"summary": summary})
            except Exception:
                log.exception("the scheduled invocation failed")
            self._stop.wait(self.schedule_seconds)

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _ProxyRequestHandler(http.server.BaseHTTPRequestHandler):
    """Turns one HTTP request into a proxy event and the proxy response into HTTP."""

    owner: LocalGateway
    protocol_version = "HTTP/1.1"
    server_version = "coc-refresh-worker-local-gateway"

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        event = proxy_event(
            self.command,
            self.path,
            list(self.headers.items()),
            body,
            source_ip=self.client_address[0],
        )
        started = time.monotonic()
        try:
            answer = self.owner.invoke(event)
        except Exception:
            log.exception("the handler raised: answering 502 as API Gateway does")
            self._send(502, {"Content-Type": ["application/json"]}, b'{"message": "Internal server error"}')
            return
        if time.monotonic() - started > API_GATEWAY_LIMIT_SECONDS:
            log.error("the invocation took longer than API Gateway's 29 s: answering 504")
            self._send(
                504, {"Content-Type": ["application/json"]}, b'{"message": "Endpoint request timed out"}'
            )
            return
        status, headers, payload = proxy_response(answer)
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict[str, list[str]], payload: bytes) -> None:
        self.send_response(status)
        for name, values in headers.items():
            if name.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            for value in values:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def proxy_event(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    source_ip: str = "127.0.0.1",
    stage: str = STAGE,
) -> dict[str, Any]:
    """The API Gateway REST proxy event (payload 1.0) for one HTTP request, as it arrived."""
    parts = urlsplit(target)
    host = next((value for name, value in headers if name.lower() == "host"), "localhost")
    return rest_event(
        method,
        parts.path or "/",
        body=body,
        headers=headers,
        query=parse_qs(parts.query, keep_blank_values=True),
        stage=stage,
        source_ip=source_ip,
        api_id="local",
        domain=host,
        client_headers=False,
    )


def proxy_response(answer: Any) -> tuple[int, dict[str, list[str]], bytes]:
    """(status, headers, body) of a proxy integration response; API Gateway's 502 if malformed."""
    if not isinstance(answer, dict) or not isinstance(answer.get("statusCode"), int):
        # A non-HTTP answer to an HTTP event is a malformed proxy response to API Gateway.
        log.error("malformed Lambda proxy response: %.200r", answer)
        return 502, {"Content-Type": ["application/json"]}, b'{"message": "Internal server error"}'
    headers: dict[str, list[str]] = {}
    for name, value in (answer.get("headers") or {}).items():
        headers[name] = [str(value)]
    for name, values in (answer.get("multiValueHeaders") or {}).items():
        headers[name] = [str(v) for v in values]
    body = answer.get("body") or ""
    payload = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode("utf-8")
    return answer["statusCode"], headers, payload


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    schedule_seconds: float = 0,
    function_timeout: float = FUNCTION_TIMEOUT_SECONDS,
) -> int:
    """Serve until interrupted (Ctrl-C). Returns the process exit status."""
    # Fail at once on a bad setting (a ConfigError the CLI prints as one line), not on the
    # first request. The handler parses the settings again, as a cold Lambda would.
    Settings.from_env()
    from worker.lambda_function import shutdown

    gateway = LocalGateway(host, port, schedule_seconds=schedule_seconds, function_timeout=function_timeout)
    schedule = f", scheduled event every {schedule_seconds:g} s" if schedule_seconds > 0 else ""
    print(
        f"serving the Lambda handler at {gateway.url} (GET /health, POST /refresh{schedule}); Ctrl-C stops",
        flush=True,
    )
    gateway.start()
    # `kill` (SIGTERM) stops as cleanly as Ctrl-C: the pool and the API session are closed. SIGINT
    # is handled explicitly too: a process started in the background by a shell (a CI job,
    # `nohup`) inherits SIGINT ignored, and would otherwise never stop on it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
        shutdown()
    return 0
