"""A built wheel carries the SQL as package data, and coclib finds it there.

The wheel is built from a snapshot of the checkout (so the real sql/ folder is not beside it),
unpacked into an empty directory, and read by a fresh interpreter whose first path entry is
that directory: the modules and the SQL it uses must come from there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from .support import REPO, copy_checkout

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import coclib, sql
from coclib.migrations import discover
from coclib.sqlfiles import SQL_DIR, load_queries
from ledger.audit import load_audits
print(json.dumps({
    "coclib": coclib.__file__, "sql": sql.__file__, "sql_dir": str(SQL_DIR),
    "migrations": [m.path.name for m in discover()], "queries": sorted(load_queries()),
    "audits": sorted(load_audits()),
}))
"""


def test_the_wheel_ships_the_sql_and_coclib_finds_it(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "wheels"), "."],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wheel] = (tmp_path / "wheels").glob("coc_refresh_worker-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    sql_files = {p.relative_to(REPO).as_posix() for p in (REPO / "sql").rglob("*.sql")}
    assert sql_files <= shipped and "sql/__init__.py" in shipped

    # -I: no PYTHONPATH, no user site, not the current directory; the checkout is elsewhere.
    out = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    site = tmp_path / "site"
    assert found["coclib"] == str(site / "coclib" / "__init__.py")
    assert found["sql"] == str(site / "sql" / "__init__.py")
    assert found["sql_dir"] == str(site / "sql")
    assert found["migrations"] == sorted(Path(f).name for f in sql_files if f.startswith("sql/migrations/"))
    assert {"health", "ledger_size"} <= set(found["queries"])
    assert found["audits"] == sorted(Path(f).stem for f in sql_files if f.startswith("sql/audit/"))
