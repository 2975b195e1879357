"""The simulated API server: routing, the fault switches tests flip, the call log, the lifecycle."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from coclib.tags import TAG_PATTERN, normalise_tag
from coclib.testing.simulator import calls as call_measures
from coclib.testing.simulator.answers import (
    CACHE_CONTROL,
    HUGE_BODY_BYTES,
    INVALID_AUTHORIZATION,
    MAINTENANCE,
    NOT_FOUND,
    PRIVATE_WAR_LOG,
    THROTTLED,
    UNKNOWN_EXCEPTION,
    Answer,
    BadBodies,
    bad_answer,
    error,
    forced,
    invalid_ip_body,
)
from coclib.testing.simulator.bodies import body_bytes
from coclib.testing.simulator.calls import Call
from coclib.testing.simulator.developer_portal import DeveloperPortal


def api_tag(raw: str) -> str:
    """The API's reading of a path tag: `coclib.tags.normalise_tag`'s, but a missing '#' is
    not added.

    The API then finds nothing (404), which is what a worker that forgot the '#' should see.
    """
    return normalise_tag(raw) if raw.strip().startswith("#") else raw


def _route(raw_path: str) -> tuple[str | None, str | None]:
    # Split the raw path before unquoting, so an encoded '/' inside a tag cannot shift segments.
    parts = [unquote(part) for part in raw_path.split("/")[2:]]
    match parts:
        case ["players", tag]:
            return "player", tag
        case ["clans", tag]:
            return "clan", tag
        case ["clans", tag, "currentwar"]:
            return "war", tag
    return None, None


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class CocApiSimulator:
    """The simulated API and developer portal, with switches tests flip between steps.

    Switches and sets may be assigned or mutated from any thread: each check the server makes
    is a single read. Every API call is decided at arrival (switches read then), logged, then
    delayed by `latency` and `hang` before the answer goes out. `rate_limit` is per token;
    `max_calls_in_window` counts all calls, whatever their token.

    Per-tag switches (tags normalised, with '#'): `not_found`, `private_war_log` (sets),
    `tag_status` (tag -> a forced status), `bad_body` (tag -> a `BadBody` variant or its name:
    what would be a 200 answer is sent with that body instead; `huge_body_bytes` sizes the
    `huge` one). `player_bytes` grows player bodies to about that size with more achievements
    (the benchmarks use real players' 23-35 KB; the templates alone make about 3.7 KB).
    """

    def __init__(
        self,
        *,
        tokens: tuple[str, ...] | list[str] | set[str] = ("test-token",),
        email: str = "dev@example.com",
        password: str = "portal-password",
        latency: tuple[float, float] = (0.0, 0.0),
        rate_limit: float | None = None,
        seed: int = 0,
        player_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens: set[str] = set(tokens)
        self.portal = DeveloperPortal(self._tokens, email, password)
        self.seed = seed
        self.player_bytes = player_bytes
        # What `Call.at` and the rate windows read; a test may pass a clock it moves itself.
        self.clock = clock
        self.latency: tuple[float, float] = tuple(latency)  # type: ignore[assignment]
        self.rate_limit = rate_limit
        self.maintenance = self.throttled = self.invalid_ip = self.server_error = False
        self.hang: float | None = None
        self.not_found: set[str] = set()
        self.private_war_log: set[str] = set()
        self.tag_status: dict[str, int] = {}
        self.bad_body: BadBodies = BadBodies()
        self.huge_body_bytes = HUGE_BODY_BYTES
        self.calls: list[Call] = []
        self.base_url = self.portal_url = ""
        self._lock = threading.Lock()
        self._recent: dict[str | None, deque[float]] = {}
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None

    # --- control surface --------------------------------------------------------------------

    @property
    def tokens(self) -> set[str]:
        """The bearer tokens the API accepts (live: the portal adds and removes its keys)."""
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: set[str]) -> None:
        # Replaced in place: the portal holds the same set.
        self._tokens.clear()
        self._tokens.update(tokens)

    @property
    def email(self) -> str:
        """The portal account's email."""
        return self.portal.email

    @email.setter
    def email(self, email: str) -> None:
        self.portal.email = email

    @property
    def password(self) -> str:
        """The portal account's password."""
        return self.portal.password

    @password.setter
    def password(self, password: str) -> None:
        self.portal.password = password

    @property
    def portal_ip(self) -> str | None:
        """The IP the portal reports to coc.py; None: the caller's."""
        return self.portal.ip

    @portal_ip.setter
    def portal_ip(self, ip: str | None) -> None:
        self.portal.ip = ip

    @property
    def portal_keys(self) -> list[dict[str, Any]]:
        """A copy of the API keys on the portal account."""
        return [dict(key) for key in self.portal.keys]

    def reset_faults(self) -> None:
        """Turn every fault switch off and empty the fault sets; latency and rate limit stay."""
        self.maintenance = self.throttled = self.invalid_ip = self.server_error = False
        self.hang = None
        self.not_found.clear()
        self.private_war_log.clear()
        self.tag_status.clear()
        self.bad_body.clear()
        self.huge_body_bytes = HUGE_BODY_BYTES

    def clear_calls(self) -> None:
        """Forget the call log (the rate limiter's memory is kept)."""
        with self._lock:
            self.calls.clear()

    def _arrivals(self) -> list[float]:
        with self._lock:
            return [call.at for call in self.calls]

    def max_calls_in_window(self, window: float = 1.0) -> int:
        """The most calls whose `at` falls in any half-open window [t, t + window)."""
        return call_measures.max_calls_in_window(self._arrivals(), window)

    def tightest_span(self, count: int) -> float | None:
        """The shortest time between the first and last of any `count` consecutive arrivals."""
        return call_measures.tightest_span(self._arrivals(), count)

    def summary(self) -> str:
        """One line on the calls seen: how many, how many throttled, the tightest windows."""
        with self._lock:
            calls = len(self.calls)
            throttled = sum(1 for call in self.calls if call.status == 429)
        line = f"calls={calls} throttled={throttled} max_calls_in_any_second={self.max_calls_in_window(1.0)}"
        if self.rate_limit is not None:
            count = math.floor(self.rate_limit) + 1
            span = self.tightest_span(count)
            line += f" tightest_span_of_{count}_calls_s={'none' if span is None else f'{span:.4f}'}"
        return line

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on `host:port` (0: any free port); sets `base_url` and `portal_url`."""
        app = web.Application()
        app.router.add_get("/v1/{tail:.*}", self._api)
        self.portal.add_routes(app)
        # handler_cancellation: a client that gives up (timeout) must not keep a hang alive,
        # and a short shutdown_timeout keeps stop() quick while calls are hanging.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
        self.portal_url = f"http://{shown}:{bound}"
        self.base_url = f"{self.portal_url}/v1"

    async def stop(self) -> None:
        """Stop serving; hanging calls are cancelled."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the API ----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        at = self.clock()
        token = _bearer(request.headers.get("Authorization"))
        kind, raw_tag = _route(request.rel_url.raw_path)
        tag = api_tag(raw_tag) if raw_tag is not None else None
        answer = self._decide(at, token, kind, tag, request.remote or "127.0.0.1")
        with self._lock:
            self.calls.append(
                Call(at, request.method, request.rel_url.raw_path, kind, tag, answer.status, token)
            )
        low, high = self.latency
        delay = self._random.uniform(low, high) + (self.hang or 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        headers = {"Content-Type": answer.content_type}
        if answer.cache_control:
            headers["Cache-Control"] = answer.cache_control
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    def _decide(self, at: float, token: str | None, kind: str | None, tag: str | None, remote: str) -> Answer:
        # Assumed order of the real gateway: key, IP, throttling, then the service itself.
        # Every arrival counts towards its token's rate window, refused ones too, so a 429 from
        # the limiter happens exactly when max_calls_in_window() (one token) exceeds the limit.
        over_limit = self._note_arrival(token, at)
        if token is None or token not in self.tokens:
            return error(403, INVALID_AUTHORIZATION)
        if self.invalid_ip:
            return error(403, invalid_ip_body(remote))
        if over_limit or self.throttled:
            return error(429, THROTTLED)
        if self.maintenance:
            return error(503, MAINTENANCE)
        if self.server_error:
            return error(500, UNKNOWN_EXCEPTION)
        if kind is None or tag is None:
            return error(404, NOT_FOUND)
        cache_control = CACHE_CONTROL[kind]
        if not TAG_PATTERN.fullmatch(tag) or tag in self.not_found:
            return error(404, NOT_FOUND, cache_control)
        status = self.tag_status.get(tag)
        if status is not None and status != 200:
            return forced(status)
        if kind == "war" and tag in self.private_war_log:
            return error(403, PRIVATE_WAR_LOG, cache_control)
        public = tag not in self.private_war_log
        body = body_bytes(kind, tag, self.seed, public, self.player_bytes)
        variant = self.bad_body.get(tag)
        if variant is not None:
            return bad_answer(variant, body, cache_control, self.huge_body_bytes)
        return Answer(200, body, cache_control)

    def _note_arrival(self, token: str | None, at: float) -> bool:
        """Record a call for its token; True if it makes more than `rate_limit` in (at-1s, at]."""
        with self._lock:
            recent = self._recent.setdefault(token, deque())
            while recent and recent[0] <= at - 1.0:
                recent.popleft()
            recent.append(at)
            limit = self.rate_limit
            return limit is not None and len(recent) > limit
