"""The CoC API simulator, over real HTTP: with aiohttp, with coc.py itself, and from a thread."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import coc
import pytest

from coclib.tags import TAG_ALPHABET
from coclib.testing.portal import route_portal_to
from coclib.testing.simulator import (
    CACHE_CONTROL,
    BadBody,
    Call,
    CocApiSimulator,
    SimulatorThread,
    simulated_body,
)

TOKEN = "test-token"
REPO = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[CocApiSimulator]:
    sim = CocApiSimulator(**options)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def coc_client(sim: CocApiSimulator, *tokens: str) -> AsyncIterator[coc.Client]:
    # cache_max_size=0: coc.py's cache would otherwise answer repeated URLs without a call.
    client = coc.Client(base_url=sim.base_url, cache_max_size=0)
    await client.login_with_tokens(*(tokens or (TOKEN,)))
    try:
        yield client
    finally:
        await client.close()


async def fetch(
    sim: CocApiSimulator, path: str, token: str | None = TOKEN, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(sim.base_url + path, headers=headers, **kwargs) as response,
    ):
        text = await response.text()
        is_json = response.content_type == "application/json"
        return response.status, json.loads(text) if is_json else text, dict(response.headers)


def war_tag(state: str) -> str:
    """A clan tag whose simulated current war is in `state` (bodies are deterministic)."""
    for first in TAG_ALPHABET[1:]:  # a tag never starts with '0'
        for second in TAG_ALPHABET:
            tag = f"#{first}{second}Q"
            if simulated_body("war", tag)["state"] == state:
                return tag
    raise AssertionError(f"no tag found in state {state}")


# --- bodies and headers ---------------------------------------------------------------------


def test_coc_py_fetches_player_clan_and_war() -> None:
    async def scenario() -> None:
        async with running() as sim, coc_client(sim) as client:
            player = await client.http.get_player("#2PP")
            assert player["tag"] == "#2PP"
            assert player["status_code"] == 200
            assert {
                "name",
                "townHallLevel",
                "expLevel",
                "trophies",
                "bestTrophies",
                "leagueTier",
                "troops",
                "heroes",
            } <= player.keys()

            clan = await client.http.get_clan("#2PP")
            assert clan["tag"] == "#2PP"
            assert clan["members"] == len(clan["memberList"]) >= 1
            assert {"clanLevel", "clanPoints", "warLeague", "isWarLogPublic"} <= clan.keys()

            war = await client.http.get_clan_current_war(war_tag("inWar"))
            assert war["state"] == "inWar"
            assert war["clan"]["tag"] == war_tag("inWar")
            assert war["teamSize"] == len(war["clan"]["members"]) == len(war["opponent"]["members"])
            for key in ("preparationStartTime", "startTime", "endTime"):
                time.strptime(war[key], "%Y%m%dT%H%M%S.000Z")

            not_in_war = await client.http.get_clan_current_war(war_tag("notInWar"))
            assert not_in_war["state"] == "notInWar"

    asyncio.run(scenario())


def test_bodies_are_deterministic_per_tag_and_seed() -> None:
    async def scenario() -> None:
        async with running() as sim:
            _, first, _ = await fetch(sim, "/players/%232PP")
            _, again, _ = await fetch(sim, "/players/%232pp")  # the API upper-cases
            assert first == again == simulated_body("player", "#2PP")
        async with running(seed=7) as sim:
            _, other_seed, _ = await fetch(sim, "/players/%232PP")
            assert other_seed["tag"] == "#2PP"
            assert other_seed != first

    asyncio.run(scenario())


def test_war_totals_are_consistent_with_attacks() -> None:
    war = simulated_body("war", war_tag("warEnded"))
    for side, enemy in (("clan", "opponent"), ("opponent", "clan")):
        made = [a for m in war[side]["members"] for a in m.get("attacks", [])]
        assert war[side]["attacks"] == len(made)
        bests = [m["bestOpponentAttack"] for m in war[enemy]["members"] if "bestOpponentAttack" in m]
        assert war[side]["stars"] == sum(b["stars"] for b in bests)


def test_headers_and_call_log() -> None:
    async def scenario() -> None:
        async with running() as sim:
            for path, kind in (
                ("/players/%232PP", "player"),
                ("/clans/%232PP", "clan"),
                ("/clans/%232PP/currentwar", "war"),
            ):
                status, body, headers = await fetch(sim, path)
                assert status == 200
                assert body == simulated_body(kind, "#2PP")
                assert headers["Content-Type"] == "application/json; charset=utf-8"
                assert headers["Cache-Control"] == CACHE_CONTROL[kind]
            assert CACHE_CONTROL == {"player": "max-age=60", "clan": "max-age=60", "war": "max-age=120"}
            before = time.time()
            await fetch(sim, "/clans/%23PQL/members")
            assert [(c.kind, c.tag, c.status, c.token) for c in sim.calls] == [
                ("player", "#2PP", 200, TOKEN),
                ("clan", "#2PP", 200, TOKEN),
                ("war", "#2PP", 200, TOKEN),
                (None, None, 404, TOKEN),
            ]
            assert sim.calls[0].path == "/v1/players/%232PP"
            assert sim.calls[0].method == "GET"
            assert sim.calls[-1].at >= before
            sim.clear_calls()
            assert sim.calls == []

    asyncio.run(scenario())


# --- errors ---------------------------------------------------------------------------------


def test_not_found_and_invalid_tags() -> None:
    async def scenario() -> None:
        async with running() as sim, coc_client(sim) as client:
            sim.not_found.add("#2PP")
            with pytest.raises(coc.NotFound) as caught:
                await client.http.get_player("#2PP")
            assert caught.value.reason == "notFound"
            with pytest.raises(coc.NotFound):
                await client.http.get_clan_current_war("#2PP")
            for bad in ("/players/%23ABC", "/players/2PP", "/players/%232"):
                status, body, headers = await fetch(sim, bad)
                assert (status, body) == (404, {"reason": "notFound"})
                assert headers["Cache-Control"] == "public max-age=600"  # as the API's 404s say

    asyncio.run(scenario())


def test_private_war_log_is_accessdenied_without_message() -> None:
    async def scenario() -> None:
        async with running() as sim, coc_client(sim) as client:
            sim.private_war_log.add("#2PP")
            with pytest.raises(coc.Forbidden) as caught:
                await client.http.get_clan_current_war("#2PP")
            assert caught.value.status == 403
            assert caught.value.reason == "accessDenied"
            assert caught.value.message is None
            _, body, _ = await fetch(sim, "/clans/%232PP/currentwar")
            assert body == {"reason": "accessDenied"}
            clan = await client.http.get_clan("#2PP")  # the clan itself stays readable
            assert clan["isWarLogPublic"] is False

    asyncio.run(scenario())


def test_maintenance_and_server_error() -> None:
    async def scenario() -> None:
        async with running() as sim, coc_client(sim) as client:
            sim.maintenance = True
            with pytest.raises(coc.Maintenance) as caught:
                await client.http.get_player("#2PP")
            assert caught.value.reason == "inMaintenance"
            sim.maintenance, sim.server_error = False, True
            status, body, headers = await fetch(sim, "/players/%232PP")
            assert (status, body["reason"]) == (500, "unknownException")
            assert "Cache-Control" not in headers
            sim.reset_faults()
            assert (await fetch(sim, "/players/%232PP"))[0] == 200

    asyncio.run(scenario())


def test_bad_tokens_and_invalid_ip() -> None:
    async def scenario() -> None:
        async with running() as sim:
            async with coc_client(sim, "wrong-token") as client:
                with pytest.raises(coc.Forbidden) as caught:
                    await client.http.get_player("#2PP")
                assert (caught.value.reason, caught.value.message) == (
                    "accessDenied",
                    "Invalid authorization",
                )
            assert (await fetch(sim, "/players/%232PP", token=None))[:2] == (
                403,
                {"reason": "accessDenied", "message": "Invalid authorization"},
            )
            sim.invalid_ip = True
            status, body, _ = await fetch(sim, "/players/%232PP")
            assert (status, body["reason"]) == (403, "accessDenied.invalidIp")
            assert body["message"] == (
                "Invalid authorization: API key does not allow access from IP 127.0.0.1"
            )
            sim.invalid_ip = False
            sim.tokens.add("wrong-token")  # the token set is live
            assert (await fetch(sim, "/players/%232PP", token="wrong-token"))[0] == 200

    asyncio.run(scenario())


def test_tag_status_forces_a_status_for_every_kind() -> None:
    async def scenario() -> None:
        async with running() as sim:
            sim.tag_status["#2PP"] = 503
            for path in ("/players/%232PP", "/clans/%232PP", "/clans/%232PP/currentwar"):
                status, body, _ = await fetch(sim, path)
                assert (status, body["reason"]) == (503, "inMaintenance")
            assert (await fetch(sim, "/players/%23PQL"))[0] == 200
            sim.tag_status["#2PP"] = 502
            status, body, _ = await fetch(sim, "/players/%232PP")
            assert status == 502 and "Bad Gateway" in body  # HTML, like the real gateway

    asyncio.run(scenario())


# --- bodies the API should not send -------------------------------------------------------------


async def fetch_raw(sim: CocApiSimulator, path: str) -> tuple[int, bytes, dict[str, str]]:
    """Status, the body's bytes exactly as sent, and the headers."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(sim.base_url + path, headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


