"""The drain's invariants, checked from the outside: Postgres, Redis and the simulator's call log.

Shared by the property tests (`test_drain_properties.py`, `test_ledger_properties.py`) and
the crash-recovery test. Nothing here trusts what the worker says about itself: every check
reads the ledger and snapshot tables, the Redis lists and what the simulated API received.

The tests build requests with `RequestFactory`: every request has its own id and, unless a
test asks for a shared one, its own tag, so the simulator's call log can be matched to
requests one to one.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import redis
from psycopg.rows import dict_row

from coclib.keys import QueueKeys
from coclib.queue import PRIORITY_MARK, parse_held, parse_item, request_id_for
from coclib.testing.simulator import Call, simulated_body
from coclib.testing.tags import numbered_tag
from ledger.outcomes import SETTLING, Outcome

TERMINAL = tuple(o for o in Outcome if o is not Outcome.ATTEMPTED)
KINDS = ("player", "clan", "war")
TABLES = {"player": ("players", "tag"), "clan": ("clans", "tag"), "war": ("wars", "clan_tag")}
# Failure reasons that need no API call: a malformed item fails on its own.
OFFLINE_REASONS = frozenset({"invalid_request", "invalid_tag"})
# Timestamps: Postgres keeps microseconds; Python floats round to them on the way in.
TIME_SLACK = 1e-5

_tags = itertools.count(1)


def fresh_tag() -> str:
    """A valid tag never used before in this process."""
    return numbered_tag(next(_tags) * 7919 + os.getpid() % 1000)  # spread out a little


@dataclass(frozen=True)
class Item:
    """One queue item a test pushed, and what it is."""

    id: str
    raw: bytes
    category: str  # "valid" | "not_found" | "private" | "malformed"
    kind: str | None = None
    tag: str | None = None  # normalised, as the worker and the simulator see it
    reason: str | None = None  # the failure reason a malformed item must get


# Malformed payloads: (name, builder, expected reason). `u` makes each one unique.
def _obj(**fields: Any) -> bytes:
    return orjson.dumps(fields)


MALFORMED = {
    "not_json": (lambda i, u: b"not json " + u.encode(), "invalid_request", False),
    "json_array": (lambda i, u: b'[1, "' + u.encode() + b'"]', "invalid_request", False),
    "not_utf8": (lambda i, u: b"\xff\xfe" + u.encode(), "invalid_request", False),
    "bad_kind": (lambda i, u: _obj(id=i, kind="village", tag="#2PP"), "invalid_request", True),
    "no_tag": (lambda i, u: _obj(id=i, kind="player"), "invalid_request", True),
    "bad_tag": (lambda i, u: _obj(id=i, kind="clan", tag="#ABC!"), "invalid_tag", True),
    "tag_not_string": (lambda i, u: _obj(id=i, kind="player", tag=12), "invalid_tag", True),
    "too_big": (lambda i, u: _obj(id=i, kind="player", tag="#2PP", pad="x" * 5000), "invalid_request", True),
}


class RequestFactory:
    """Makes items with unique ids (and, by default, unique tags)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or uuid.uuid4().hex[:8]
        self._n = itertools.count()

    def _id(self) -> str:
        return f"{self.prefix}-{next(self._n)}"

    def request(
        self,
        category: str,
        kind: str,
        tag: str | None = None,
        *,
        with_id: bool = True,
        lower_case: bool = False,
    ) -> Item:
        tag = tag or fresh_tag()
        item_id = self._id()
        spelled = tag.lstrip("#").lower() if lower_case else tag
        fields: dict[str, Any] = {"kind": kind, "tag": spelled, "enqueued_at": 1_700_000_000.0}
        if with_id:
            fields = {"id": item_id, **fields}
        else:
            fields["nonce"] = item_id  # no id: the worker derives one from the bytes
        raw = orjson.dumps(fields)
        return Item(item_id if with_id else request_id_for(raw), raw, category, kind, tag)

    def malformed(self, variant: str) -> Item:
        build, reason, has_id = MALFORMED[variant]
        item_id = self._id()
        raw = build(item_id, item_id)
        return Item(item_id if has_id else request_id_for(raw), raw, "malformed", reason=reason)


