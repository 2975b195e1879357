"""The simulator's 200 bodies: players, clans and current wars, deterministic per tag and seed.

Field names and shapes follow real captures (ClashKingInc/ClashOfClansMockAPI, folder data/),
trimmed into the `data/*.json` templates beside this package; the numbers are drawn from a
random generator seeded by (seed, kind, tag), so a tag always gets the same body and related
bodies agree (a clan's name is the same in its clan body, its wars and its members' bodies).
"""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from coclib.tags import TAG_ALPHABET

_DATA = Path(__file__).resolve().parent.parent / "data"
_EPOCH = datetime(2025, 1, 1, 12, tzinfo=UTC)  # war times are fixed so bodies stay deterministic

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


def _more_achievements(rng: random.Random, template: list[dict[str, Any]], room: int) -> list[dict]:
    """Achievements shaped like the template's, about `room` bytes of them: a player with a long
    history (real bodies run 25-35 KB, most of it achievements and units)."""
    extra: list[dict[str, Any]] = []
    n = 0
    while room > 0:
        base = template[n % len(template)]
        n += 1
        target = rng.randint(10, 100_000)
        value = rng.randint(0, 2 * target)
        achievement = base | {
            "name": f"{base['name']} {n // len(template) + 2}",
            "stars": rng.randint(0, 3),
            "value": value,
            "target": target,
            "completionInfo": f"{base['completionInfo'].split(':')[0]}: {value}",
        }
        extra.append(achievement)
        room -= len(orjson.dumps(achievement)) + 1
    return extra


def _player(seed: int, tag: str, size: int = 0) -> dict[str, Any]:
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
    body |= {
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
    room = size - len(orjson.dumps(body))
    if room > 0:
        body["achievements"] = t["achievements"] + _more_achievements(rng, t["achievements"], room)
    return body


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
def body_bytes(kind: str, tag: str, seed: int, war_log_public: bool, player_bytes: int = 0) -> bytes:
    """The 200 body for `kind` and a valid, normalised `tag`, as sent on the wire; a player's
    grown with more achievements to about `player_bytes` if that is more than it has."""
    if kind == "player":
        return orjson.dumps(_player(seed, tag, player_bytes))
    if kind == "clan":
        return orjson.dumps(_clan(seed, tag, war_log_public))
    return orjson.dumps(_war(seed, tag))


def simulated_body(kind: str, tag: str, *, seed: int = 0, war_log_public: bool = True) -> dict:
    """The 200 body the simulator serves for `kind` ("player", "clan", "war") and a valid tag."""
    return orjson.loads(body_bytes(kind, tag, seed, war_log_public))
