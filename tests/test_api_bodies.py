"""Fuzzing the API body boundary: whatever bytes a 200 carries, the worker refuses them as
`bad_response` or stores them as they are, and reads what `check_body` needs the way a full
JSON parser would.

`coclib.coc_api.outline` validates a body without building it: msgspec checks the whole text
and builds only the object's top level (with `tag` and `state`), plus a UTF-8 check of its own.
Hypothesis sends arbitrary bytes and JSON texts (from the stdlib, which writes lone surrogates
as `\\u` escapes and integers of any size), cut short, with a byte changed or inserted
(invalid UTF-8, NUL), nested thousands deep, with huge numbers. Properties, judged against
orjson (a full, strict parser) and a real Postgres:

* `outline` raises only what the drain turns into `bad_response` (`msgspec.DecodeError`,
  `UnicodeDecodeError`), whatever comes in;
* whatever orjson reads, `outline` reads too, with the same keys and the same `tag` and `state`
  strings (all `check_body` looks at): a real API body is never refused;
* whatever `outline` reads as an object, Postgres's `jsonb` stores, sent as it came (binary,
  `coclib.snapshots.JsonText`), and reads back as the same value, unless `json_problem`
  refuses it first (`\\u0000`) or it is nested deeper than Postgres's stack allows, which
  Postgres refuses as the data's fault (54001: the request fails `unstorable`, alone).
"""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import orjson
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coclib.coc_api import OUTLINED, outline
from coclib.db import translate
from coclib.errors import StorageRefused
from coclib.snapshots import JsonText
from coclib.storable import json_problem

REFUSED = object()
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from([*OUTLINED, "name"]) | st.text(max_size=6)
objects = st.dictionaries(keys, values, max_size=6)


@st.composite
def json_texts(draw) -> bytes:
    value = draw(objects | values)
    ascii_only = draw(st.booleans())
    # Without ensure_ascii a lone surrogate becomes invalid UTF-8 (its bytes, encoded anyway).
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw) -> bytes:
    text = draw(json_texts() | st.binary(max_size=64))
    match draw(st.sampled_from(["as is", "cut", "byte", "insert", "nest", "number", "space"])):
        case "cut" if text:
            return text[: draw(st.integers(0, len(text) - 1))]
        case "byte" if text:
            at = draw(st.integers(0, len(text) - 1))
            return text[:at] + bytes([draw(st.integers(0, 255))]) + text[at + 1 :]
        case "insert":
            at = draw(st.integers(0, len(text)))
            junk = draw(st.sampled_from([b"\x00", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\\u0000", b","]))
            return text[:at] + junk + text[at:]
        case "nest":
            depth = draw(st.integers(1, 30_000))
            return b'{"tag": "#2PP", "x": ' + b"[" * depth + b"]" * depth + b"}"
        case "number":
            number = draw(st.sampled_from([b"1e999", b"-1e-999", b"1" * 400, b"0.1e-400", b"-0"]))
            return b'{"tag": "#2PP", "n": ' + number + b"}"
        case "space":
            return b" \n\t" + text + b"\r\n "
    return text


def _read(parse, body: bytes):
    try:
        return parse(body)
    except (msgspec.DecodeError, UnicodeDecodeError, orjson.JSONDecodeError):
        return REFUSED


def _exactly(text: bytes):
    # Numbers as decimals: jsonb writes 5.1e+16 as 51000000000000000, the same number.
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _strings(found: dict) -> dict:
    return {key: found.get(key) for key in OUTLINED if isinstance(found.get(key), str)}


def test_a_body_is_refused_or_read_as_a_full_parser_reads_it_and_stored_as_it_is(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:

        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(body=bodies())
        def check(body: bytes) -> None:
            found = _read(outline, body)  # anything else raised fails the test
            reference = _read(orjson.loads, body)
            if reference is not REFUSED:
                assert found is not REFUSED, "a body orjson reads was refused"
                assert isinstance(found, dict) == isinstance(reference, dict)
                if isinstance(reference, dict):
                    assert set(found) == set(reference)
                    assert _strings(found) == _strings(reference)
            if found is REFUSED or not isinstance(found, dict) or json_problem(body) is not None:
                return
            try:
                stored = conn.execute("SELECT %b::jsonb::text AS t", [JsonText(body)]).fetchone()[0]
            except psycopg.Error as exc:
                assert isinstance(translate(exc), StorageRefused) and exc.sqlstate == "54001", exc
                return
            if reference is not REFUSED:
                assert _exactly(stored.encode()) == _exactly(body)  # jsonb's text: the same value

        check()
