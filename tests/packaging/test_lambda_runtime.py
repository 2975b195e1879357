"""The built zips work on their own: unzipped as Lambda lays them out (/var/task, /opt/python)
and loaded in a clean interpreter, they import, find their SQL, migrate an empty database and
drain a real queue into real Postgres. coclib comes from the layer only; boto3 from nowhere
(the Lambda runtime provides it, and a plain-value configuration never imports it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from .support import PYTHON, extract

RUNTIME = Path(__file__).with_name("lambda_runtime.py")
ROOT = Path(__file__).resolve().parents[2]
QUEUE_KEY = "{coc:refresh}:queue"


def run_like_lambda(root: Path, mode: str, env: dict[str, str] | None = None) -> dict:
    """Runs lambda_runtime.py under `python -I -S -B` with a Lambda-like environment only (-B: the
    unzipped tree stays as Lambda has it, read-only, with no bytecode but what the zips carry)."""
    lambda_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(root / "var" / "task"),
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{PYTHON}",
        "AWS_LAMBDA_FUNCTION_NAME": "refresh-worker",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        **(env or {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp, "result.json")
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-B", str(RUNTIME), str(root), mode, str(result)],
            env=lambda_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0 and result.exists(), (
            f"the packaged function failed in a clean interpreter ({mode}):\n"
            f"{proc.stderr[-6000:]}\n{proc.stdout[-3000:]}"
        )
        return json.loads(result.read_text())


def test_dependencies_import_from_the_layer_alone(lambda_root):
    out = run_like_lambda(lambda_root, "imports")
    assert out["foreign_modules"] == []
    assert out["psycopg_impl"] == "binary"  # libpq comes with the wheel, not the system
    # One home for coclib: the layer. The function zip has none to shadow it with.
    assert out["coclib"] == str(lambda_root / "opt" / "python" / "coclib" / "__init__.py")
    assert not (lambda_root / "var" / "task" / "coclib").exists()
    assert out["coclib_testing_shipped"] is False
    assert out["boto3_importable"] is False
    # coclib (in /opt/python) finds the SQL that ships with the function (in /var/task).
    assert out["sql_dir"] == str(lambda_root / "var" / "task" / "sql")
    assert out["migrations"] == sorted(p.name for p in (ROOT / "sql" / "migrations").glob("*.sql"))
    assert {"health", "ledger_size", "insert_ledger_rows"} <= set(out["queries"])


def test_a_cold_import_uses_the_shipped_bytecode(lambda_build, tmp_path):
    """Lambda's /var/task and /opt are read-only: Python cannot cache bytecode there, so every
    module the zips carry no usable .pyc for is compiled from source on every cold start. Unzipped
    afresh and imported with nothing written: not one module of the zips is compiled."""
    extract(lambda_build.function_zip, tmp_path / "var" / "task")
    extract(lambda_build.layer_zip, tmp_path / "opt")
    unzipped = sorted(tmp_path.rglob("*"))

    out = run_like_lambda(tmp_path, "imports")

    assert out["compiled_from_source"] == []
    loaded = set(out["loaded_from_zips"])
    assert {"lambda_function", "worker.lambda_function", "coclib", "ledger"} <= loaded
    assert {"aiohttp", "redis", "psycopg", "psycopg_pool", "coc", "aws_lambda_powertools"} <= loaded
    assert sorted(tmp_path.rglob("*")) == unzipped  # nothing written, as on Lambda


def test_migrate_action_builds_the_schema_from_the_shipped_sql(lambda_root, empty_database_url, redis_url):
    env = {"DATABASE_URL": empty_database_url, "REDIS_URL": redis_url}
    out = run_like_lambda(lambda_root, "migrate", env=env)
    assert "error" not in out, out["error"]
    assert out["foreign_modules"] == []
    with psycopg.connect(empty_database_url) as conn:
        applied = [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
    assert applied == [p.stem[5:] for p in sorted((ROOT / "sql" / "migrations").glob("*.sql"))]


def test_scheduled_event_drains_the_queue_into_postgres(
    lambda_root, database_url, redis_url, simulator, worker_env
):
    queue_key = worker_env.get("REFRESH_QUEUE_KEY", QUEUE_KEY)
    client = redis.Redis.from_url(redis_url)
    client.rpush(
        queue_key,
        json.dumps({"id": "r1", "kind": "player", "tag": "#2PP", "enqueued_at": time.time()}),
    )

    out = run_like_lambda(lambda_root, "scheduled", env=worker_env)

    assert "error" not in out, out["error"]
    assert out["handler_module"] == str(lambda_root / "var" / "task" / "lambda_function.py")
    assert out["foreign_modules"] == []
    summary = out["result"]
    assert summary["counts"].get("fetched") == 1, summary
    assert summary["stopped"] == "queue_empty", summary
    assert summary["ledger_bytes"] > 0, summary  # the dashboard's ledger size, read after the run
    assert client.llen(queue_key) == 0
    with psycopg.connect(database_url) as conn:
        outcomes = sorted(
            row[0]
            for row in conn.execute("SELECT outcome FROM refresh_ledger WHERE request_id = %s", ("r1",))
        )
        players = conn.execute("SELECT count(*) FROM players WHERE tag = %s", ("#2PP",)).fetchone()[0]
    assert outcomes == ["attempted", "fetched"]
    assert players == 1