# -- reading the world --------------------------------------------------------------------------


@dataclass
class World:
    """Everything observable at one moment."""

    rows: list[dict[str, Any]]
    queue: list[bytes]
    inflight: list[bytes]
    calls: list[Call]
    snapshots: dict[tuple[str, str], dict[str, Any]]
    summaries: dict[str, dict[str, Any]]
    lease: bytes | None
    priority: list[bytes] = field(default_factory=list)  # the priority lane
    # The lane of each in-flight item (`inflight` holds the items themselves, marks removed).
    inflight_lanes: list[str] = field(default_factory=list)
    # refresh_open_attempts, read in the same snapshot as `rows`.
    open_attempts: list[dict[str, Any]] = field(default_factory=list)

    def rows_of(self, request_id: str) -> list[dict[str, Any]]:
        return self.by_request.get(request_id, [])

    def __post_init__(self) -> None:
        self.by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            self.by_request[row["request_id"]].append(row)

    def settling(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.rows_of(request_id) if r["outcome"] in SETTLING]

    def settled_ids(self) -> set[str]:
        return {r["request_id"] for r in self.rows if r["outcome"] in SETTLING}


def read_world(database_url: str, client: redis.Redis, keys: QueueKeys, calls: Iterable[Call]) -> World:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for all
        rows = conn.execute("SELECT * FROM refresh_ledger ORDER BY id").fetchall()
        open_attempts = conn.execute("SELECT * FROM refresh_open_attempts").fetchall()
        snapshots = {}
        for kind, (table, key) in TABLES.items():
            for row in conn.execute(f"SELECT {key} AS tag, data, fetched_at FROM {table}").fetchall():
                snapshots[(kind, row["tag"])] = row
        summaries = {
            str(r["run_id"]): r for r in conn.execute("SELECT * FROM refresh_run_summaries").fetchall()
        }
    with client.pipeline(transaction=True) as pipe:
        pipe.lrange(keys.queue, 0, -1)
        pipe.lrange(keys.inflight, 0, -1)
        pipe.get(keys.lease)
        pipe.lrange(keys.priority, 0, -1)
        queue, held, lease, priority = pipe.execute()
    inflight = [parse_held(h) for h in held]
    return World(
        rows,
        queue,
        [t.raw for t in inflight],
        list(calls),
        snapshots,
        summaries,
        lease,
        priority,
        [str(t.lane) for t in inflight],
        open_attempts,
    )


def raw_id(raw: bytes) -> str:
    if raw.startswith(PRIORITY_MARK):
        return parse_held(raw).request_id
    return parse_item(raw).request_id


def ts(value) -> float:
    return value.timestamp()


# -- the invariants ---------------------------------------------------------------------------------


