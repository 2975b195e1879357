"""Every Redis key the worker and producers use, in one place.

All keys derive from `REFRESH_QUEUE_KEY` and keep its `{hash tag}`, so they share
one Redis Cluster slot and MULTI/EXEC, Lua scripts and multi-key commands work on
ElastiCache cluster mode exactly as on a single node.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueKeys:
    """The key family of one refresh queue."""

    queue: str

    @property
    def inflight(self) -> str:
        """Items taken by a drain and not yet acknowledged (LMOVE target)."""
        return f"{self.queue}:inflight"

    @property
    def lease(self) -> str:
        """The one-drainer-at-a-time lease (SET NX PX with an owner token)."""
        return f"{self.queue}:lease"

    @property
    def successor(self) -> str:
        """A scheduled drain waiting for the running one to hand the lease over (short TTL)."""
        return f"{self.queue}:successor"

    @property
    def seam(self) -> str:
        """When the last lease holder's last API call started, for the next holder's limiter."""
        return f"{self.queue}:seam"

    @property
    def dead_letter(self) -> str:
        """Items Postgres would not take even a `failed` row for: kept aside, never retried."""
        return f"{self.queue}:dead"

    def pending(self, kind: str, tag: str) -> str:
        """De-duplication marker: a request for this kind and tag is waiting in the queue."""
        return f"{self.queue}:pending:{kind}:{tag}"
