"""SQL lives in `sql/`; this module finds it and loads named queries."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

# `sql/` sits beside the packages, in the repository and in the Lambda zip alike.
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` sections into {name: query}."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def load_queries(path: Path = SQL_DIR / "queries.sql") -> dict[str, str]:
    """The named queries of `sql/queries.sql`, parsed once per process."""
    return parse_queries(path.read_text(encoding="utf-8"))
