"""SQL lives in the `sql` package; this module finds it and loads named queries.

The files are package data read through `importlib.resources`, never a path relative to
`coclib/`: in Lambda, coclib comes from the layer (/opt/python) and `sql` from the function
(/var/task), and in a built wheel both sit in site-packages. Wherever `import sql` finds the
package, its files are there.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

SQL_PACKAGE = "sql"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def _sql_dir() -> Path:
    try:
        root = resources.files(SQL_PACKAGE)
    except ModuleNotFoundError:
        raise ImportError(
            f"the {SQL_PACKAGE!r} package (the project's sql/ folder) is not importable: install "
            "the project, or ship sql/ beside worker/ and ledger/ (the Lambda function zip does)"
        ) from None
    # Every layout we ship unpacks to a directory, where `files()` is a real path. A zipped
    # import would give a Traversable that Path-based callers (migrations, audit) cannot use.
    if not isinstance(root, Path):
        raise ImportError(f"the {SQL_PACKAGE!r} package must be on a file system, not in {root!r}")
    return root


# The directory of the `sql` package: `queries.sql`, `migrations/`, `audit/`.
SQL_DIR = _sql_dir()


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
