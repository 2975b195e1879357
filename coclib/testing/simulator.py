"""A Clash of Clans API simulator: the project's only test double for the CoC API.

An aiohttp.web server that answers the endpoints the refresh worker uses the way the real API
does: status codes, error bodies, `Cache-Control`, bearer tokens, latency, per-token rate limits,
plus the developer-portal endpoints coc.py's email/password login uses (see `portal.py` for
routing coc.py there). Tests flip the public switches between steps; every API call is logged.

Run it alone with ``python -m coclib.testing.simulator --port 8080 --tokens a,b``.

Realism sources (captured real responses in ClashKingInc/ClashOfClansMockAPI, folder data/):
* Cache-Control, verbatim:
    players/player/FOUND.json                      "max-age=60"
    clans/clans/CLAN.json                          "max-age=60"
    clans/currentwar/{PREPARATION,INWAR,ENDED}.json "max-age=120"
    leagues/leaguetier/BADREQUEST.json              "public max-age=600"  (the API uses both forms;
    coc.py strips either prefix before reading the number)
* Content-Type of those captures: "application/json; charset=utf-8".
* Field names and shapes: the same files, trimmed into data/*.json templates.
Error bodies the captures do not contain (see the module constants below) follow what client
code in public repositories matches against for Supercell's APIs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import hmac
import math
import random
import re
import secrets
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import orjson
from aiohttp import web

CACHE_CONTROL = {"player": "max-age=60", "clan": "max-age=60", "war": "max-age=120"}
JSON_CONTENT_TYPE = "application/json; charset=utf-8"

# Error bodies. The mock repository's data/ holds no 403/404/429/500/503 capture, so these follow
# the exact strings public client code matches for Supercell's APIs ('{"reason":"notFound"}',
# '{"reason":"accessDenied","message":"Invalid authorization"}', the invalidIp message), recorded
# bodies in public test fixtures (inMaintenance, unknownException), and the API's documented 429
# text. The private war log answer has no "message" key: that absence is how clients (and
# DESIGN.md) tell it from a credentials fault.
NOT_FOUND = {"reason": "notFound"}
PRIVATE_WAR_LOG = {"reason": "accessDenied"}
INVALID_AUTHORIZATION = {"reason": "accessDenied", "message": "Invalid authorization"}
THROTTLED = {
    "reason": "requestThrottled",
    "message": "Request was throttled, because amount of requests was above the threshold "
    "defined for the used API token.",
}
MAINTENANCE = {
    "reason": "inMaintenance",
    "message": "API is currently in maintenance, please come back later",
}
UNKNOWN_EXCEPTION = {"reason": "unknownException"}
BAD_REQUEST = {"reason": "badRequest", "message": "Invalid request"}


def invalid_ip_body(ip: str) -> dict[str, str]:
    """The 403 body for a key used from an IP address it is not bound to."""
    return {
        "reason": "accessDenied.invalidIp",
        "message": f"Invalid authorization: API key does not allow access from IP {ip}",
    }


_FORCED_BODIES = {
    400: BAD_REQUEST,
    403: INVALID_AUTHORIZATION,
    404: NOT_FOUND,
    429: THROTTLED,
    500: UNKNOWN_EXCEPTION,
    503: MAINTENANCE,
}
# Gateway errors come from the load balancer as HTML, not JSON (coc.py has a branch for it).
_GATEWAY_HTML = "<html><head><title>{0}</title></head><body><h1>{0}</h1></body></html>"
_GATEWAY_TEXT = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}

TAG_ALPHABET = "0289PYLQGRJCUV"
_VALID_TAG = re.compile(r"#[0289PYLQGRJCUV]{3,14}")
PORTAL_MAX_KEYS = 10
_DATA = Path(__file__).with_name("data")
_EPOCH = datetime(2025, 1, 1, 12, tzinfo=UTC)  # war times are fixed so bodies stay deterministic


@dataclass(frozen=True)
class Call:
    """One API call as the simulator saw it (portal calls are not logged)."""

    at: float  # time.time() at arrival, before latency
    method: str
    path: str  # as sent, still URL-encoded: /v1/players/%232PP
    kind: str | None  # "player" | "clan" | "war", None for any other path
    tag: str | None  # normalised the API's way
    status: int
    token: str | None


class _Answer(NamedTuple):
    status: int
    body: bytes
    cache_control: str | None = None
    content_type: str = JSON_CONTENT_TYPE


def _error(status: int, body: dict[str, str], cache_control: str | None = None) -> _Answer:
    return _Answer(status, orjson.dumps(body), cache_control)


def _forced(status: int) -> _Answer:
    if status in _GATEWAY_TEXT:
        html = _GATEWAY_HTML.format(_GATEWAY_TEXT[status]).encode()
        return _Answer(status, html, None, "text/html")
    return _error(status, _FORCED_BODIES.get(status, UNKNOWN_EXCEPTION))


def normalise_tag(raw: str) -> str:
    """The API's reading of a path tag: upper case, `O` read as `0`.

    A missing '#' is not added: the API then finds nothing (404), which is what a worker
    that forgot to normalise should see.
    """
    return raw.strip().upper().replace("O", "0")


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


# --- deterministic bodies -----------------------------------------------------------------

_SYLLABLES = (
    "ka",
    "ro",
    "mi",
    "zu",
    "thor",
    "vel",
    "an",
    "dra",
    "lo",
    "qui",
    "sen",
    "bar",
    "gor",
    "li",
    "ny",
    "ex",
    "ti",
    "mar",
)
_CLAN_WORDS = ("Warriors", "Legends", "Order", "Family", "Empire", "Raiders", "Knights")


@functools.cache
def _template(kind: str) -> dict[str, Any]:
    return orjson.loads((_DATA / f"{kind}.json").read_bytes())


def _rng(*parts: object) -> random.Random:
    # str seeds go through SHA-512, so they do not depend on PYTHONHASHSEED.
    return random.Random(":".join(map(str, parts)))


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _new_tag(rng: random.Random) -> str:
    # A tag is a base-14 number written in the game's alphabet, so it never starts with '0'.
    rest = "".join(rng.choice(TAG_ALPHABET) for _ in range(rng.randint(6, 8)))
    return "#" + rng.choice(TAG_ALPHABET[1:]) + rest


def _clan_identity(seed: int, tag: str) -> dict[str, Any]:
    """Name and level of a clan, the same wherever the clan appears (clan, war, player)."""
    rng = _rng(seed, "clan-identity", tag)
    name = f"{_name(rng)} {rng.choice(_CLAN_WORDS)}"
    return {"tag": tag, "name": name, "clanLevel": rng.randint(1, 30)}


def _level(rng: random.Random, max_level: int, growth: float) -> int:
    return max(1, min(max_level, round(max_level * growth * rng.uniform(0.75, 1.0))))


def _units(rng: random.Random, units: list[dict[str, Any]], growth: float) -> list[dict]:
    return [
        {
            "name": u["name"],
            "level": _level(rng, u["maxLevel"], growth),
            "maxLevel": u["maxLevel"],
            "village": u["village"],
        }
        for u in units
    ]


def _player(seed: int, tag: str) -> dict[str, Any]:
    t, rng = _template("player"), _rng(seed, "player", tag)
    th = rng.randint(6, 17)
    trophies, builder = rng.randint(400, 5600), rng.randint(200, 5000)
    body: dict[str, Any] = {
        "tag": tag,
        "name": _name(rng),
        "townHallLevel": th,
        "expLevel": rng.randint(8 * th, 15 * th),
        "trophies": trophies,
        "bestTrophies": trophies + rng.randint(0, 1500),
        "warStars": rng.randint(0, 200 * th),
        "attackWins": rng.randint(0, 250),
        "defenseWins": rng.randint(0, 30),
        "builderHallLevel": rng.randint(1, 10),
        "builderBaseTrophies": builder,
        "bestBuilderBaseTrophies": builder + rng.randint(0, 600),
    }
    in_clan = rng.random() < 0.85
    if in_clan:
        body["role"] = rng.choice(("member", "member", "admin", "coLeader", "leader"))
    body |= {
        "warPreference": rng.choice(("in", "out")),
        "donations": rng.randint(0, 3000),
        "donationsReceived": rng.randint(0, 3000),
        "clanCapitalContributions": rng.randint(0, 4_000_000),
    }
    if in_clan:
        body["clan"] = _clan_identity(seed, _new_tag(rng)) | {"badgeUrls": t["clanBadgeUrls"]}
    growth = th / 17
    return body | {
        "leagueTier": t["leagueTier"],
        "builderBaseLeague": t["builderBaseLeague"],
        "achievements": t["achievements"],
        "playerHouse": t["playerHouse"],
        "labels": t["labels"],
        "troops": _units(rng, t["troops"], growth),
        "heroes": _units(rng, t["heroes"], growth),
        "heroEquipment": _units(rng, t["heroEquipment"], growth),
        "spells": _units(rng, t["spells"], growth),
    }


def _clan_points(trophies: list[int]) -> int:
    # The game weights members by rank: 50 % of the top 10, 25 % of 11-20, and so on.
    weights = (0.5, 0.25, 0.12, 0.10, 0.03)
    ranked = sorted(trophies, reverse=True)[:50]
    return int(sum(tr * weights[i // 10] for i, tr in enumerate(ranked)))


def _clan_members(rng: random.Random, t: dict[str, Any], count: int) -> list[dict[str, Any]]:
    trophies = sorted((rng.randint(800, 5600) for _ in range(count)), reverse=True)
    roles = ["leader"] + [rng.choice(("member", "member", "admin", "coLeader")) for _ in range(count - 1)]
    rng.shuffle(roles)
    members = []
    for rank, (tr, role) in enumerate(zip(trophies, roles, strict=True), start=1):
        league = next(x["league"] for x in t["memberLeagues"] if tr >= x["minTrophies"])
        members.append(
            {
                "tag": _new_tag(rng),
                "name": _name(rng),
                "role": role,
                "expLevel": rng.randint(20, 300),
                "league": league,
                "trophies": tr,
                "builderBaseTrophies": rng.randint(200, 5000),
                "clanRank": rank,
                "previousClanRank": rng.randint(0, count),
                "donations": rng.randint(0, 2000),
                "donationsReceived": rng.randint(0, 2000),
                "playerHouse": t["memberPlayerHouse"],
                "builderBaseLeague": t["memberBuilderBaseLeague"],
            }
        )
    return members


def _clan(seed: int, tag: str, war_log_public: bool) -> dict[str, Any]:
    t, rng = _template("clan"), _rng(seed, "clan", tag)
    identity = _clan_identity(seed, tag)
    members = _clan_members(rng, t, rng.randint(1, 50))
    body: dict[str, Any] = {
        "tag": tag,
        "name": identity["name"],
        "type": rng.choice(t["type"]),
        "description": t["description"],
        "location": t["location"],
        "isFamilyFriendly": rng.random() < 0.3,
        "badgeUrls": t["badgeUrls"],
        "clanLevel": identity["clanLevel"],
        "clanPoints": _clan_points([m["trophies"] for m in members]),
        "clanBuilderBasePoints": _clan_points([m["builderBaseTrophies"] for m in members]),
        "clanCapitalPoints": rng.randint(0, 4000),
        "capitalLeague": t["capitalLeague"],
        "requiredTrophies": rng.choice((0, 400, 1000, 2000, 3000)),
        "warFrequency": rng.choice(("always", "moreThanOncePerWeek", "oncePerWeek", "never")),
        "warWinStreak": rng.randint(0, 20),
        "warWins": rng.randint(0, 800),
        "isWarLogPublic": war_log_public,
    }
    if war_log_public:  # the API shows ties and losses only for public war logs
        body |= {"warTies": rng.randint(0, 40), "warLosses": rng.randint(0, 400)}
    return body | {
        "warLeague": t["warLeague"],
        "members": len(members),
        "memberList": members,
        "labels": t["labels"],
        "requiredBuilderBaseTrophies": rng.choice((0, 400, 1000)),
        "requiredTownhallLevel": rng.randint(1, 15),
        "clanCapital": t["clanCapital"],
        "chatLanguage": t["chatLanguage"],
    }


def _roster(rng: random.Random, size: int) -> list[dict[str, Any]]:
    levels = sorted((rng.randint(8, 17) for _ in range(size)), reverse=True)
    return [
        {
            "tag": _new_tag(rng),
            "name": _name(rng),
            "townhallLevel": th,
            "mapPosition": pos,
            "opponentAttacks": 0,
        }
        for pos, th in enumerate(levels, start=1)
    ]


_DESTRUCTION = {0: (0, 49), 1: (20, 99), 2: (50, 99), 3: (100, 100)}


def _fight(rng: random.Random, ours: list[dict], theirs: list[dict], per_member: int, finished: bool) -> None:
    """Add attacks to both rosters, with opponentAttacks and bestOpponentAttack kept consistent."""
    attacks: list[tuple[dict, dict, dict]] = []
    for side, enemy in ((ours, theirs), (theirs, ours)):
        for member in side:
            used = per_member if finished and rng.random() < 0.85 else rng.randint(0, per_member)
            for _ in range(used):
                defender = rng.choice(enemy)
                stars = rng.choices((0, 1, 2, 3), weights=(1, 2, 4, 5))[0]
                percent = rng.randint(*_DESTRUCTION[stars])
                attack = {
                    "attackerTag": member["tag"],
                    "defenderTag": defender["tag"],
                    "stars": stars,
                    "destructionPercentage": percent,
                    "order": 0,
                    "duration": rng.randint(30, 180),
                }
                attacks.append((member, defender, attack))
    rng.shuffle(attacks)
    for order, (member, defender, attack) in enumerate(attacks, start=1):
        attack["order"] = order
        member.setdefault("attacks", []).append(attack)
        defender["opponentAttacks"] += 1
        best = defender.get("bestOpponentAttack")
        score = (attack["stars"], attack["destructionPercentage"])
        if best is None or score > (best["stars"], best["destructionPercentage"]):
            defender["bestOpponentAttack"] = attack


def _war_side(identity: dict, badges: dict, members: list[dict], enemy: list[dict]) -> dict:
    # A side's stars and destruction count only its best attack on each enemy base.
    bests = [e["bestOpponentAttack"] for e in enemy if "bestOpponentAttack" in e]
    destruction = sum(b["destructionPercentage"] for b in bests) / len(enemy)
    return {
        "tag": identity["tag"],
        "name": identity["name"],
        "badgeUrls": badges,
        "clanLevel": identity["clanLevel"],
        "attacks": sum(len(m.get("attacks", ())) for m in members),
        "stars": sum(b["stars"] for b in bests),
        "destructionPercentage": round(destruction, 2),
        "members": members,
    }


def _api_time(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S.000Z")


def _war(seed: int, tag: str) -> dict[str, Any]:
    t, rng = _template("war"), _rng(seed, "war", tag)
    state = rng.choices(("notInWar", "preparation", "inWar", "warEnded"), weights=(2, 2, 3, 3))[0]
    if state == "notInWar":
        return {"state": "notInWar"}
    size = rng.choice(t["teamSizes"])
    prep = _EPOCH + timedelta(days=rng.randint(0, 364), seconds=rng.randint(0, 86_399))
    start = prep + timedelta(hours=23)
    ours, theirs = _roster(rng, size), _roster(rng, size)
    if state != "preparation":
        _fight(rng, ours, theirs, t["attacksPerMember"], finished=state == "warEnded")
    opponent = _clan_identity(seed, _new_tag(rng))
    return {
        "state": state,
        "teamSize": size,
        "attacksPerMember": t["attacksPerMember"],
        "preparationStartTime": _api_time(prep),
        "startTime": _api_time(start),
        "endTime": _api_time(start + timedelta(hours=24)),
        "clan": _war_side(_clan_identity(seed, tag), t["clanBadgeUrls"], ours, theirs),
        "opponent": _war_side(opponent, t["opponentBadgeUrls"], theirs, ours),
    }


@functools.lru_cache(maxsize=4096)
def _body_bytes(kind: str, tag: str, seed: int, war_log_public: bool) -> bytes:
    if kind == "player":
        return orjson.dumps(_player(seed, tag))
    if kind == "clan":
        return orjson.dumps(_clan(seed, tag, war_log_public))
    return orjson.dumps(_war(seed, tag))


def simulated_body(kind: str, tag: str, *, seed: int = 0, war_log_public: bool = True) -> dict:
    """The 200 body the simulator serves for `kind` ("player", "clan", "war") and a valid tag."""
    return orjson.loads(_body_bytes(kind, tag, seed, war_log_public))


# --- developer portal helpers ----------------------------------------------------------------

_PORTAL_OK = {"code": 0, "message": "ok", "detail": None}


def _b64(data: bytes) -> str:
    # Standard alphabet, not URL-safe: coc.py reads the payload with base64.b64decode, which
    # silently drops '-' and '_' and would then parse garbage.
    return base64.b64encode(data).decode().rstrip("=")


def _jwt(secret: bytes, payload: dict[str, Any]) -> str:
    head = _b64(orjson.dumps({"typ": "JWT", "alg": "HS512", "kid": "28a318f7-0000-a1eb-7fa1"}))
    signing_input = f"{head}.{_b64(orjson.dumps(payload))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{_b64(signature)}"


def _portal_reply(status: int, message: str, **extra: Any) -> web.Response:
    code = 0 if status == 200 else status
    body = {"status": {"code": code, "message": message, "detail": None}} | extra
    return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())


class CocApiSimulator:
    """The simulated API and developer portal, with switches tests flip between steps.

    Switches and sets may be assigned or mutated from any thread: each check the server makes
    is a single read. Every API call is decided at arrival (switches read then), logged, then
    delayed by `latency` and `hang` before the answer goes out. `rate_limit` is per token;
    `max_calls_in_window` counts all calls, whatever their token.
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
    ) -> None:
        self.tokens: set[str] = set(tokens)
        self.email, self.password, self.seed = email, password, seed
        self.latency: tuple[float, float] = tuple(latency)  # type: ignore[assignment]
        self.rate_limit = rate_limit
        self.maintenance = self.throttled = self.invalid_ip = self.server_error = False
        self.hang: float | None = None
        self.not_found: set[str] = set()
        self.private_war_log: set[str] = set()
        self.tag_status: dict[str, int] = {}
        self.portal_ip: str | None = None  # the IP the portal reports; None: the caller's
        self.calls: list[Call] = []
        self.base_url = self.portal_url = ""
        self._lock = threading.Lock()
        self._recent: dict[str | None, deque[float]] = {}
        self._random = random.Random(seed)
        self._secret = secrets.token_bytes(32)
        self._developer_id = str(uuid.UUID(int=random.Random(email).getrandbits(128)))
        self._sessions: set[str] = set()
        self._keys: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    # --- control surface --------------------------------------------------------------------

    def reset_faults(self) -> None:
        """Turn every fault switch off and empty the fault sets; latency and rate limit stay."""
        self.maintenance = self.throttled = self.invalid_ip = self.server_error = False
        self.hang = None
        self.not_found.clear()
        self.private_war_log.clear()
        self.tag_status.clear()

    def clear_calls(self) -> None:
        """Forget the call log (the rate limiter's memory is kept)."""
        with self._lock:
            self.calls.clear()

    def max_calls_in_window(self, window: float = 1.0) -> int:
        """The most calls whose `at` falls in any half-open window [t, t + window)."""
        with self._lock:
            arrivals = sorted(call.at for call in self.calls)
        best, first = 0, 0
        for last, at in enumerate(arrivals):
            while at - arrivals[first] >= window:
                first += 1
            best = max(best, last - first + 1)
        return best

    def tightest_span(self, count: int) -> float | None:
        """The shortest time between the first and last of any `count` consecutive arrivals.

        With a limit of L a second, the API refuses a call when this is under a second for
        `count` = L + 1; how far above a second it stays is the client's headroom.
        """
        with self._lock:
            arrivals = sorted(call.at for call in self.calls)
        if count < 2 or len(arrivals) < count:
            return None
        return min(arrivals[i + count - 1] - arrivals[i] for i in range(len(arrivals) - count + 1))

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

    @property
    def portal_keys(self) -> list[dict[str, Any]]:
        """A copy of the API keys on the portal account."""
        return [dict(key) for key in self._keys]

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on `host:port` (0: any free port); sets `base_url` and `portal_url`."""
        app = web.Application()
        app.router.add_get("/v1/{tail:.*}", self._api)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/apikey/list", self._list_keys)
        app.router.add_post("/api/apikey/create", self._create_key)
        app.router.add_post("/api/apikey/revoke", self._revoke_key)
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
        at = time.time()
        token = _bearer(request.headers.get("Authorization"))
        kind, raw_tag = _route(request.rel_url.raw_path)
        tag = normalise_tag(raw_tag) if raw_tag is not None else None
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

    def _decide(
        self, at: float, token: str | None, kind: str | None, tag: str | None, remote: str
    ) -> _Answer:
        # Assumed order of the real gateway: key, IP, throttling, then the service itself.
        # Every arrival counts towards its token's rate window, refused ones too, so a 429 from
        # the limiter happens exactly when max_calls_in_window() (one token) exceeds the limit.
        over_limit = self._note_arrival(token, at)
        if token is None or token not in self.tokens:
            return _error(403, INVALID_AUTHORIZATION)
        if self.invalid_ip:
            return _error(403, invalid_ip_body(remote))
        if over_limit or self.throttled:
            return _error(429, THROTTLED)
        if self.maintenance:
            return _error(503, MAINTENANCE)
        if self.server_error:
            return _error(500, UNKNOWN_EXCEPTION)
        if kind is None or tag is None:
            return _error(404, NOT_FOUND)
        cache_control = CACHE_CONTROL[kind]
        if not _VALID_TAG.fullmatch(tag) or tag in self.not_found:
            return _error(404, NOT_FOUND, cache_control)
        forced = self.tag_status.get(tag)
        if forced is not None and forced != 200:
            return _forced(forced)
        if kind == "war" and tag in self.private_war_log:
            return _error(403, PRIVATE_WAR_LOG, cache_control)
        public = tag not in self.private_war_log
        return _Answer(200, _body_bytes(kind, tag, self.seed, public), cache_control)

    def _note_arrival(self, token: str | None, at: float) -> bool:
        """Record a call for its token; True if it makes more than `rate_limit` in (at-1s, at]."""
        with self._lock:
            recent = self._recent.setdefault(token, deque())
            while recent and recent[0] <= at - 1.0:
                recent.popleft()
            recent.append(at)
            limit = self.rate_limit
            return limit is not None and len(recent) > limit

    # --- the developer portal ---------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body.get("email") != self.email or body.get("password") != self.password:
            return _portal_reply(403, "Invalid credentials")
        session = secrets.token_urlsafe(24)
        self._sessions.add(session)
        ip = self.portal_ip or request.remote or "127.0.0.1"
        now = int(time.time())
        temporary = _jwt(
            self._secret,
            {
                "iss": "supercell",
                "aud": "supercell:gameapi",
                "jti": str(uuid.uuid4()),
                "iat": now,
                "exp": now + 3600,
                "sub": f"developer/{self._developer_id}",
                "scopes": ["clash"],
                # coc.py finds its own IP at limits[1].cidrs[0].
                "limits": [
                    {"tier": "developer/silver", "type": "throttling"},
                    {"cidrs": [f"{ip}/32"], "type": "client"},
                    {"origins": ["developer.clashofclans.com"], "type": "cors"},
                ],
            },
        )
        reply = _portal_reply(
            200,
            "ok",
            sessionExpiresInSeconds=3600,
            developer={
                "id": self._developer_id,
                "name": "Simulated Developer",
                "game": "clash",
                "email": self.email,
                "tier": "developer/silver",
            },
            temporaryAPIToken=temporary,
            swaggerUrl="https://api.clashofclans.com/api-docs",
        )
        reply.set_cookie("session", session, httponly=True, path="/")
        return reply

    def _signed_in(self, request: web.Request) -> bool:
        return request.cookies.get("session") in self._sessions

    async def _list_keys(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return _portal_reply(403, "forbidden")
        return _portal_reply(200, "ok", sessionExpiresInSeconds=3600, keys=self.portal_keys)

    async def _create_key(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return _portal_reply(403, "forbidden")
        if len(self._keys) >= PORTAL_MAX_KEYS:
            return _portal_reply(400, "badRequest", description=f"Maximum of {PORTAL_MAX_KEYS} keys reached")
        body = await _json_body(request)
        cidrs, scopes = list(body.get("cidrRanges") or []), list(body.get("scopes") or ["clash"])
        token = _jwt(
            self._secret,
            {
                "iss": "supercell",
                "aud": "supercell:gameapi",
                "jti": str(uuid.uuid4()),
                "iat": int(time.time()),
                "sub": f"developer/{self._developer_id}",
                "scopes": scopes,
                "limits": [
                    {"tier": "developer/silver", "type": "throttling"},
                    {"cidrs": cidrs, "type": "client"},
                ],
            },
        )
        key = {
            "id": str(uuid.uuid4()),
            "developerId": self._developer_id,
            "tier": "developer/silver",
            "name": str(body.get("name", "")),
            "description": str(body.get("description", "")),
            "origins": None,
            "scopes": scopes,
            "cidrRanges": cidrs,
            "validUntil": None,
            "key": token,
        }
        self._keys.append(key)
        self.tokens.add(token)
        return _portal_reply(200, "ok", sessionExpiresInSeconds=3600, key=dict(key))

    async def _revoke_key(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return _portal_reply(403, "forbidden")
        wanted = (await _json_body(request)).get("id")
        for key in self._keys:
            if key["id"] == wanted:
                self._keys.remove(key)
                self.tokens.discard(key["key"])
                return _portal_reply(200, "ok", sessionExpiresInSeconds=3600)
        return _portal_reply(404, "notFound")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


class SimulatorThread:
    """Run a simulator in a daemon thread with its own event loop.

    For synchronous tests, and for tests where the code under test runs its own loop::

        with SimulatorThread(CocApiSimulator()) as sim:
            sim.base_url
    """

    def __init__(self, simulator: CocApiSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator, self._host, self._port = simulator, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> CocApiSimulator:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), daemon=True, name="coc-api-simulator"
        )
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError("the CoC API simulator did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("the CoC API simulator failed to start") from self._error
        return self.simulator

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.simulator.start(self._host, self._port))
        except BaseException as exc:  # reported to __enter__, which raises it
            self._error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.simulator.stop())
            loop.close()


# --- command line ------------------------------------------------------------------------------


def _latency(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    bounds = (float(low), float(high or low))
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError("latency must be LOW,HIGH with 0 <= LOW <= HIGH")
    return bounds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coclib.testing.simulator",
        description="Serve a simulated Clash of Clans API until killed.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--latency",
        type=_latency,
        default=(0.0, 0.0),
        help="seconds, LOW,HIGH (uniform per request) or one value",
    )
    parser.add_argument("--tokens", default="test-token", help="comma-separated bearer tokens")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        help="calls per second per token before 429 requestThrottled",
    )
    parser.add_argument("--email", default="dev@example.com")
    parser.add_argument("--password", default="portal-password")
    parser.add_argument("--seed", type=int, default=0)
    return parser


async def _serve(simulator: CocApiSimulator, host: str, port: int) -> None:
    await simulator.start(host, port)
    # One parseable line, so a parent process can learn the port when it asked for port 0.
    print(
        f"CoC API simulator listening: base_url={simulator.base_url} portal_url={simulator.portal_url}",
        flush=True,
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await simulator.stop()
        print(f"CoC API simulator stopped: {simulator.summary()}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until SIGINT or SIGTERM."""
    args = _parser().parse_args(argv)
    tokens = [token for token in args.tokens.split(",") if token]
    simulator = CocApiSimulator(
        tokens=tokens,
        email=args.email,
        password=args.password,
        latency=args.latency,
        rate_limit=args.rate_limit,
        seed=args.seed,
    )
    asyncio.run(_serve(simulator, args.host, args.port))


if __name__ == "__main__":
    main()