def check_append_only(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> None:
    """The ledger only grows, and rows once written never change."""
    assert len(after) >= len(before), "ledger rows disappeared"
    assert list(after[: len(before)]) == list(before), "an existing ledger row changed"
    ids = [r["id"] for r in after]
    assert ids == sorted(set(ids)), "ledger ids are not unique and increasing"


def check_conservation(world: World, items: dict[str, Item], *, inflight_allowed: bool) -> None:
    """Nothing lost, nothing duplicated, nothing settled twice.

    Every item pushed is in exactly one of: the queue, the in-flight list, settled (exactly
    one `fetched` or `failed` row). A settled item is never back in the queue; it may linger
    in the in-flight list only after a run died between its commit and its acknowledgement.
    """
    by_raw = {item.raw: item for item in items.values()}
    waiting = world.queue + world.priority + world.inflight
    dupes = [raw for raw, n in Counter(waiting).items() if n > 1]
    assert not dupes, f"items duplicated in the queue/in-flight lists: {dupes[:3]}"
    unknown = [raw for raw in waiting if raw not in by_raw]
    assert not unknown, f"items nobody pushed: {unknown[:3]}"
    if not inflight_allowed:
        assert world.inflight == [], f"in-flight list not empty after a finished run: {world.inflight[:3]}"

    queued = {by_raw[raw].id for raw in world.queue + world.priority}
    inflight = {by_raw[raw].id for raw in world.inflight}
    for item in items.values():
        settles = world.settling(item.id)
        assert len(settles) <= 1, f"{item.id} settled {len(settles)} times: {settles}"
        if settles:
            assert item.id not in queued, f"{item.id} is settled yet back in the queue"
        else:
            assert item.id in queued or item.id in inflight, f"{item.id} was lost: not settled, not queued"
    strangers = {r["request_id"] for r in world.rows} - set(items)
    assert not strangers, f"ledger rows for requests nobody pushed: {sorted(strangers)[:3]}"


def check_request_histories(world: World, *, finished_runs: Iterable[str] = ()) -> None:
    """Per request and per run: at most one terminal row; nothing after the settling row.

    In a run that finished (returned, Postgres up), every request it attempted has exactly
    one terminal row in it; a run that died may leave attempts without one.
    """
    finished = set(finished_runs)
    for request_id, rows in world.by_request.items():
        per_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            per_run[str(row["run_id"])].append(row)
        for run_id, run_rows in per_run.items():
            terminal = [r for r in run_rows if r["outcome"] in TERMINAL]
            assert len(terminal) <= 1, f"{request_id}: {len(terminal)} terminal rows in run {run_id}"
            if terminal:
                # Within a run the terminal row comes after the run's attempts.
                assert all(r["id"] < terminal[0]["id"] for r in run_rows if r is not terminal[0])
            if run_id in finished:
                assert len(terminal) == 1, f"{request_id}: run {run_id} finished without a terminal row"
        settle = [i for i, r in enumerate(rows) if r["outcome"] in SETTLING]
        if settle:
            after = rows[settle[0] + 1 :]
            assert not after, (
                f"{request_id} has rows after it was settled ({rows[settle[0]]['outcome']}): "
                f"{[(r['outcome'], r['reason']) for r in after]}"
            )
    check_open_attempts(world.open_attempts, world.rows)


def check_open_attempts(kept: Iterable[dict[str, Any]], rows: Iterable[dict[str, Any]]) -> None:
    """refresh_open_attempts' rows (`kept`, a trigger's work) are exactly the attempts of the
    ledger `rows` with no terminal row of their request at or after them (migration 0012)."""
    by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_request[row["request_id"]].append(row)
    expected: list[dict[str, Any]] = []
    for history in by_request.values():
        last = max((r["occurred_at"] for r in history if r["outcome"] != "attempted"), default=None)
        expected += [
            r for r in history if r["outcome"] == "attempted" and (last is None or last < r["occurred_at"])
        ]

    def keys(found: Iterable[dict[str, Any]]) -> Counter[tuple[str, Any, str]]:
        return Counter((r["request_id"], r["occurred_at"], str(r["run_id"])) for r in found)

    settled, missing = keys(kept) - keys(expected), keys(expected) - keys(kept)
    assert not settled and not missing, (
        f"refresh_open_attempts disagrees with the ledger: kept but settled {sorted(settled)[:3]}, "
        f"open but not kept {sorted(missing)[:3]}"
    )


def check_calls(world: World, items: dict[str, Item]) -> None:
    """The API saw only what the ledger announced, and nothing after a request was settled.

    Per tag: the k-th call arrives after at least k `attempted` rows for that tag were written
    (`attempted` is written before the call), no call arrives after every request for the tag
    was settled, and no malformed item ever reaches the API.
    """
    attempts: dict[str, list[float]] = defaultdict(list)
    last_settle: dict[str, float] = {}
    open_tags: set[str] = set()
    for item in items.values():
        if item.tag is None:
            continue
        rows = world.rows_of(item.id)
        attempts[item.tag].extend(ts(r["occurred_at"]) for r in rows if r["outcome"] == "attempted")
        settles = [ts(r["occurred_at"]) for r in rows if r["outcome"] in SETTLING]
        if settles:
            last_settle[item.tag] = max(last_settle.get(item.tag, 0.0), settles[0])
        else:
            open_tags.add(item.tag)
    calls: dict[str, list[Call]] = defaultdict(list)
    for call in world.calls:
        calls[call.tag].append(call)
    for tag, tag_calls in calls.items():
        assert tag in attempts, f"the API was called for {tag}, which no pushed request names"
        made = sorted(attempts[tag])
        for k, call in enumerate(sorted(tag_calls, key=lambda c: c.at), start=1):
            before = sum(1 for a in made if a <= call.at + TIME_SLACK)
            assert before >= k, f"call {k} for {tag} at {call.at} had only {before} attempted rows before it"
        if tag not in open_tags and tag in last_settle:
            latest = max(c.at for c in tag_calls)
            assert latest <= last_settle[tag] + TIME_SLACK, f"{tag} was called after it was settled"


def check_outcomes(
    world: World,
    items: dict[str, Item],
    *,
    missing_tags: set[str] = frozenset(),
    broken_tags: set[str] = frozenset(),
    interrupted_limit: int | None = None,
) -> None:
    """A settled request's outcome fits what it is and what the API answered.

    * `fetched`: only a valid request; the snapshot of its kind and tag exists, holds the
      API's body, and its `fetched_at` lies between this request's last `attempted` row and
      its `fetched` row (the response arrived after the attempt was recorded and before the
      row was written). With several fetched requests for one tag, the newest fetch wins:
      the snapshot's `fetched_at` is at least the latest such attempt.
    * `failed`: the reason fits the request (malformed: its parse error, and never attempted;
      a 404 tag: not_found; a private war log: private_war_log), or is a transient reason
      (upstream_error, timeout) or `interrupted`; and the API's log bears the reason out.
    * `skipped-fresh`: only a valid request, with reason `fresh`, after a `fetched` row of the
      same kind and tag (in the same run, if the request was attempted in it: a retry).
    * No snapshot exists for a kind and tag without a `fetched` request.
    """
    fetched_by_key: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    calls: dict[str, list[Call]] = defaultdict(list)
    for call in world.calls:
        calls[call.tag].append(call)
    for item in items.values():
        settles = world.settling(item.id)
        if not settles:
            continue
        row = settles[0]
        rows = world.rows_of(item.id)
        attempted = [r for r in rows if r["outcome"] == "attempted"]
        tag_calls = sorted(calls.get(item.tag, []), key=lambda c: c.at)
        if item.category == "malformed":
            assert (row["outcome"], row["reason"]) == ("failed", item.reason), (item.id, row)
            assert not attempted
            continue
        assert row["kind"] == item.kind and row["tag"] == item.tag, (item, row)
        if row["outcome"] == "skipped-fresh":
            # No call for it, and only after the same kind and tag was fetched (by any request).
            assert row["reason"] == "fresh" and row["detail"], (item.id, row)
            assert item.category == "valid", f"{item.category} request {item.id} was skipped as fresh"
            earlier = [
                r
                for r in world.rows
                if r["outcome"] == "fetched"
                and (r["kind"], r["tag"]) == (item.kind, item.tag)
                and r["id"] < row["id"]
            ]
            assert earlier, (
                f"{item.id} was skipped as fresh but {item.kind} {item.tag} was never fetched before"
            )
            # A retry (its first call met a transient error) is skipped on another request's
            # answer in the same run; anything else was skipped before any attempt.
            if [r for r in attempted if r["run_id"] == row["run_id"]]:
                same_run = [r for r in earlier if r["run_id"] == row["run_id"]]
                assert same_run, f"{item.id} skipped as fresh after an attempt, on no fetch of its run"
            continue
        if row["outcome"] == "fetched":
            assert item.category == "valid", f"{item.category} request {item.id} was fetched"
            assert row["http_status"] == 200
            assert attempted, f"{item.id} fetched without an attempt"
            fetched_by_key[(item.kind, item.tag)].append(
                (ts(attempted[-1]["occurred_at"]), ts(row["occurred_at"]))
            )
            ok = [c for c in tag_calls if c.status == 200]
            assert ok, f"{item.id} fetched but the API never answered 200 for {item.tag}"
            continue
        reason = row["reason"]
        allowed = {"upstream_error", "timeout", "connection_error", "interrupted"}
        allowed |= {"valid": set(), "not_found": {"not_found"}, "private": {"private_war_log"}}[item.category]
        if item.tag in missing_tags:
            allowed.add("not_found")
        if item.tag in broken_tags:
            allowed.add("unexpected_error")
        assert reason in allowed, f"{item.category} request {item.id} failed with {reason}"
        if reason == "interrupted":
            runs = {r["run_id"] for r in attempted}
            terminal_runs = {r["run_id"] for r in rows if r["outcome"] in TERMINAL and r is not row}
            # A run that recorded its summary lived: what it left in flight it left for a fault
            # (Postgres or Redis lost), which must not count against the request.
            lived = {run_id for run_id in runs if str(run_id) in world.summaries}
            abandoned = runs - terminal_runs - lived
            assert abandoned, f"{item.id} failed as interrupted but no run abandoned it"
            if interrupted_limit is not None:
                assert len(abandoned) >= interrupted_limit, (item.id, len(abandoned))
            continue
        assert attempted, f"{item.id} failed with {reason} without an attempt"
        assert tag_calls, f"{item.id} failed with {reason} but the API never saw {item.tag}"
        status = tag_calls[-1].status
        expected_status = {"not_found": 404, "private_war_log": 403}.get(reason)
        if expected_status is not None:
            assert status == expected_status and row["http_status"] == expected_status, (item.id, status, row)
        elif reason == "upstream_error":
            assert any(c.status >= 500 for c in tag_calls), f"{item.id}: upstream_error without a 5xx"

    for key, spans in fetched_by_key.items():
        snap = world.snapshots.get(key)
        assert snap is not None, f"{key} was fetched but has no snapshot"
        kind, tag = key
        assert snap["data"] == simulated_body(kind, tag), f"snapshot of {key} is not the API's body"
        at = ts(snap["fetched_at"])
        assert at >= max(a for a, _ in spans) - TIME_SLACK, f"{key}: an older fetch overwrote a newer one"
        assert at <= max(f for _, f in spans) + TIME_SLACK, f"{key}: snapshot newer than any fetched row"
        fits = any(a - TIME_SLACK <= at <= f + TIME_SLACK for a, f in spans)
        assert fits, f"{key}: fetched_at fits no fetch"
    stray = set(world.snapshots) - set(fetched_by_key)
    assert not stray, f"snapshots without a fetched request: {sorted(stray)[:3]}"


def first_attempts(world: World, run_id: str) -> list[str]:
    """The requests a run attempted, in the order of their first attempt in it."""
    firsts: list[str] = []
    seen: set[str] = set()
    for row in world.rows:
        if str(row["run_id"]) == run_id and row["outcome"] == "attempted" and row["request_id"] not in seen:
            seen.add(row["request_id"])
            firsts.append(row["request_id"])
    return firsts


def check_run_order(world: World, run_id: str, expected: Sequence[str], *lanes: Sequence[str]) -> None:
    """FIFO starts: within a run, first attempts follow the queue's order at the run's start.

    With the priority lane's order in `lanes` too, each lane's first attempts follow its own order.
    """
    firsts = first_attempts(world, run_id)
    known = set(expected).union(*lanes)
    missing = [r for r in firsts if r not in known]
    assert not missing, f"run {run_id} attempted requests that were not queued at its start: {missing}"
    for lane in (expected, *lanes):
        position = {request_id: i for i, request_id in enumerate(lane)}
        order = [position[r] for r in firsts if r in position]
        assert order == sorted(order), f"run {run_id} started requests out of their lane's order: {firsts}"


def check_lane_share(world: World, run_id: str, priority: set[str], every: int = 9) -> None:
    """While the queue has work, it gets at least one call in `every`: in a run's attempts (retries
    included), no more than `every` - 1 priority attempts in a row come before a first attempt of
    a queue request."""
    attempts = [r for r in world.rows if str(r["run_id"]) == run_id and r["outcome"] == "attempted"]
    firsts = {request_id: None for request_id in first_attempts(world, run_id)}
    last_queue_first = -1
    seen: set[str] = set()
    for k, row in enumerate(attempts):
        request_id = row["request_id"]
        if request_id not in priority and request_id not in seen and request_id in firsts:
            last_queue_first = k
        seen.add(request_id)
    stretch = 0
    for row in attempts[: max(0, last_queue_first)]:
        stretch = stretch + 1 if row["request_id"] in priority else 0
        assert stretch < every, f"run {run_id}: {stretch} priority calls in a row while the queue waited"


def expected_lanes_after(before: World, after: World) -> tuple[list[bytes], list[bytes]]:
    """What the queue and the priority lane must hold after a run that started from `before`:
    each lane as `expected_queue_after` says, the in-flight items going back to their own."""
    lanes = []
    for lane, waiting in (("queue", before.queue), ("priority", before.priority)):
        inflight = [raw for raw, at in zip(before.inflight, before.inflight_lanes, strict=True) if at == lane]
        lanes.append(expected_queue_after(inflight, waiting, after))
    return lanes[0], lanes[1]


def expected_queue_after(
    before_inflight: Sequence[bytes], before_queue: Sequence[bytes], world: World
) -> list[bytes]:
    """What the queue must hold after a run that started with these lists.

    A run recovers the in-flight list to the head of the queue, takes from the head and puts
    back what it did not settle in its original order. So afterwards the queue is the old
    in-flight list followed by the old queue, minus what is now settled and minus what a run
    that died left in the in-flight list, in the same order.
    """
    settled = world.settled_ids()
    stuck = set(world.inflight)
    return [
        raw for raw in [*before_inflight, *before_queue] if raw_id(raw) not in settled and raw not in stuck
    ]


def run_rows(world: World, run_id: str) -> list[dict[str, Any]]:
    return [r for r in world.rows if str(r["run_id"]) == run_id]


def check_summary(world: World, summary) -> None:
    """A run's own summary agrees with the ledger (the ledger is the truth)."""
    rows = run_rows(world, summary.run_id)
    counts = Counter(r["outcome"] for r in rows)
    assert {k: v for k, v in counts.items() if v} == {str(k): v for k, v in summary.counts.items() if v}
    terminal = sum(counts[o] for o in TERMINAL)
    assert terminal == summary.taken + summary.recovered.get("failed", 0), (
        f"run {summary.run_id}: {terminal} terminal rows for {summary.taken} items taken "
        f"(+{summary.recovered.get('failed', 0)} failed in recovery)"
    )
    stored = world.summaries.get(summary.run_id)
    assert stored is not None, f"run {summary.run_id} left no refresh_run_summaries row"
    assert stored["stopped"] == summary.stopped


@dataclass
class Ledger:
    """Remembers the ledger between checks so appends-only can be verified."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def advance(self, world: World) -> None:
        check_append_only(self.rows, world.rows)
        self.rows = list(world.rows)
