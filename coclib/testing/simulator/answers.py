"""What the simulated API sends back other than a good body: error bodies, forced statuses, and
200 answers whose body no client should have to read (`BadBody`).

Error bodies. The captures in ClashKingInc/ClashOfClansMockAPI hold no 403/404/429/500/503
answer, so these follow the exact strings public client code matches for Supercell's APIs
('{"reason":"notFound"}', '{"reason":"accessDenied","message":"Invalid authorization"}', the
invalidIp message), recorded bodies in public test fixtures (inMaintenance, unknownException),
and the API's documented 429 text. The private war log answer has no "message" key: that
absence is how clients (and DESIGN.md) tell it from a credentials fault.

Headers, verbatim from the captures: `Content-Type: application/json; charset=utf-8`, and
`Cache-Control` "max-age=60" (players/player/FOUND.json, clans/clans/CLAN.json), "max-age=120"
(clans/currentwar/{PREPARATION,INWAR,ENDED}.json), "public max-age=600"
(leagues/leaguetier/BADREQUEST.json: the API uses both forms; coc.py strips either prefix),
which the simulator sends with its 404s. An `Age` header is never sent unless a test asks for
one (`age`, `tag_age`): the API itself sends none, a shared cache in between would.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import orjson

CACHE_CONTROL = {"player": "max-age=60", "clan": "max-age=60", "war": "max-age=120"}
NOT_FOUND_CACHE_CONTROL = "public max-age=600"  # a 404's, as captured
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"

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


class Answer(NamedTuple):
    """One HTTP answer: status, body bytes, the two headers the API sets, and the `Age` a shared
    cache in between would add (None: no such header)."""

    status: int
    body: bytes
    cache_control: str | None = None
    content_type: str = JSON_CONTENT_TYPE
    age: int | None = None


def error(status: int, body: dict[str, str], cache_control: str | None = None) -> Answer:
    """An error answer with a JSON body, as the API sends them."""
    return Answer(status, orjson.dumps(body), cache_control)


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


def forced(status: int) -> Answer:
    """The answer for a status a test forces on a tag (`tag_status`)."""
    if status in _GATEWAY_TEXT:
        html = _GATEWAY_HTML.format(_GATEWAY_TEXT[status]).encode()
        return Answer(status, html, None, "text/html")
    return error(status, _FORCED_BODIES.get(status, UNKNOWN_EXCEPTION))


# --- 200 answers with a body no client should have to read --------------------------------------


class BadBody(enum.StrEnum):
    """A 200 answer whose body is not the JSON object the API promises.

    Each is what a real deployment can meet between the worker and the API: a proxy or captive
    portal's page, a connection cut mid-body, a misrouted or broken upstream, a runaway body.
    """

    HTML = "html"  # a proxy's error page, text/html, status 200
    TRUNCATED_JSON = "truncated_json"  # the right body cut in half, JSON headers
    JSON_ARRAY = "json_array"  # a JSON array holding the right body, JSON headers
    JSON_STRING = "json_string"  # a JSON string, JSON headers
    EMPTY = "empty"  # no body at all, JSON headers
    HUGE = "huge"  # valid JSON, the right body plus tens of MB of padding
    WRONG_CONTENT_TYPE = "wrong_content_type"  # the right body, sent as text/plain
    NUL_IN_STRING = "nul_in_string"  # the right body, a string in it holding \u0000 (valid JSON)


HUGE_BODY_BYTES = 24 * 1024 * 1024
PROXY_ERROR_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
    b"<title>Service temporarily unavailable</title></head>\n<body>\n"
    b"<h1>Service temporarily unavailable</h1>\n"
    b"<p>The upstream server did not answer in time. Please try again in a few minutes.</p>\n"
    b"<hr><p>Reference #18.4f2c1b17.1694123456.2a9e6f1</p>\n</body>\n</html>\n"
)
JSON_STRING_BODY = b'"Service temporarily unavailable"'
WRONG_CONTENT_TYPE = "text/plain; charset=utf-8"


def bad_answer(variant: BadBody, good_body: bytes, cache_control: str, huge_bytes: int) -> Answer:
    """The 200 answer of `variant`, in place of `good_body` (the tag's real body).

    The proxy page carries the proxy's `Cache-Control: no-store`; the others come "from the API"
    and carry its `Cache-Control` for the kind. Those headers matter: coc.py reads Cache-Control
    into the body it returns, which fails differently on a str, a list and a dict.
    """
    match variant:
        case BadBody.HTML:
            return Answer(200, PROXY_ERROR_PAGE, "no-store", HTML_CONTENT_TYPE)
        case BadBody.TRUNCATED_JSON:
            return Answer(200, good_body[: len(good_body) // 2], cache_control)
        case BadBody.JSON_ARRAY:
            return Answer(200, b"[" + good_body + b"]", cache_control)
        case BadBody.JSON_STRING:
            return Answer(200, JSON_STRING_BODY, cache_control)
        case BadBody.EMPTY:
            return Answer(200, b"", cache_control)
        case BadBody.HUGE:
            # Valid JSON of the right kind: only its size is wrong. The padding key is last, so
            # the body starts exactly like the real one.
            padding = max(0, huge_bytes - len(good_body))
            return Answer(200, good_body[:-1] + b',"padding":"' + b"x" * padding + b'"}', cache_control)
        case BadBody.WRONG_CONTENT_TYPE:
            return Answer(200, good_body, cache_control, WRONG_CONTENT_TYPE)
        case BadBody.NUL_IN_STRING:
            # The name (or the first string) gains a NUL: JSON allows it, Postgres' jsonb does not.
            key = b'"name":"' if b'"name":"' in good_body else b'":"'
            at = good_body.index(key) + len(key)
            return Answer(200, good_body[:at] + b"\\u0000" + good_body[at:], cache_control)
    raise ValueError(f"unknown bad body {variant!r}")


class BadBodies(dict[str, BadBody]):
    """The per-tag `bad_body` switch: a dict that refuses an unknown variant when it is set.

    Values may be given as `BadBody` members or their names ("html", "truncated_json", …), so a
    typo fails in the test that made it, not as a puzzling 500 from the server.
    """

    def __setitem__(self, tag: str, variant: BadBody | str) -> None:
        super().__setitem__(tag, BadBody(variant))

    def update(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        for tag, variant in dict(*args, **kwargs).items():  # type: ignore[call-overload]
            self[tag] = variant

    def setdefault(self, tag: str, variant: BadBody | str = BadBody.HTML) -> BadBody:  # type: ignore[override]
        if tag not in self:
            self[tag] = variant
        return self[tag]
