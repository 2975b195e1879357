"""The coc.py wrapper against the simulator: raw JSON, classification, bounded calls."""

from __future__ import annotations

import asyncio

import pytest

from coclib import coc_api
from coclib.coc_api import CocApi
from coclib.errors import RequestError, SystemicError, TransientError
from coclib.ratelimit import RateLimiter
from coclib.testing.portal import route_portal_to
from coclib.testing.simulator import simulated_body


def call(simulator, kind, tag, *, timeout=5.0, limiter=None, **login):
    limiter = limiter or RateLimiter(30)
    login = login or {"tokens": ("test-token",)}

    async def go():
        api = await CocApi.connect(base_url=simulator.base_url, limiter=limiter, **login)
        try:
            return await api.fetch(kind, tag, timeout=timeout)
        finally:
            await api.close()

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["player", "clan", "war"])
def test_fetch_returns_the_body_without_injected_keys(simulator, kind):
    fetched = call(simulator, kind, "#2PP")
    assert fetched.data == simulated_body(kind, "#2PP")
    assert fetched.http_status == 200 and fetched.latency_ms >= 0


def test_cache_is_off_every_fetch_reaches_the_api(simulator):
    async def go():
        api = await CocApi.connect(
            base_url=simulator.base_url, limiter=RateLimiter(30), tokens=("test-token",)
        )
        simulator.not_found.add("#2PQ")
        for _ in range(2):
            with pytest.raises(RequestError):
                await api.fetch("player", "#2PQ", timeout=5)
        simulator.not_found.clear()
        await api.fetch("player", "#2PQ", timeout=5)  # a cached 404 would be raised again here
        await api.close()

    asyncio.run(go())
    assert len(simulator.calls) == 3


@pytest.mark.parametrize(
    ("fault", "kind", "expected", "reason"),
    [
        (lambda s: s.not_found.add("#2PP"), "player", RequestError, "not_found"),
        (lambda s: s.private_war_log.add("#2PP"), "war", RequestError, "private_war_log"),
        (lambda s: setattr(s, "maintenance", True), "player", SystemicError, "maintenance"),
        (lambda s: setattr(s, "throttled", True), "clan", SystemicError, "throttled"),
        (lambda s: setattr(s, "invalid_ip", True), "player", SystemicError, "forbidden"),
        (lambda s: s.tokens.clear(), "war", SystemicError, "forbidden"),
        (lambda s: setattr(s, "server_error", True), "player", TransientError, "upstream_error"),
    ],
)
def test_every_outcome_is_classified(simulator, fault, kind, expected, reason):
    fault(simulator)
    with pytest.raises(expected) as info:
        call(simulator, kind, "#2PP")
    assert getattr(info.value, "reason", None) == reason or getattr(info.value, "cause", None) == reason


def test_a_server_error_is_not_retried_by_coc_py(simulator):
    simulator.server_error = True
    with pytest.raises(TransientError):
        call(simulator, "player", "#2PP")
    assert len(simulator.calls) == 1  # coc.py would have sent five


def test_a_hanging_api_is_bounded_by_the_callers_timeout(simulator):
    # The API never answers within the test's life: only the caller's own timeout can end the
    # call (else pytest-timeout fails the test), and it is reported as a timeout, tried once.
    simulator.hang = 3600.0
    with pytest.raises(TransientError) as info:
        call(simulator, "player", "#2PP", timeout=0.5)
    assert info.value.reason == "timeout"
    assert len(simulator.calls) == 1


def test_every_send_goes_through_the_limiter(simulator):
    limiter = RateLimiter(30)
    simulator.not_found.add("#2PQ")
    call(simulator, "player", "#2PP", limiter=limiter)
    with pytest.raises(RequestError):
        call(simulator, "player", "#2PQ", limiter=limiter)
    assert limiter.granted == len(simulator.calls) == 2


def test_a_request_held_up_after_getting_its_connection_is_noted_as_sent_when_written(simulator, monkeypatch):
    """The limiter spaces the next group from when a request really left (test_seam.py): a
    pause after the connection is had and before the request is written moves that moment."""
    now = [100.0]  # the limiter's clock, moved by hand
    limiter = RateLimiter(30, clock=lambda: now[0], wall=lambda: 1_000.0)

    class HeldUp(coc_api._PacedConnector):
        async def connect(self, req, traces, timeout):
            connection = await super().connect(req, traces, timeout)
            now[0] += 0.5  # the process stalls here, before aiohttp writes the request
            return connection

    monkeypatch.setattr(coc_api, "_PacedConnector", HeldUp)
    call(simulator, "player", "#2PP", limiter=limiter)
    assert len(simulator.calls) == 1
    # Unix time of the latest start: the stall's end (100.5 on the clock, 1,000 on the wall),
    # not its beginning (999.5).
    assert limiter.last_start() == pytest.approx(1_000.0)


def test_email_and_password_login_creates_a_key_through_the_portal(simulator):
    with route_portal_to(simulator.portal_url):
        fetched = call(simulator, "player", "#2PP", email=simulator.email, password=simulator.password)
    assert fetched.data["tag"] == "#2PP"
    created = [k["key"] for k in simulator.portal_keys]
    assert simulator.calls[-1].token in created


def test_a_wrong_password_is_a_systemic_credentials_error(simulator):
    with route_portal_to(simulator.portal_url), pytest.raises(SystemicError) as info:
        call(simulator, "player", "#2PP", email=simulator.email, password="wrong-password")
    assert info.value.reason == "credentials"
    assert simulator.calls == []


def test_invalid_ip_after_relogin_is_systemic(simulator):
    simulator.invalid_ip = True
    with route_portal_to(simulator.portal_url), pytest.raises(SystemicError) as info:
        call(simulator, "player", "#2PP", email=simulator.email, password=simulator.password)
    assert info.value.reason == "forbidden"
    assert len(simulator.calls) == 2  # the first try and one after coc.py's re-login
