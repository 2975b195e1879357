"""The failure-audit queries of `sql/audit/*.sql`, run from Python exactly as psql runs them.

Each file is one documented query for psql: a comment block, then psql meta-commands that
give each `-v` variable its default, then one SQL statement that uses the variables as
`:'name'` (a quoted literal). This module reads the same files, so there is one source of
truth: it takes the defaults from the meta-commands, drops the meta-commands, and turns
each `:'name'` into a psycopg parameter. Only the small set of meta-commands the files use
is understood; anything else is an error, which keeps the files and this reader in step:

    \\set ON_ERROR_STOP on                         (ignored here)
    \\if :{?since} \\else \\set since '' \\endif     (a default, on one line or several)
    \\if :{?tag}  \\else …anything… \\endif          (no \\set: the variable is required)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from coclib.sqlfiles import SQL_DIR
from ledger.values import plain

AUDIT_DIR = SQL_DIR / "audit"

_META = re.compile(r"^\s*\\")
_IF = re.compile(r"^\\if\s+:\{\?(\w+)\}$")
_SET = re.compile(r"^\\set\s+(\w+)(?:\s+(.*))?$")
_VAR = re.compile(r":'(\w+)'")
# `:name` or `:"name"` would be interpolated by psql but not by us; `::type` casts are fine.
_OTHER_VAR = re.compile(r"(?<![:\w]):(?:\"\w+\"|[A-Za-z_]\w*)")
_LINE_COMMENT = re.compile(r"--[^\n]*")
_STRING = re.compile(r"'(?:[^']|'')*'")


class AuditError(Exception):
    """An audit file this reader cannot run, or bad parameters for one."""


@dataclass(frozen=True)
class AuditQuery:
    """One `sql/audit/NAME.sql`: its documentation, its parameters and its query."""

    name: str
    path: Path
    title: str
    doc: str
    defaults: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    sql: str = ""

    @property
    def params(self) -> tuple[str, ...]:
        """Every parameter, required first, in the order the file declares them."""
        return (*self.required, *(p for p in self.defaults if p not in self.required))

    def bind(self, values: Mapping[str, str | None]) -> dict[str, str]:
        """Parameter values for psycopg: the given ones over the file's defaults.

        Values are text, as psql's `-v` gives them; the query casts them itself.
        """
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            takes = ", ".join(self.params) or "none"
            raise AuditError(f"{self.name}: no parameter {', '.join(unknown)} (it takes {takes})")
        bound = {**self.defaults, **{k: v for k, v in values.items() if v is not None}}
        missing = [p for p in self.required if p not in bound]
        if missing:
            raise AuditError(f"{self.name}: {', '.join(missing)} is required")
        return bound


def _unquote(value: str) -> str:
    """A psql `\\set` value: a bare word, or a single-quoted string with '' for a quote."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if " " in value or "'" in value:
        raise AuditError(f"cannot read the \\set value {value!r}: quote it as one '…' string")
    return value


def _split_meta(line: str) -> list[str]:
    # `\if :{?x} \else \set x '' \endif` on one line is four commands; a backslash inside a
    # quoted value never occurs in our files, so splitting on ` \` is enough.
    return ["\\" + part.strip() for part in re.split(r"(?:^|\s)\\", line.strip()) if part.strip()]


def parse_audit(text: str, name: str = "audit", path: Path | None = None) -> AuditQuery:
    """Read one audit file's text into an `AuditQuery`."""
    doc_lines: list[str] = []
    sql_lines: list[str] = []
    defaults: dict[str, str] = {}
    required: list[str] = []
    branch: tuple[str, str] | None = None  # (variable, "if" | "else") inside \if … \endif
    in_header = True

    for raw in text.splitlines():
        if in_header and raw.startswith("--"):
            doc_lines.append(raw[2:].removeprefix(" "))
            continue
        in_header = False
        if not _META.match(raw):
            if branch is None:
                sql_lines.append(raw)
            elif branch[1] == "if":
                raise AuditError(f"{name}: only `\\else` branches may hold text: {raw.strip()!r}")
            continue  # text in an \else branch (a required variable's error) is psql's alone
        for command in _split_meta(raw):
            if match := _IF.match(command):
                if branch is not None:
                    raise AuditError(f"{name}: nested \\if")
                branch = (match.group(1), "if")
            elif command == "\\else":
                if branch is None:
                    raise AuditError(f"{name}: \\else without \\if")
                branch = (branch[0], "else")
            elif command == "\\endif":
                if branch is None:
                    raise AuditError(f"{name}: \\endif without \\if")
                variable = branch[0]
                if variable not in defaults and variable not in required:
                    required.append(variable)
                branch = None
            elif match := _SET.match(command):
                variable, value = match.group(1), match.group(2) or ""
                if variable == "ON_ERROR_STOP" and branch is None:
                    continue
                if branch is None or branch[1] != "else" or branch[0] != variable:
                    raise AuditError(
                        f"{name}: `\\set {variable}` must be the default in `\\if :{{?{variable}}} \\else`"
                    )
                defaults[variable] = _unquote(value)
            else:
                raise AuditError(f"{name}: unsupported psql meta-command {command!r}")
    if branch is not None:
        raise AuditError(f"{name}: \\if without \\endif")

    body = "\n".join(sql_lines).strip()
    code = _LINE_COMMENT.sub("", _STRING.sub("''", body))
    if stray := _OTHER_VAR.search(code):
        raise AuditError(f"{name}: use :'name' for variables, not {stray.group(0)!r}")
    used = set(_VAR.findall(body))
    declared = set(defaults) | set(required)
    if used - declared:
        raise AuditError(f"{name}: {', '.join(sorted(used - declared))} used without a default or \\if")
    if code.rstrip().rstrip(";").count(";"):
        raise AuditError(f"{name}: one statement per audit file")
    sql = _VAR.sub(lambda m: f"%({m.group(1)})s", body.replace("%", "%%")).rstrip().rstrip(";")

    doc = "\n".join(doc_lines).strip()
    title = doc.splitlines()[0] if doc else name
    return AuditQuery(name, path or Path(f"{name}.sql"), title, doc, defaults, tuple(required), sql)


def load_audits(directory: Path = AUDIT_DIR) -> dict[str, AuditQuery]:
    """Every audit query in `directory`, by file name without `.sql`, sorted."""
    return {
        path.stem: parse_audit(path.read_text(encoding="utf-8"), path.stem, path)
        for path in sorted(directory.glob("*.sql"))
    }


def run_audit(
    conn: psycopg.Connection, query: AuditQuery, values: Mapping[str, str | None]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run `query` with `values` (over its defaults); return its column names and rows."""
    params = query.bind(values)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query.sql, params)
        columns = [c.name for c in cur.description or ()]
        return columns, cur.fetchall()


# -- output ------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, timedelta):
        return str(value)
    text = str(plain(value))
    return text if len(text) <= 60 else text[:59] + "…"


def render_table(columns: list[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as an aligned text table with a header and a row count, as psql prints them."""
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [
        all(r[i].lstrip("-").replace(".", "", 1).isdigit() for r in cells if r[i])
        and any(r[i] for r in cells)
        for i in range(len(columns))
    ]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    for r in cells:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(r, widths, numeric, strict=True)]
        lines.append(" | ".join(parts).rstrip())
    lines.append(f"({len(cells)} row{'' if len(cells) == 1 else 's'})")
    return "\n".join(lines)