def test_bad_body_switches_put_these_bytes_on_the_wire() -> None:
    async def scenario() -> None:
        async with running() as sim:
            good = json.dumps(simulated_body("clan", "#2PP"), separators=(",", ":")).encode()
            api_json = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "max-age=60"}
            seen = {}
            for variant in BadBody:
                sim.bad_body["#2PP"] = variant
                seen[variant] = await fetch_raw(sim, "/clans/%232PP")
            assert all(status == 200 for status, _, _ in seen.values())

            def headers(variant: BadBody) -> dict[str, str]:
                sent = seen[variant][2]
                return {name: sent[name] for name in ("Content-Type", "Cache-Control") if name in sent}

            html = seen[BadBody.HTML][1]
            assert html.startswith(b"<!DOCTYPE html>") and html.rstrip().endswith(b"</html>")
            assert headers(BadBody.HTML) == {
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "no-store",
            }

            truncated = seen[BadBody.TRUNCATED_JSON][1]
            assert truncated == good[: len(good) // 2]
            with pytest.raises(json.JSONDecodeError):
                json.loads(truncated)
            assert headers(BadBody.TRUNCATED_JSON) == api_json

            assert json.loads(seen[BadBody.JSON_ARRAY][1]) == [simulated_body("clan", "#2PP")]
            assert headers(BadBody.JSON_ARRAY) == api_json
            assert isinstance(json.loads(seen[BadBody.JSON_STRING][1]), str)
            assert headers(BadBody.JSON_STRING) == api_json
            assert seen[BadBody.EMPTY][1] == b""
            assert seen[BadBody.EMPTY][2]["Content-Length"] == "0"
            assert headers(BadBody.EMPTY) == api_json

            huge = seen[BadBody.HUGE][1]
            assert len(huge) >= 20 * 1024 * 1024  # tens of MB, and still valid JSON of the right kind
            assert huge.startswith(good[:-1])
            parsed = json.loads(huge)
            assert set(parsed.pop("padding")) == {"x"}
            assert parsed == simulated_body("clan", "#2PP")
            assert headers(BadBody.HUGE) == api_json

            assert seen[BadBody.WRONG_CONTENT_TYPE][1] == good
            assert headers(BadBody.WRONG_CONTENT_TYPE) == {
                "Content-Type": "text/plain; charset=utf-8",
                "Cache-Control": "max-age=60",
            }

    asyncio.run(scenario())


def test_bad_body_is_per_tag_replaces_only_a_200_and_is_reset() -> None:
    async def scenario() -> None:
        async with running() as sim:
            sim.bad_body["#2PP"] = "html"  # a variant's name works too
            assert sim.bad_body["#2PP"] is BadBody.HTML
            with pytest.raises(ValueError):
                sim.bad_body["#2PP"] = "htm"  # a typo fails here, not as a puzzling answer later
            for path in ("/players/%232PP", "/clans/%232pp", "/clans/%232PP/currentwar"):
                status, body, headers = await fetch_raw(sim, path)
                assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8"), path
            status, body, _ = await fetch_raw(sim, "/players/%23PQL")  # another tag: untouched
            assert (status, json.loads(body)) == (200, simulated_body("player", "#PQL"))
            sim.maintenance = True  # faults in front of the body still answer first
            assert (await fetch_raw(sim, "/players/%232PP"))[0] == 503
            sim.maintenance = False
            sim.not_found.add("#2PP")
            assert (await fetch_raw(sim, "/players/%232PP"))[0] == 404
            sim.reset_faults()
            assert sim.bad_body == {}
            status, body, _ = await fetch_raw(sim, "/players/%232PP")
            assert (status, json.loads(body)) == (200, simulated_body("player", "#2PP"))

    asyncio.run(scenario())


def test_what_coc_py_makes_of_each_bad_body() -> None:
    """The worker's client meets these; its answer to each is what the worker must classify."""

    async def scenario() -> None:
        async with running() as sim, coc_client(sim) as client:
            sim.huge_body_bytes = 1024 * 1024  # the size is not what this test is about
            outcomes: dict[BadBody, Any] = {}
            for variant in BadBody:
                sim.bad_body["#2PP"] = variant
                try:
                    outcomes[variant] = await client.http.get_player("#2PP")
                except Exception as exc:  # what coc.py raises is the finding
                    outcomes[variant] = exc
            assert len(sim.calls) == len(BadBody)  # one call each: coc.py retries none of them

            assert isinstance(outcomes[BadBody.HTML], str)  # the page's text, status 200
            assert outcomes[BadBody.HTML].startswith("<!DOCTYPE html>")
            assert isinstance(outcomes[BadBody.TRUNCATED_JSON], ValueError)  # orjson.JSONDecodeError
            # coc.py writes its Cache-Control key into whatever it parsed: a list or str refuses.
            for variant in (BadBody.JSON_ARRAY, BadBody.JSON_STRING, BadBody.WRONG_CONTENT_TYPE):
                assert isinstance(outcomes[variant], TypeError), variant
            # An empty body reads as {} and then carries only coc.py's injected keys.
            assert set(outcomes[BadBody.EMPTY]) == {"status_code", "timestamp", "_response_retry"}
            huge = outcomes[BadBody.HUGE]
            assert len(huge.pop("padding")) >= 1000 * 1000
            assert {k: huge[k] for k in simulated_body("player", "#2PP")} == simulated_body("player", "#2PP")

    asyncio.run(scenario())


# --- timing -----------------------------------------------------------------------------------


def test_latency_delays_each_answer() -> None:
    async def scenario() -> None:
        async with running() as sim:
            assert sim.latency == (0.0, 0.0)  # no delay unless a test asks for one
            sim.latency = (0.2, 0.2)
            started = time.perf_counter()
            await fetch(sim, "/players/%232PP")
            assert time.perf_counter() - started >= 0.2  # a lower bound: a slow machine only adds

    asyncio.run(scenario())


def test_hang_provokes_client_timeouts() -> None:
    async def scenario() -> None:
        async with running() as sim:
            sim.hang = 60.0  # far beyond the client's timeout (and the test's own)
            with pytest.raises(asyncio.TimeoutError):
                await fetch(sim, "/players/%232PP", timeout=aiohttp.ClientTimeout(total=0.3))
            assert [c.status for c in sim.calls] == [200]  # logged on arrival

    asyncio.run(scenario())


class ManualClock:
    """A clock that moves only when the test moves it."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rate_limit_throttles_per_token_per_second() -> None:
    clock = ManualClock()

    async def scenario() -> None:
        async with running(rate_limit=5, tokens=("a", "b"), clock=clock) as sim:
            answers = await asyncio.gather(*(fetch(sim, "/players/%232PP", token="a") for _ in range(8)))
            statuses = sorted(status for status, _, _ in answers)
            assert statuses == [200] * 5 + [429] * 3
            throttled = next(body for status, body, _ in answers if status == 429)
            assert throttled["reason"] == "requestThrottled"
            assert sim.max_calls_in_window() == 8
            assert (await fetch(sim, "/players/%232PP", token="b"))[0] == 200  # per token
            clock.now += 0.999  # still inside the second of the first eight
            assert (await fetch(sim, "/players/%232PP", token="a"))[0] == 429
            clock.now += 0.001  # the window is (now - 1 s, now]: the first eight have left it
            assert (await fetch(sim, "/players/%232PP", token="a"))[0] == 200
            assert {call.at for call in sim.calls} == {1_000.0, 1_000.999, 1_001.0}

    asyncio.run(scenario())


def test_throttled_switch() -> None:
    async def scenario() -> None:
        async with running() as sim, coc_client(sim) as client:
            sim.throttled = True
            with pytest.raises(coc.HTTPException) as caught:
                await client.http.get_player("#2PP")
            assert (caught.value.status, caught.value.reason) == (429, "requestThrottled")

    asyncio.run(scenario())


def test_max_calls_in_window_uses_half_open_windows() -> None:
    sim = CocApiSimulator()
    sim.calls.extend(
        Call(at, "GET", "/v1/players/%232PP", "player", "#2PP", 200, TOKEN)
        for at in (10.0, 10.25, 10.5, 11.0, 11.125)
    )  # exact binary fractions
    assert sim.max_calls_in_window(1.0) == 4  # [10.25, 11.25); [10.0, 11.0) holds only 3
    assert sim.max_calls_in_window(0.5) == 2  # 10.0 and 10.5 are not in one [t, t + 0.5)
    assert sim.max_calls_in_window(0.125) == 1
    assert CocApiSimulator().max_calls_in_window() == 0


def test_tightest_span_and_summary() -> None:
    sim = CocApiSimulator(rate_limit=2)
    statuses = (200, 200, 429, 200, 200)
    sim.calls.extend(
        Call(at, "GET", "/v1/players/%232PP", "player", "#2PP", status, TOKEN)
        for at, status in zip((10.0, 10.25, 10.5, 11.0, 11.125), statuses, strict=True)
    )
    assert sim.tightest_span(2) == 0.125  # 11.0 to 11.125
    assert sim.tightest_span(3) == 0.5  # 10.0 to 10.5
    assert sim.tightest_span(5) == 1.125
    assert sim.tightest_span(6) is None
    assert sim.summary() == (
        "calls=5 throttled=1 max_calls_in_any_second=4 tightest_span_of_3_calls_s=0.5000"
    )


# --- developer portal -------------------------------------------------------------------------


def test_coc_py_email_password_login_through_the_portal() -> None:
    async def scenario() -> None:
        async with running() as sim:
            with route_portal_to(sim.portal_url):
                client = coc.Client(base_url=sim.base_url, cache_max_size=0)
                await client.login(sim.email, sim.password)
                try:
                    player = await client.http.get_player("#2PP")
                finally:
                    await client.close()
                (key,) = sim.portal_keys
                assert key["cidrRanges"] == ["127.0.0.1"]
                assert player["tag"] == "#2PP"
                assert sim.calls[-1].token == key["key"]

                again = coc.Client(base_url=sim.base_url, cache_max_size=0)
                await again.login(sim.email, sim.password)  # reuses the key
                await again.close()
                assert len(sim.portal_keys) == 1

                wrong = coc.Client(base_url=sim.base_url, cache_max_size=0)
                with pytest.raises(coc.InvalidCredentials):
                    await wrong.login(sim.email, "not-the-password")

    asyncio.run(scenario())


def test_portal_endpoints() -> None:
    async def scenario() -> None:
        async with running() as sim:
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as portal:
                api = sim.portal_url + "/api"
                async with portal.post(api + "/apikey/list") as response:
                    assert response.status == 403  # no session cookie yet
                async with portal.post(
                    api + "/login", json={"email": sim.email, "password": "nope"}
                ) as response:
                    assert response.status == 403
                async with portal.post(
                    api + "/login", json={"email": sim.email, "password": sim.password}
                ) as response:
                    assert response.status == 200
                    token = (await response.json())["temporaryAPIToken"]
                # Decoded exactly as coc.py does, to find its own IP.
                payload = json.loads(base64.b64decode(token.split(".")[1] + "===="))
                assert payload["limits"][1]["cidrs"][0] == "127.0.0.1/32"

                created = []
                for n in range(10):
                    body = {
                        "name": f"k{n}",
                        "description": "d",
                        "cidrRanges": ["127.0.0.1"],
                        "scopes": ["clash"],
                    }
                    async with portal.post(api + "/apikey/create", json=body) as response:
                        assert response.status == 200
                        created.append((await response.json())["key"])
                async with portal.post(api + "/apikey/create", json=body) as response:
                    assert response.status != 200  # ten keys per account at most
                async with portal.post(api + "/apikey/list") as response:
                    assert [k["id"] for k in (await response.json())["keys"]] == [k["id"] for k in created]
                assert set(created[0]) >= {"id", "name", "description", "cidrRanges", "scopes", "key"}

                assert (await fetch(sim, "/players/%232PP", token=created[0]["key"]))[0] == 200
                async with portal.post(api + "/apikey/revoke", json={"id": created[0]["id"]}) as response:
                    assert response.status == 200
                assert (await fetch(sim, "/players/%232PP", token=created[0]["key"]))[0] == 403
                assert len(sim.portal_keys) == 9
            assert sim.calls and all(c.path.startswith("/v1/") for c in sim.calls)

    asyncio.run(scenario())


# --- thread and command line ------------------------------------------------------------------


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_simulator_thread_serves_synchronous_callers() -> None:
    with SimulatorThread(CocApiSimulator()) as sim:
        url = sim.base_url + "/players/%232PP"
        assert _get(url, TOKEN) == 200
        sim.maintenance = True  # flipped from this thread while the server runs in its own
        assert _get(url, TOKEN) == 503
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_command_line_serves_until_killed() -> None:
    command = [
        sys.executable,
        "-m",
        "coclib.testing.simulator",
        "--port",
        "0",
        "--tokens",
        "a,b",
        "--latency",
        "0,0.01",
        "--rate-limit",
        "30",
    ]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # printed once listening, with the chosen port
            base_url = line.split("base_url=")[1].split()[0]
            assert _get(base_url + "/clans/%232PP", "b") == 200
            assert _get(base_url + "/clans/%232PP", "c") == 403
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0  # SIGTERM is a clean stop
        # …and it says what it saw: both calls count, the refused one too (whether they fell in
        # one second depends on how busy the machine is, so either count is right).
        assert re.fullmatch(
            r"CoC API simulator stopped: calls=2 throttled=0 max_calls_in_any_second=[12]"
            r" tightest_span_of_31_calls_s=none",
            process.stdout.read().strip(),
        )


# --- freshness: Cache-Control, Age, bodies that change over time ------------------------------


def test_cache_control_and_age_headers_are_the_ones_asked_for() -> None:
    async def scenario() -> None:
        async with running() as sim:
            for kind, path in (("player", "/players/%232PP"), ("war", "/clans/%232PP/currentwar")):
                _, _, headers = await fetch(sim, path)
                assert headers["Cache-Control"] == CACHE_CONTROL[kind] and "Age" not in headers
            sim.age = 7
            sim.tag_age["#2PQ"] = 59
            sim.cache_control["clan"] = "public max-age=600"
            _, _, headers = await fetch(sim, "/players/%232PP")
            assert headers["Age"] == "7"
            _, _, headers = await fetch(sim, "/players/%232PQ")
            assert headers["Age"] == "59"
            _, _, headers = await fetch(sim, "/clans/%232PP")
            assert headers["Cache-Control"] == "public max-age=600"
            sim.cache_control["player"] = None
            _, _, headers = await fetch(sim, "/players/%232PP")
            assert "Cache-Control" not in headers
            sim.reset_faults()
            _, _, headers = await fetch(sim, "/players/%232PP")
            assert headers["Cache-Control"] == "max-age=60" and "Age" not in headers

    asyncio.run(scenario())


def test_bodies_change_at_each_tags_own_period_and_calls_are_counted_per_tag() -> None:
    now = [1000.0]

    async def scenario() -> None:
        async with running(clock=lambda: now[0]) as sim:
            sim.change_every["#2PP"] = 30.0
            sim.change_period = lambda kind, tag: 100.0 if tag == "#2PQ" else None
            first = {tag: (await fetch(sim, f"/players/%23{tag[1:]}"))[1] for tag in ("#2PP", "#2PQ", "#2PR")}
            assert first["#2PP"] == simulated_body("player", "#2PP")
            now[0] += 30.0  # #2PP's first change; #2PQ's comes at 100 s, #2PR never changes
            second = {
                tag: (await fetch(sim, f"/players/%23{tag[1:]}"))[1] for tag in ("#2PP", "#2PQ", "#2PR")
            }
            assert second["#2PP"] != first["#2PP"]
            assert second["#2PP"]["trophies"] == first["#2PP"]["trophies"] + 1
            assert second["#2PQ"] == first["#2PQ"] and second["#2PR"] == first["#2PR"]
            now[0] += 70.0
            assert (await fetch(sim, "/players/%232PQ"))[1] != first["#2PQ"]
            assert sim.calls_per_tag() == {"#2PP": 2, "#2PQ": 3, "#2PR": 2}
            assert sim.calls_per_tag("clan") == {}

    asyncio.run(scenario())


def test_the_api_cache_serves_one_version_per_max_age_and_says_how_old_it_is() -> None:
    now = [1000.0]

    async def scenario() -> None:
        async with running(clock=lambda: now[0]) as sim:
            sim.api_cache = True
            sim.change_every["#2PP"] = 10.0
            _, first, headers = await fetch(sim, "/players/%232PP")
            assert headers["Age"] == "0" and first == simulated_body("player", "#2PP")
            now[0] += 15.0  # the body changed at 10 s, but the API's copy lives 60 s
            _, second, headers = await fetch(sim, "/players/%232PP")
            assert second == first and headers["Age"] == "15"
            now[0] += 45.0  # 60 s: the copy expired, the next call gets the body of now
            _, third, headers = await fetch(sim, "/players/%232PP")
            assert third["trophies"] == first["trophies"] + 6 and headers["Age"] == "0"

    asyncio.run(scenario())
