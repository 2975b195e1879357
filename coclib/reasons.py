"""Reason codes: why a request ended as it did, or why a run stopped early.

One closed set, shared by the errors coclib raises, the ledger's `reason` column (where a
CHECK constraint admits only lower-case letters and underscores) and a run summary's
`cause`. The human story goes beside a code, in `detail`; code never parses it back out.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """A ledger row's `reason`, or a stopped run's `cause`."""

    # The request itself: `failed`, never requeued.
    INVALID_REQUEST = "invalid_request"  # the queue item is not a well-formed request
    INVALID_TAG = "invalid_tag"  # its tag cannot be a Clash of Clans tag
    NOT_FOUND = "not_found"  # 404: no such player or clan
    PRIVATE_WAR_LOG = "private_war_log"  # 403 accessDenied on a clan's current war
    BAD_REQUEST = "bad_request"  # 400: the API refused the tag
    HTTP_ERROR = "http_error"  # any other 4xx the API has no meaning for
    UNSTORABLE = "unstorable"  # Postgres cannot store what this request produced
    INTERRUPTED = "interrupted"  # runs kept dying while this request was in flight
    UNEXPECTED_ERROR = "unexpected_error"  # it met an error nobody planned for, run after run

    # Transient: tried again later in the run, then `failed` with the same reason.
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"  # 5xx
    CONNECTION_ERROR = "connection_error"
    BAD_RESPONSE = "bad_response"  # a body that is not the JSON object the endpoint returns

    # Systemic: the circuit opens and what is in hand goes back, `deferred`.
    MAINTENANCE = "maintenance"
    FORBIDDEN = "forbidden"  # 403: the key's IP does not match, or access denied
    THROTTLED = "throttled"  # 429
    CREDENTIALS = "credentials"  # the developer portal refused the email and password
    LOGIN = "login"  # the developer portal could not be reached or created no key
    # Several different requests in a row met transient errors (timeouts, 5xx, cut connections):
    # the API is down, not this request. Written `upstream` before migration 0006 (too close to
    # `upstream_error`, one request's 5xx); the ledger keeps such rows as they were written.
    API_DOWN = "api_down"
    DATABASE_UNAVAILABLE = "database_unavailable"
    REDIS_UNAVAILABLE = "redis_unavailable"  # unreachable, timed out, a cluster node failing over
    # Redis answers but refuses: configuration, not an outage (`coclib.redis_client.redis_fault`).
    REDIS_WRONG_TYPE = "redis_wrong_type"  # a queue key holds something other than a list
    REDIS_OUT_OF_MEMORY = "redis_out_of_memory"  # maxmemory reached under `noeviction`
    REDIS_READ_ONLY = "redis_read_only"  # the URL names a replica (READONLY)
    LEASE_LOST = "lease_lost"  # the drain lease expired under a running drain
    INTERNAL_ERROR = "internal_error"  # a bug stopped the run; see the run summary

    # Put back for a later run, `skipped-deadline`.
    DEADLINE = "deadline"
    HANDED_OVER = "handed_over"  # a newer scheduled invocation took over the queue
    CANCELLED = "cancelled"


# The Redis errors that mean "Redis answers, and refuses what we asked because of how it is set
# up", each with what an operator should look at: configuration, which no retry will fix.
REDIS_CONFIGURATION: dict[Reason, str] = {
    Reason.REDIS_WRONG_TYPE: "a queue key holds another type than a list: something else wrote it",
    Reason.REDIS_OUT_OF_MEMORY: "Redis is at maxmemory with the noeviction policy: raise maxmemory",
    Reason.REDIS_READ_ONLY: "REDIS_URL names a read-only replica, not the primary",
}
# Every reason a Redis error can be (`coclib.redis_client.redis_fault`): an outage or configuration.
REDIS_FAULTS = frozenset({Reason.REDIS_UNAVAILABLE, *REDIS_CONFIGURATION})
