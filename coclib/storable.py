"""What Postgres can store, whatever came in.

Postgres `text` refuses the NUL character, and a Python string can hold lone surrogates that
no UTF-8 encoder accepts; `jsonb` refuses `\\u0000` inside strings. Anything that reaches the
ledger from outside (a queue item's payload, an error's message) is made storable here by
writing those characters out visibly, so the audit still shows what came in. A snapshot body
is never rewritten (it is the API's JSON, byte for byte): one that jsonb cannot hold is
refused here, and its request fails as `unstorable`.
"""

from __future__ import annotations

import re

# NUL, and the surrogate range (only ever lone in a str that is not valid UTF-8).
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")
# `\u0000` in JSON text: preceded by an even number of backslashes (an odd one escapes it).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# A snapshot body larger than this is refused: real ones are tens of kilobytes, and a body of
# hundreds of megabytes would cost a Lambda its memory before Postgres refused it (jsonb's own
# limit is 255 MB).
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\x00" if char == "\x00" else f"\\u{ord(char):04x}"


def storable_text(text: str) -> str:
    """`text` with NUL written as `\\x00` and lone surrogates as `\\udXXX`; unchanged otherwise."""
    if _UNSTORABLE_CHAR.search(text) is None:
        return text
    return _UNSTORABLE_CHAR.sub(_escape, text)


def excerpt(raw: bytes, limit: int = 200) -> str:
    """The start of a raw payload as storable text: invalid UTF-8 shown as `\\xff`, NUL as `\\x00`."""
    text = raw[:limit].decode("utf-8", errors="backslashreplace")
    return storable_text(text) + ("…" if len(raw) > limit else "")


def json_problem(document: bytes) -> str | None:
    """Why `jsonb` cannot store this JSON text, or None if it can."""
    if len(document) > MAX_SNAPSHOT_BYTES:
        return (
            f"the body is {len(document) / 2**20:.1f} MiB, over the {MAX_SNAPSHOT_BYTES // 2**20} MiB limit"
        )
    if b"\\u0000" in document:
        found = _JSON_NUL.search(document)
        if found is not None:
            start = max(0, found.start() - 40)
            near = excerpt(document[start : found.end() + 20], limit=80)
            return f"a string holds \\u0000 (NUL), which jsonb cannot store: …{near}"
    return None
