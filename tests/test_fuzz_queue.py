"""Fuzzing the queue boundary: whatever bytes a producer pushes, every run accounts for them.

Hypothesis pushes arbitrary items (raw bytes, NUL, invalid UTF-8, JSON with `\\u0000` and lone
surrogates, deep nesting, huge numbers and strings, near-miss requests with look-alike tags and
unusable ids) between valid requests, then drains once with the real services. Properties,
judged from the ledger, Redis and the simulator:

* no exception escapes the run, which ends `queue_empty` with every item taken acknowledged;
* every valid request is `fetched` exactly once, and its snapshot is the API's body, unless
  the simulator answers it with a body the API should not send (an HTML page, truncated JSON,
  a JSON array or string, an empty body, a wrong Content-Type, `\u0000` in a string): then it
  is `failed` exactly once, `bad_response` or `unstorable`, and nothing is stored for it;
* every item pushed has exactly one terminal row in the run (so none is lost or doubled),
  and a junk item is `fetched` (it happened to be a valid request) or `failed` for its shape;
* the queue and the in-flight list are empty afterwards, and a run right after drains a
  newly pushed request.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import orjson
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coclib.coc_api import CocApi
from coclib.db import Database
from coclib.keys import QueueKeys
from coclib.queue import RefreshQueue
from coclib.ratelimit import RateLimiter
from coclib.testing.simulator import simulated_body
from tests.conftest import TEST_TOKEN
from tests.helpers import query
from tests.invariants import fresh_tag
from worker.drain import Drain, DrainPolicy

EXAMPLES = 40
SHAPE_REASONS = {"invalid_request", "invalid_tag"}
BODY_REASONS = {"bad_response", "unstorable"}
# Every bad body but `huge` (24 MB a call: tests/test_bad_input.py has it).
bad_bodies = st.sampled_from(
    ["html", "truncated_json", "json_array", "json_string", "empty", "wrong_content_type", "nul_in_string"]
)

# Tags that look like tags to a person: Cyrillic and full-width letters, NUL, spaces, too long.
look_alikes = st.sampled_from(
    [
        "#2\u0420\u0420",
        "\uff032PP",
        "#2PP\x00",
        "#2P\u200bP",
        " #2pp ",
        "#" + "2" * 15,
        "#",
        "2PP#",
        "#2PP\ud800",
        12,
        None,
    ]
)
unusable_ids = st.sampled_from([12, "", "x" * 129, "a\x00b", "a\nb", ["id"], {"id": 1}])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def near_misses(draw) -> bytes:
    """An object that is almost a request: one field bad, or extra fields holding anything."""
    item: dict = {"kind": draw(st.sampled_from(["player", "clan", "war", "village", "", "PLAYER"]))}
    if draw(st.booleans()):
        item["tag"] = draw(look_alikes)
    if draw(st.booleans()):
        item["id"] = draw(unusable_ids)
    if draw(st.booleans()):
        item[draw(st.text(max_size=5))] = draw(json_values)
    # Stdlib json: it writes NUL and lone surrogates as \\u escapes, as a careless producer might.
    return json.dumps(item).encode()


def deeply_nested(depth: int) -> bytes:
    return b'{"kind": "player", "tag": "#2PP", "x": ' + b"[" * depth + b"]" * depth + b"}"


junk = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    near_misses(),
    st.integers(1000, 1100).map(deeply_nested),
    st.sampled_from(
        [
            b"\xff\xfe\x00garbage",
            b'{"kind": "player", "tag": "#2PP", "n": 1e400}',
            b'{"kind": "player", "tag": "#2PP", "pad": "' + b"x" * 5000 + b'"}',
            b'{"kind": "clan", "tag": "#2PP", "enqueued_at": "yesterday"}',
            b'{"kind": "war", "tag": "#2P\\u0000P"}',
            b'"a string"',
            b"null",
            b"",
        ]
    ),
)
# Where junk goes among the valid requests: (junk, slot) pairs, unique junk per example.
mixes = st.lists(st.tuples(junk, st.integers(0, 10)), max_size=12, unique_by=lambda pair: pair[0])


class Harness:
    """One set of clients for every example, as a warm Lambda container keeps them."""

    def __init__(self, database_url: str, redis_url: str, simulator) -> None:
        self.database_url, self.redis_url, self.sim = database_url, redis_url, simulator
        self.runner = asyncio.Runner()
        self.limiter = RateLimiter(30)
        self.runner.run(self._open())

    async def _open(self) -> None:
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.db = await Database.open(self.database_url)
        self.api = await CocApi.connect(
            base_url=self.sim.base_url, limiter=self.limiter, tokens=(TEST_TOKEN,)
        )

    def drain(self, keys: QueueKeys):
        async def connect() -> CocApi:
            return self.api

        queue = RefreshQueue(self.redis, keys)
        drain = Drain(
            queue=queue,
            db=self.db,
            connect_api=connect,
            limiter=self.limiter,
            # Bad bodies for many requests in a row would open the circuit (a proxy is down):
            # tests/test_bad_input.py checks that; here each request must meet its own fate.
            policy=DrainPolicy(checks=True, retry_backoff=0.01, max_tries=2, transient_streak=1000),
        )
        return self.runner.run(drain.run(time.monotonic() + 60))

    def close(self) -> None:
        async def close() -> None:
            await self.api.close()
            await self.db.close()
            await self.redis.aclose()

        self.runner.run(close())
        self.runner.close()


def test_whatever_a_producer_pushes_every_run_accounts_for_it(
    database_url, redis_url, redis_client, simulator
):
    harness = Harness(database_url, redis_url, simulator)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(mix=mixes, answers=st.lists(st.none() | bad_bodies, min_size=1, max_size=6))
    def example(mix, answers):
        keys = QueueKeys(f"{{fuzz:{uuid.uuid4().hex[:12]}}}:queue")
        valid = [{"id": f"v-{uuid.uuid4().hex[:8]}", "kind": "player", "tag": fresh_tag()} for _ in answers]
        simulator.bad_body.clear()
        for request, answer in zip(valid, answers, strict=True):
            if answer is not None:
                simulator.bad_body[request["tag"]] = answer
        items: list[bytes] = [orjson.dumps(v) for v in valid]
        for raw, slot in mix:
            items.insert(min(slot, len(items)), raw)
        redis_client.rpush(keys.queue, *items)

        summary = harness.drain(keys)

        assert summary.stopped == "queue_empty", summary
        assert summary.taken == len(items) and summary.items["acked"] == len(items), summary
        rows = query(
            database_url, "SELECT * FROM refresh_ledger WHERE run_id = %s ORDER BY id", summary.run_id
        )
        terminal = [r for r in rows if r["outcome"] != "attempted"]
        assert len(terminal) == len(items), Counter((r["outcome"], r["reason"]) for r in terminal)
        # A pushed item that is a valid request for a tag an earlier example fetched a moment ago
        # is settled as fresh (the gate), without a call.
        assert {(r["outcome"], r["reason"] or "") for r in terminal} <= {
            ("fetched", ""),
            ("skipped-fresh", "fresh"),
        } | {("failed", reason) for reason in SHAPE_REASONS | BODY_REASONS}
        per_request = Counter(r["request_id"] for r in terminal)
        for v, answer in zip(valid, answers, strict=True):
            assert per_request[v["id"]] == 1
            [row] = [r for r in terminal if r["request_id"] == v["id"]]
            stored = query(database_url, "SELECT data FROM players WHERE tag = %s", v["tag"])
            if answer is None:
                assert row["outcome"] == "fetched", row
                assert stored and stored[0]["data"] == simulated_body("player", v["tag"])
            else:
                assert row["outcome"] == "failed" and row["reason"] in BODY_REASONS, (answer, row)
                assert not stored
        for row in terminal:
            assert "\x00" not in (row["detail"] or "")
        assert redis_client.llen(keys.queue) == 0 and redis_client.llen(keys.inflight) == 0

        # The next run goes on.
        follow_up = {"id": f"f-{uuid.uuid4().hex[:8]}", "kind": "clan", "tag": fresh_tag()}
        redis_client.rpush(keys.queue, orjson.dumps(follow_up))
        after = harness.drain(keys)
        assert after.stopped == "queue_empty" and after.counts.get("fetched") == 1
        redis_client.delete(keys.queue, keys.inflight)
        simulator.bad_body.clear()

    try:
        example()
    finally:
        harness.close()
