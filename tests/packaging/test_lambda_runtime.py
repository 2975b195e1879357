"""The built zips work on their own: unzipped as Lambda lays them out (/var/task, /opt/python)
and loaded in a clean interpreter, they import and drain a real queue into real Postgres."""

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

RUNTIME = Path(__file__).with_name("lambda_runtime.py")
QUEUE_KEY = "{coc:refresh}:queue"


def run_like_lambda(root: Path, mode: str, env: dict[str, str] | None = None) -> dict:
    """Runs lambda_runtime.py under `python -I -S` with a Lambda-like environment only."""
    lambda_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(root / "var" / "task"),
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
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
            [sys.executable, "-I", "-S", str(RUNTIME), str(root), mode, str(result)],
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
    # /var/task precedes /opt/python: the function's own copy of coclib wins.
    assert out["coclib"].startswith(str(lambda_root / "var" / "task"))
    assert out["coclib_testing_shipped"] is False


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

    assert out["handler_module"] == str(lambda_root / "var" / "task" / "lambda_function.py")
    assert out["foreign_modules"] == []
    summary = out["result"]
    assert summary["counts"].get("fetched") == 1, summary
    assert summary["stopped"] == "queue_empty", summary
    assert client.llen(queue_key) == 0
    with psycopg.connect(database_url) as conn:
        outcomes = sorted(
            row[0]
            for row in conn.execute("SELECT outcome FROM refresh_ledger WHERE request_id = %s", ("r1",))
        )
        players = conn.execute("SELECT count(*) FROM players WHERE tag = %s", ("#2PP",)).fetchone()[0]
    assert outcomes == ["attempted", "fetched"]
    assert players == 1
