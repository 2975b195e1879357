"""Every Redis key the worker and producers use, in one place, all in one Redis Cluster slot.

All keys derive from `REFRESH_QUEUE_KEY`, and every derived key lives in the queue key's
slot, so Lua scripts and multi-key commands work on a Redis Cluster (ElastiCache cluster
mode, ElastiCache Serverless, Valkey cluster) exactly as on a single node:

* a queue key with a `{hash tag}` lends it to the derived keys: `{coc:refresh}:queue` ->
  `{coc:refresh}:queue:inflight`, both hashed on `coc:refresh`;
* a queue key without one is itself the tag: `refresh_queue` -> `{refresh_queue}:inflight`,
  hashed on `refresh_queue`, the very string the queue key hashes on. So a producer's
  existing queue needs no new name.

The hash tag rule is Redis Cluster's: the text between the first `{` and the first `}` after
it, if that text is not empty; otherwise the whole key. A key that has no tag but contains a
`}` cannot be wrapped in braces (the tag would end at its `}`), so its derived keys get a
short tag found to hash to the same slot instead (`a}b` -> `{ab~5}:a}b:inflight`).

A new derived key is one property calling `derived()`: it inherits the slot rule, and
`derived_keys()` (which the slot tests walk) picks it up by itself.
"""

from __future__ import annotations

import binascii
import inspect
from dataclasses import dataclass
from functools import cached_property

SLOTS = 16384
_MAX_TAG_SEARCH = 10_000_000  # a slot is hit every 16384 tries on average; this never runs out


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes, if the key has a `{hash tag}`; else None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return key[start + 1 : end]


def key_slot(key: str) -> int:
    """The Redis Cluster slot of `key` (CRC16/XMODEM of its hash tag or of the whole key)."""
    hashed = hash_tag(key)
    data = (key if hashed is None else hashed).encode()
    return binascii.crc_hqx(data, 0) % SLOTS


@dataclass(frozen=True)
class QueueKeys:
    """The key family of one refresh queue."""

    queue: str

    def __post_init__(self) -> None:
        if not self.queue:
            raise ValueError("the queue key must not be empty")

    @cached_property
    def _stem(self) -> str:
        """What derived keys start with: a string whose hash tag hashes to the queue's slot."""
        if hash_tag(self.queue) is not None:
            return self.queue  # derived keys begin with the queue key, so they keep its tag
        if "}" not in self.queue:
            return "{" + self.queue + "}"  # the tag is the whole key: the same CRC16 input
        # `{...}` would end at the key's own `}`: find a brace-free tag hashing to the same slot.
        slot = key_slot(self.queue)
        base = self.queue.replace("{", "").replace("}", "")
        for n in range(_MAX_TAG_SEARCH):
            tag = f"{base}~{n}"
            if key_slot(tag) == slot:
                return "{" + tag + "}:" + self.queue
        raise ValueError(f"no hash tag found for the slot of {self.queue!r}")  # pragma: no cover

    def derived(self, *parts: str) -> str:
        """A key of this family: the queue's slot, named after the queue and `parts`."""
        return ":".join((self._stem, *parts))

    @property
    def priority(self) -> str:
        """The priority lane: requests someone is waiting for, taken before the queue's."""
        return self.derived("priority")

    @property
    def inflight(self) -> str:
        """Items taken by a drain and not yet acknowledged (LMOVE target)."""
        return self.derived("inflight")

    @property
    def lease(self) -> str:
        """The one-drainer-at-a-time lease (SET NX PX with an owner token)."""
        return self.derived("lease")

    @property
    def successor(self) -> str:
        """A scheduled drain waiting for the running one to hand the lease over (short TTL)."""
        return self.derived("successor")

    @property
    def seam(self) -> str:
        """When the last lease holder's last API call started, for the next holder's limiter."""
        return self.derived("seam")

    @property
    def dead_letter(self) -> str:
        """Items Postgres would not take even a `failed` row for: kept aside, never retried."""
        return self.derived("dead")

    @property
    def stashed_summaries(self) -> str:
        """Summaries of runs that lost Postgres, for the next run to record (newest last)."""
        return self.derived("summaries")

    def pending(self, kind: str, tag: str) -> str:
        """De-duplication marker: a request for this kind and tag is waiting in the queue."""
        return self.derived("pending", kind, tag)

    def pending_priority(self, kind: str, tag: str) -> str:
        """De-duplication marker: a request for this kind and tag is waiting in the priority lane."""
        return self.derived("pending", "priority", kind, tag)

    def derived_keys(self) -> dict[str, str]:
        """Every fixed key of the family by property name, the queue included (for slot checks)."""
        names = [name for name, _ in inspect.getmembers(type(self), lambda m: isinstance(m, property))]
        return {"queue": self.queue, **{name: getattr(self, name) for name in names}}
