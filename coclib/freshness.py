"""How long an API answer stays fresh: `Cache-Control: max-age` minus `Age`, from its headers.

The Clash of Clans API serves every body from a cache of its own and says for how long in
`Cache-Control` (captured answers: `max-age=60` for players and clans, `max-age=120` for a
clan's current war, `public max-age=600` for some answers; the API writes both forms). An
`Age` header (RFC 9111 §5.1) means a shared cache in between already held the copy that
long, so the copy expires that much sooner. Until then, asking again can only return the
same body: the worker settles such a request `skipped-fresh` instead of calling.

Everything uncertain reads as "not fresh" (a call is made): no header, a directive that is
not a plain number of seconds, two `max-age` that disagree, `no-cache` / `no-store`, an
`Age` that is not a number. A `max-age` above `MAX_AGE_CAP_SECONDS` (the largest the API is
known to send) is capped there, so a proxy's `max-age=31536000` cannot freeze a tag for a year.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

# The largest max-age the API is known to send (league groups, war logs, 404s: 600 s).
MAX_AGE_CAP_SECONDS = 600
# Directives that forbid serving the copy without asking again, whatever max-age says.
_NOT_REUSABLE = frozenset({"no-cache", "no-store"})
# RFC 9110 §5.6.2: directives are tokens separated by commas; the API also separates
# `public` from `max-age` with a space, so both separate here.
_SEPARATORS = re.compile(r"[,\s]+")
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")


@functools.lru_cache(maxsize=64)  # the API sends a handful of values, each a few thousand times a run
def max_age(cache_control: str | None) -> int | None:
    """The `max-age` of a `Cache-Control` value, capped; None when absent, unusable or refused.

    Accepts `max-age=60`, `public max-age=600`, `public, max-age=60`, `max-age="60"`; any
    other directives beside it are ignored, except `no-cache` and `no-store`.
    """
    if not cache_control:
        return None
    found: set[int] = set()
    for directive in _SEPARATORS.split(cache_control.strip().lower()):
        name, _, value = directive.partition("=")
        if name in _NOT_REUSABLE:
            return None
        if name != "max-age":
            continue
        value = value.strip('"') if value.count('"') == 2 and value[0] == value[-1] == '"' else value
        if not _DELTA_SECONDS.fullmatch(value):
            return None  # `max-age=abc`, `max-age=-5`, `max-age=`: unusable, not fresh
        found.add(int(value))
    if len(found) != 1:
        return None  # none, or two that disagree (RFC 9111 §4.2.1: treat as stale)
    return min(found.pop(), MAX_AGE_CAP_SECONDS)


def age(values: Iterable[str]) -> int | None:
    """The `Age` in seconds (0 when absent); None when it is not one plain number."""
    seen = {value.strip() for value in values}
    if not seen:
        return 0
    if len(seen) != 1:
        return None
    (value,) = seen
    if not _DELTA_SECONDS.fullmatch(value):
        return None
    return int(value)


def fresh_for(cache_control: str | None, ages: Iterable[str] = ()) -> int | None:
    """Seconds an answer stays fresh from when it was asked for: max-age - Age; None if not at all."""
    lifetime = max_age(cache_control)
    held = age(ages)
    if lifetime is None or held is None or held >= lifetime:
        return None
    return lifetime - held
