"""The Clash of Clans API through coc.py: raw JSON, every outcome classified.

coc.py is used for what it is good at (key management by developer-portal login,
sessions, error types) and steered where a refresh worker needs something else:

- its cache is off (a cached 404/403/503 would be re-raised without calling the API);
- every HTTP request it sends, its own retries and re-logins included, passes our
  wall-clock `RateLimiter`, through the `throttler` hook coc.py offers;
- its retries on timeouts and 5xx (sleeps of 1, 3, 5, 7, 9 s) are refused at that
  hook: the drain decides when to try again, within its deadline;
- each call is bounded by a timeout the caller gives;
- what comes back must be the JSON object the endpoint returns, as JSON: an HTML page,
  truncated or other JSON, an empty body, a non-JSON Content-Type (what proxies and CDNs send
  when something in front of the API fails) is a transient `bad_response`, never a crash;
- a body is read once, as the bytes the API sent, and those bytes are what the snapshot
  stores (`Fetched.raw`); the whole text is validated, but only what the checks read (the
  object's keys, its `tag` and `state`) is built as Python objects (`outline`);
- how long the answer stays fresh is read from the response's own `Cache-Control` and `Age`
  headers (`coclib.freshness`) where the body is read: coc.py keeps only a lossy copy of
  max-age in the body (`_response_retry`, Age ignored), and that key is stripped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
import coc
import coc.http
import msgspec
import orjson

from coclib.errors import RequestError, SystemicError, TransientError
from coclib.errortext import first_line
from coclib.freshness import fresh_for
from coclib.ratelimit import RateLimiter
from coclib.reasons import Reason
from coclib.storable import excerpt

log = logging.getLogger(__name__)

# Keys coc.py adds to every response dict (and to its cached copy).
INJECTED_KEYS = frozenset({"status_code", "timestamp", "_response_retry"})
_MARKUP = re.compile(r"<[^>]*>")
# One re-login after `accessDenied.invalidIp` is coc.py's recovery; a second means it failed.
_MAX_RELOGINS = 1


@dataclass(frozen=True, slots=True)
class Fetched:
    """A successful call: the body's JSON text as the API sent it, checked (valid JSON, an object
    naming what was asked for)."""

    raw: bytes
    http_status: int
    latency_ms: int
    fetched_at: float
    # When the API's cached copy expires, a `time.monotonic()` value: when the call was let go
    # plus max-age minus Age (never later than the API's own expiry); None: not fresh at all.
    fresh_until: float | None = None

    @property
    def data(self) -> dict[str, Any]:
        """The body, parsed. The drain never needs it: it stores `raw` as it is."""
        return orjson.loads(self.raw)


class _CallState:
    """What the throttler hook saw during one call (one asyncio task, via a ContextVar)."""

    __slots__ = (
        "ages",
        "body",
        "cache_control",
        "depth",
        "last_timed_out",
        "priority",
        "relogins",
        "scope",
        "sends",
        "sent_at",
        "timeout",
    )

    def __init__(self, timeout: float, priority: bool = False) -> None:
        self.priority = priority  # passes plain calls waiting in the rate limiter
        self.body: bytes | None = None  # the last JSON body read, as bytes
        self.cache_control: str | None = None  # …and its response's freshness headers
        self.ages: list[str] = []
        self.sends = 0
        self.depth = 0
        self.relogins = 0
        self.last_timed_out = False
        self.sent_at = 0.0
        self.scope: asyncio.Timeout | None = None  # bounds the call; re-armed at the limiter
        self.timeout = timeout


_call: ContextVar[_CallState | None] = ContextVar("coc_call", default=None)


class _RetryRefused(Exception):
    """coc.py wanted to resend after a timeout or 5xx; the drain owns retries."""

    def __init__(self, timed_out: bool) -> None:
        self.timed_out = timed_out
        super().__init__("timeout" if timed_out else "server error")


class _ReloginFailed(Exception):
    """coc.py re-logged in after `accessDenied.invalidIp` and was refused again."""


def throttler_for(limiter: RateLimiter) -> type[coc.BasicThrottler]:
    """A coc.py throttler class that takes every send from `limiter` (coc.py instantiates it)."""

    class WallClockThrottler(coc.BasicThrottler):
        async def __aenter__(self) -> WallClockThrottler:
            state = _call.get()
            if state is not None:
                if state.sends and state.depth == 0:
                    # The previous send finished and coc.py slept to send again: a retry.
                    raise _RetryRefused(state.last_timed_out)
                if state.depth > 0:
                    # coc.py recurses from inside a send after re-creating its keys.
                    state.relogins += 1
                    if state.relogins > _MAX_RELOGINS:
                        raise _ReloginFailed()
                state.sends += 1
                state.depth += 1
            await limiter.acquire(priority=state is not None and state.priority)
            if state is not None and state.scope is not None:
                state.sent_at = time.monotonic()
                # The call's own timeout starts now: waiting for the limiter is not the API's
                # fault. The run's deadline, if sooner, still wins.
                when = asyncio.get_running_loop().time() + state.timeout
                current = state.scope.when()
                state.scope.reschedule(when if current is None else min(current, when))
            return self

        async def __aexit__(self, exc_type, exc, tb) -> None:
            state = _call.get()
            if state is not None:
                state.depth -= 1
                state.last_timed_out = exc_type is not None and issubclass(exc_type, TimeoutError)

    return WallClockThrottler


# aiohttp's test for a JSON Content-Type (`ClientResponse.json`): application/json or +json.
_JSON_CONTENT_TYPE = re.compile(r"^application/(?:[\w.+-]+?\+)?json")
_coc_json_or_text = coc.http.json_or_text


async def _json_or_text(response: aiohttp.ClientResponse) -> Any:
    """coc.py's `json_or_text`, reading the body once as bytes and keeping them for the call.

    coc.py has aiohttp decode the body to a str and parse all of it; nothing here needs more
    than `outline(body)`, and the snapshot is the bytes themselves. Outside a `CocApi.fetch` (no
    call state) coc.py's own function runs. As there: the text for another Content-Type, None
    for an empty body, an error for text that is not JSON.
    """
    state = _call.get()
    if state is None:
        return await _coc_json_or_text(response)
    state.cache_control = response.headers.get("Cache-Control")
    state.ages = response.headers.getall("Age", [])
    if not _JSON_CONTENT_TYPE.match(response.content_type):
        return await response.text(encoding="utf-8")
    body = await response.read()
    if not body or body.isspace():
        return None
    if not 200 <= response.status < 300:
        return _ANY.decode(body)  # an error: coc.py reads its reason and message
    found = outline(body)
    state.body = body
    return found


# The object's top level, each value left as its JSON text (checked, never built).
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ANY = msgspec.json.Decoder()
OUTLINED = ("tag", "state")  # the values `check_body` reads


def outline(body: bytes) -> Any:
    """What the checks read of a JSON text, having validated all of it: for an object, a dict of
    its keys, with the values of `OUTLINED` parsed and every other value None; anything else
    (an array, a string: refused by `check_body`), parsed.

    A player is about 1,000 Python objects that nobody reads: building them was the drain's
    largest single cost per request (orjson: 266 µs of CPU for 23 KB within a drain, where this
    takes 62: bench/drain.md). Raises `msgspec.DecodeError` (not JSON; nested too deeply for the
    interpreter) or `UnicodeDecodeError` (not UTF-8, which Postgres would refuse: msgspec does
    not check the strings it skips).
    """
    if not body.isascii():
        body.decode()
    try:
        top = _TOP_LEVEL.decode(body)
    except msgspec.ValidationError:  # JSON, but not an object
        return _ANY.decode(body)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None
    found = dict.fromkeys(top)
    for key in OUTLINED:
        if key in top:
            found[key] = _ANY.decode(top[key])
    return found


# coc.py calls this module-level function from `HTTPClient.request` and offers no hook for it.
coc.http.json_or_text = _json_or_text


class _PacedConnector(aiohttp.TCPConnector):
    """Tells the rate limiter when each request really goes out: once it has a connection and
    its bytes are written. A pooled connection is at hand; a new one costs a TCP (and TLS)
    handshake, tens of milliseconds in which the limiter's next group must not catch up with
    this call.

    The note is taken when the task step that got the connection is over: aiohttp writes a GET
    in that same step, before it first waits for the answer. Taken at the connection, a pause
    between the two (a garbage collection, the CPU given to another process) would let the
    request leave that much later than noted, and the next group follow it too closely: 20 ms
    is enough at 30/s to put 31 calls in one second of the API's count.
    """

    def __init__(self, limiter: RateLimiter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._limiter = limiter

    async def connect(self, req, traces, timeout):  # type: ignore[no-untyped-def]
        connection = await super().connect(req, traces, timeout)
        asyncio.get_running_loop().call_soon(self._limiter.note_sent)
        return connection


class _RawClient(coc.Client):
    """coc.Client without its static game data: 4.7 MB of JSON the raw calls never read."""

    def _load_static(self) -> None:
        pass


class CocApi:
    """Fetch raw player, clan and current-war JSON; raise our error classes for the rest."""

    def __init__(self, client: coc.Client) -> None:
        self.client = client
        self._getters: dict[str, Callable[[str], Awaitable[dict[str, Any]]]] = {
            "player": client.http.get_player,
            "clan": client.http.get_clan,
            "war": client.http.get_clan_current_war,
        }

    @classmethod
    async def connect(
        cls,
        *,
        base_url: str,
        limiter: RateLimiter,
        tokens: tuple[str, ...] = (),
        email: str | None = None,
        password: str | None = None,
        request_timeout: float = 10.0,
        max_in_flight: int = 64,
    ) -> CocApi:
        """Log in with static tokens, or with email and password (coc.py creates IP-bound keys)."""
        key_count = max(1, len(tokens))
        client = _RawClient(
            base_url=base_url,
            key_count=1,
            # coc.py sizes a semaphore as keys x throttle_limit; our limiter does the pacing.
            throttle_limit=max(1, -(-max_in_flight // key_count)),
            throttler=throttler_for(limiter),
            connector=_PacedConnector(limiter),
            cache_max_size=0,
            lookup_cache=False,
            update_cache=False,
            correct_tags=False,
            stats_max_size=0,  # per-endpoint latency stats: the ledger keeps each call's latency
            timeout=request_timeout,
            load_game_data=coc.LoadGameData(never=True),
        )
        try:
            if tokens:
                await client.login_with_tokens(*tokens)
            elif email and password:
                await client.login(email, password)
            else:
                raise ValueError("CocApi.connect needs tokens, or email and password")
        except coc.InvalidCredentials:
            raise SystemicError(
                Reason.CREDENTIALS, "the developer portal refused the email and password"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            await _close_quietly(client)
            raise SystemicError(
                Reason.LOGIN, f"could not reach the developer portal: {type(exc).__name__}"
            ) from None
        except coc.HTTPException as exc:
            await _close_quietly(client)
            raise SystemicError(
                Reason.LOGIN, f"developer portal answered {exc.status}: {exc.reason}"
            ) from None
        except RuntimeError as exc:  # coc.py: no key could be found or created
            await _close_quietly(client)
            raise SystemicError(Reason.LOGIN, first_line(exc, 200)) from None
        return cls(client)

    async def close(self) -> None:
        await _close_quietly(self.client)

    async def fetch(
        self, kind: str, tag: str, *, timeout: float, within: float | None = None, priority: bool = False
    ) -> Fetched:
        """One API call: at most `timeout` seconds once the rate limiter lets it go, and
        everything (the wait for the limiter included) within `within` seconds if given.
        A `priority` call is let go by the limiter before plain ones.

        Raises `RequestError` (this request is bad: 404, private war log, 400),
        `TransientError` (timeout, 5xx: may pass) or `SystemicError` (maintenance,
        credentials, throttling: the circuit should open).
        """
        loop = asyncio.get_running_loop()
        state = _CallState(timeout, priority)
        token = _call.set(state)
        try:
            async with asyncio.timeout(None if within is None else loop.time() + within) as state.scope:
                return await self._fetch(kind, tag, state)
        except TimeoutError:
            raise TransientError(Reason.TIMEOUT, f"no answer within {timeout:.1f} s") from None
        finally:
            _call.reset(token)

    async def _fetch(self, kind: str, tag: str, state: _CallState) -> Fetched:
        try:
            data = await self._getters[kind](tag)
        except Exception as exc:
            raise classify(exc, kind=kind, tag=tag) from None
        latency = time.monotonic() - state.sent_at
        check_body(data, kind=kind, tag=tag)
        assert state.body is not None  # a JSON object was read: `check_body` passed
        status = data.get("status_code", 200)
        lifetime = fresh_for(state.cache_control, state.ages)
        fresh_until = None if lifetime is None else state.sent_at + lifetime
        return Fetched(state.body, status, round(latency * 1000), time.time(), fresh_until)


def _bad_response(detail: str) -> TransientError:
    return TransientError(Reason.BAD_RESPONSE, detail, http_status=200)


def check_body(data: Any, *, kind: str, tag: str) -> None:
    """Raise `TransientError` (`bad_response`) unless the API answered the JSON object asked for.

    coc.py returns a successful answer's `outline` (with its own keys added), or its text when
    the Content-Type was not JSON (the real API never does that: something in between
    answered). The body must be an object naming what was asked for: the player or clan with
    this tag, or a war with a `state`.
    """
    if isinstance(data, str):
        # An error page says what went wrong in its text, not its markup.
        text = " ".join(_MARKUP.sub(" ", data).split())
        shown = repr(excerpt(text.encode(), limit=80)) if text else "nothing"
        raise _bad_response(f"the API answered 200 with {shown} under a Content-Type that is not JSON")
    if not isinstance(data, dict):
        raise _bad_response(f"the API answered 200 with a JSON {type(data).__name__}, not an object")
    body = {k: v for k, v in data.items() if k not in INJECTED_KEYS}
    if not body:
        raise _bad_response("the API answered 200 with an empty body")
    if kind == "war":
        if not isinstance(body.get("state"), str):
            raise _bad_response("the API's war has no 'state'")
    elif body.get("tag") != tag:
        found = body.get("tag")
        shown = excerpt(str(found).encode(), limit=30) if found is not None else "no tag"
        raise _bad_response(f"asked for {kind} {tag}, the API's body names {shown!r}")


def _raised_by_coc_http(exc: BaseException) -> bool:
    # coc.py stores its cache hints into whatever the body parsed to (a list, a string): that
    # TypeError comes from coc/http.py itself, not from a bug of ours.
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == coc.http.__file__


def classify(exc: Exception, *, kind: str, tag: str) -> Exception:
    """Map whatever coc.py or aiohttp raised to a request, transient or systemic error."""
    match exc:
        case coc.NotFound():
            return RequestError(Reason.NOT_FOUND, f"no {kind} with tag {tag}", http_status=404)
        case coc.Maintenance():
            return SystemicError(Reason.MAINTENANCE, "the API is in maintenance (503)", http_status=503)
        case coc.Forbidden() if kind == "war" and exc.reason == "accessDenied" and not exc.message:
            return RequestError(
                Reason.PRIVATE_WAR_LOG, f"clan {tag} keeps its war log private", http_status=403
            )
        case coc.Forbidden():
            detail = (
                "the API key's IP does not match"
                if exc.reason == "accessDenied.invalidIp"
                else "access denied"
            )
            return SystemicError(Reason.FORBIDDEN, f"{detail} ({exc.reason})", http_status=403)
        case _ReloginFailed():
            return SystemicError(
                Reason.FORBIDDEN, "accessDenied.invalidIp again after re-login", http_status=403
            )
        case coc.InvalidArgument():
            return RequestError(Reason.BAD_REQUEST, f"the API rejected {tag}: {exc.reason}", http_status=400)
        case coc.GatewayError():
            return TransientError(
                Reason.UPSTREAM_ERROR, f"the API kept failing: {exc.reason}", http_status=exc.status
            )
        case coc.HTTPException() if exc.status == 429:
            return SystemicError(
                Reason.THROTTLED, "the API throttled us (429 requestThrottled)", http_status=429
            )
        case coc.HTTPException() if isinstance(exc.status, int) and exc.status >= 500:
            return TransientError(Reason.UPSTREAM_ERROR, f"{exc.status} {exc.reason}", http_status=exc.status)
        case coc.HTTPException():
            return RequestError(Reason.HTTP_ERROR, f"{exc.status} {exc.reason}", http_status=exc.status)
        case _RetryRefused(timed_out=True):
            return TransientError(Reason.TIMEOUT, "the API did not answer in time")
        case _RetryRefused():
            return TransientError(Reason.UPSTREAM_ERROR, "the API answered with a server error (5xx)")
        case aiohttp.ClientError():
            return TransientError(Reason.CONNECTION_ERROR, f"{type(exc).__name__}: {str(exc)[:200]}")
        case msgspec.DecodeError() | UnicodeDecodeError():
            # The body claimed to be JSON and was not (truncated, HTML, invalid UTF-8, too deep).
            return _bad_response(f"the API's body is not valid JSON: {exc}")
        case TypeError() if _raised_by_coc_http(exc):
            return _bad_response(f"the API answered 200 with a body coc.py cannot use: {exc}")
        case _:
            return exc


async def _close_quietly(client: coc.Client) -> None:
    if client.http is not None:
        try:
            await client.close()
        except Exception:  # closing is best effort; the session may never have opened
            log.debug("closing the coc.py client failed", exc_info=True)
