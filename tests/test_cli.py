"""`python -m worker`, run as a user runs it: a subprocess with its own environment.

Each command reads only the variables it uses; errors are one line on stderr without a
traceback and without secrets; a process that ran the drain or the handler exits without
asyncio's or aiohttp's complaints about what was left open.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import psycopg
import pytest
import redis

from coclib.errors import ConfigError
from coclib.keys import QueueKeys
from coclib.queue import RefreshRequest
from coclib.settings import DEFAULT_QUEUE_KEY, VARIABLES, QueueSettings, Settings
from tests.helpers import drain as helpers_drain
from tests.helpers import ledger, push

ROOT = Path(__file__).resolve().parent.parent
ALL_VARIABLES = {
    "DATABASE_URL", "REDIS_URL", "REFRESH_QUEUE_KEY", "COC_API_TOKENS", "COC_EMAIL", "COC_PASSWORD",
    "COC_API_BASE_URL", "COC_REQS_PER_SEC", "ENVIRONMENT", "LOG_LEVEL", "LEDGER_RETENTION_DAYS",
    "REDIS_CLUSTER", "SSL_CERT_FILE", "FRESHNESS", "DRAIN_LINGER_SECONDS",
}  # fmt: skip
# Every variable set to something Settings.from_env refuses, so a command that reads one fails.
BAD_VALUES = {
    "DATABASE_URL": "not a database url",
    "REDIS_URL": "http://not-redis",
    "REDIS_CLUSTER": "maybe",
    "COC_EMAIL": "only-the-email@example.com",
    "COC_API_BASE_URL": "ftp://nowhere",
    "COC_REQS_PER_SEC": "fast",
    "ENVIRONMENT": "moon",
    "LOG_LEVEL": "LOUD",
    "LEDGER_RETENTION_DAYS": "-3",
    "FRESHNESS": "sometimes",
    "DRAIN_LINGER_SECONDS": "forever",
}
# What asyncio, aiohttp and Python print when a process exits with things left open.
UNCLEAN_EXIT = (
    "Task was destroyed but it is pending",
    "Unclosed connector",
    "Unclosed client session",
    "Exception ignored",
    "Traceback",
)
SECRET = "pa55-w0rd-secret"
REDIS_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:coc/redis-url-AbCdEf"


def run_cli(
    *args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python -m worker ARGS` with exactly `env` for the project's variables."""
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    full = {**base, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def unclean_lines(*outputs: str) -> list[str]:
    return [line for out in outputs for line in out.splitlines() if any(m in line for m in UNCLEAN_EXIT)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment_block(help_text: str) -> set[str]:
    """The variable names listed under `environment:` in a --help text."""
    block = help_text.split("\nenvironment:\n", 1)[1].split("\n\n", 1)[0]
    return {
        line.split()[0] for line in block.splitlines() if line.startswith("  ") and not line.startswith("   ")
    }


# --- --help ----------------------------------------------------------------------------------


def test_help_names_the_variables_each_command_reads_with_defaults_and_the_exit_codes():
    helps = {}
    for command in ("drain", "migrate", "enqueue", "wait", "serve"):
        done = run_cli(command, "--help", env={})
        assert done.returncode == 0, done.stderr
        helps[command] = done.stdout
    assert environment_block(helps["enqueue"]) == set(QueueSettings.variables())
    assert environment_block(helps["migrate"]) == environment_block(helps["wait"]) == {"DATABASE_URL"}
    assert environment_block(helps["drain"]) == environment_block(helps["serve"]) == ALL_VARIABLES
    assert "(default {coc:refresh}:queue)" in helps["enqueue"]
    assert "(default 10, at most 30)" in helps["drain"]
    assert "(default https://api.clashofclans.com/v1)" in helps["drain"]
    assert "stop taking work after this long (default 295)" in helps["drain"]

    top = run_cli("--help", env={})
    codes = re.findall(r"^  (\d+) +\S", top.stdout.split("exit codes:", 1)[1], flags=re.MULTILINE)
    assert codes == ["0", "1", "2", "130"]
    readme = (ROOT / "README.md").read_text()
    for code in codes:  # the README's Commands section documents the same codes
        assert re.search(rf"^\| `{code}` \|", readme, flags=re.MULTILINE), code


def test_every_variable_settings_reads_is_documented_for_help():
    """Each field of Settings reads one variable of VARIABLES (help texts, the demo), and all are read."""
    read = Settings.variables()
    assert len(read) == len(set(read))
    assert set(read) == set(VARIABLES) == ALL_VARIABLES


def test_bad_values_are_each_refused_by_the_full_settings():
    """The premise of the tests below: each BAD_VALUES entry alone makes Settings refuse."""
    good = {"DATABASE_URL": "postgresql://h/db", "REDIS_URL": "redis://h:6379/0"}
    for name, value in BAD_VALUES.items():
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**good, name: value})
        assert caught.value.variable in (name, "COC_PASSWORD")  # the email needs its password


# --- enqueue -----------------------------------------------------------------------------------


def test_enqueue_reads_only_redis_url_and_the_queue_key(redis_url):
    others = {k: v for k, v in BAD_VALUES.items() if k not in QueueSettings.variables()}
    env = {**others, "REDIS_URL": redis_url, "REFRESH_QUEUE_KEY": "{cli-test}:queue"}

    done = run_cli("enqueue", "player", "#2PP", "#8qu8j9lp", env=env)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    with redis.Redis.from_url(redis_url) as client:
        queued = [orjson.loads(item) for item in client.lrange("{cli-test}:queue", 0, -1)]
        assert client.llen(DEFAULT_QUEUE_KEY) == 0
    assert [(item["kind"], item["tag"]) for item in queued] == [("player", "#2PP"), ("player", "#8QU8J9LP")]
    assert [line.split(": ")[1] for line in done.stdout.splitlines()] == [item["id"] for item in queued]


def test_enqueue_priority_queues_in_the_priority_lane(redis_url):
    env = {"REDIS_URL": redis_url, "REFRESH_QUEUE_KEY": "{cli-lane}:queue"}

    done = run_cli("enqueue", "--priority", "clan", "#2PP", env=env)

    assert done.returncode == 0, done.stderr
    with redis.Redis.from_url(redis_url) as client:
        urgent = [orjson.loads(item) for item in client.lrange("{cli-lane}:queue:priority", 0, -1)]
        assert client.llen("{cli-lane}:queue") == 0
    assert [(item["kind"], item["tag"]) for item in urgent] == [("clan", "#2PP")]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "configuration error: REDIS_URL: is required but not set"),
        (
            {"REDIS_URL": "http://x"},
            "configuration error: REDIS_URL: expected a redis://, rediss:// or unix:// URL",
        ),
        (
            # The command line reads no secret by reference: it says so, not "REDIS_URL is required".
            {"REDIS_URL_SECRET_ARN": REDIS_SECRET_ARN},
            "configuration error: REDIS_URL_SECRET_ARN: names a secret, but only the Lambda handler "
            "reads secrets by reference; set REDIS_URL itself here",
        ),
        (
            {"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:6379/0", "REDIS_URL_SECRET_ARN": REDIS_SECRET_ARN},
            "configuration error: REDIS_URL_SECRET_ARN: REDIS_URL is set too: give the value or a "
            "reference, not both",
        ),
        (
            {"REDIS_URL": "redis://127.0.0.1:6379/3", "REDIS_CLUSTER": "true"},
            "configuration error: REDIS_URL: names database 3, but a Redis Cluster has only database 0 "
            "(no SELECT): take the database (/3) out of the URL",
        ),
    ],
)
def test_enqueue_configuration_errors_are_one_line(env, message):
    done = run_cli("enqueue", "player", "#2PP", env=env)

    assert done.returncode == 2
    assert done.stderr.splitlines() == [message]
    assert done.stdout == ""


def test_enqueue_with_redis_unreachable_is_one_line_with_the_password_masked():
    url = f"redis://worker:{SECRET}@127.0.0.1:{closed_port()}/0"

    done = run_cli("enqueue", "clan", "#2PP", env={"REDIS_URL": url})

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: cannot reach Redis at redis://worker:***@127.0.0.1:"), line
    assert "Connection refused" in line
    assert SECRET not in done.stdout + done.stderr


def test_enqueue_checks_every_tag_before_queueing_any(redis_url):
    done = run_cli("enqueue", "player", "#2PP", "#NOT-A-TAG", env={"REDIS_URL": redis_url})

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: '#NOT-A-TAG' is not a tag: expected '#' and 3-14 of 0289PYLQGRJCUV"
    ]
    with redis.Redis.from_url(redis_url) as client:
        assert client.llen(DEFAULT_QUEUE_KEY) == 0


# --- migrate -------------------------------------------------------------------------------------


def test_migrate_reads_only_database_url(empty_database_url):
    env = {**BAD_VALUES, "DATABASE_URL": empty_database_url}
    del env["REDIS_URL"]  # not even set

    first = run_cli("migrate", env=env)
    again = run_cli("migrate", env=env)

    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 0001_")
    assert (again.returncode, again.stdout) == (0, "up to date\n")
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM refresh_ledger").fetchone() == (0,)


def test_migrate_with_postgres_unreachable_is_one_line_with_the_password_masked():
    url = f"postgresql://worker:{SECRET}@127.0.0.1:{closed_port()}/coc"

    done = run_cli("migrate", env={"DATABASE_URL": url})

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: database_unavailable: "), line
    assert SECRET not in done.stdout + done.stderr


def test_migrate_with_the_database_url_by_reference_says_the_command_line_reads_none():
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:coc/database-url-AbCdEf"

    done = run_cli("migrate", env={"DATABASE_URL_SECRET_ARN": arn})

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "configuration error: DATABASE_URL_SECRET_ARN: names a secret, but only the Lambda handler "
        "reads secrets by reference; set DATABASE_URL itself here"
    ]


# --- clean exit ----------------------------------------------------------------------------------


def test_cli_drain_prints_the_summary_and_exits_clean(worker_env, settings, redis_client):
    push(
        redis_client,
        settings,
        *(RefreshRequest(f"r{i}", "player", tag, 0.0) for i, tag in enumerate(["#2PP", "#PQL"])),
    )

    done = run_cli("drain", "--seconds", "60", env=worker_env)

    assert done.returncode == 0, done.stderr
    # Log lines (one JSON object each) come first; the summary is the indented object at the end.
    lines = done.stdout.splitlines()
    start = len(lines) - 1 - lines[::-1].index("{")
    summary = orjson.loads("\n".join(lines[start:]))
    assert (summary["stopped"], summary["counts"].get("fetched")) == ("queue_empty", 2)
    assert unclean_lines(done.stdout, done.stderr) == []
    assert done.stderr == ""


HANDLER_SCRIPT = textwrap.dedent(
    """
    import sys
    from coclib.testing.lambda_context import LambdaContext, scheduled_event
    from worker.lambda_function import lambda_handler

    summary = lambda_handler(scheduled_event(), LambdaContext(timeout_seconds=60))
    print("STOPPED", summary["stopped"], summary["counts"].get("fetched"))
    # No shutdown() here: a script that ran the handler just ends.
    """
)


def test_a_process_that_ran_the_handler_exits_clean(worker_env, settings, redis_client):
    push(
        redis_client,
        settings,
        RefreshRequest("h1", "clan", "#2PP", 0.0),
        RefreshRequest("h2", "war", "#PQL", 0.0),
    )
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(worker_env, PYTHONPATH=str(ROOT))

    done = subprocess.run(
        [sys.executable, "-c", HANDLER_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert "STOPPED queue_empty 2" in done.stdout
    assert unclean_lines(done.stdout, done.stderr) == []
    assert [
        row["outcome"] for row in ledger(worker_env["DATABASE_URL"]) if row["outcome"] != "attempted"
    ] == [
        "fetched",
        "fetched",
    ]


# --- the demo's guard ----------------------------------------------------------------------------


def _database_name(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


def _tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return [name for (name,) in rows]


def test_demo_refuses_real_services_not_named_as_scratch(empty_database_url, redis_url, tmp_path):
    name = _database_name(empty_database_url)
    env = {"DATABASE_URL": empty_database_url, "REDIS_URL": redis_url}
    cases = {
        (): [f"--scratch-database {name}", "--scratch-queue '{coc-demo}:queue'"],
        ("--scratch-database", "other_db", "--scratch-queue", "{x}:q"): [
            f"--scratch-database 'other_db' is not the database DATABASE_URL names ('{name}')"
        ],
        ("--scratch-database", name, "--scratch-queue", DEFAULT_QUEUE_KEY): ["is the worker's queue key"],
    }
    for args, expected in cases.items():
        done = run_cli("demo", "--requests", "5", *args, env=env, cwd=tmp_path)

        assert done.returncode == 2, (args, done.stdout, done.stderr)
        (line,) = done.stderr.splitlines()
        assert line.startswith("error: "), line
        for text in expected:
            assert text in line, (args, line)
        assert done.stdout == ""
    # It refused before touching anything.
    assert _tables(empty_database_url) == []
    with redis.Redis.from_url(redis_url) as client:
        assert [key for key in client.scan_iter() if not key.startswith(b"coc-tests:")] == []
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_a_redis_url_with_its_password_masked(tmp_path):
    url = f"redis://worker:{SECRET}@redis.example.com:6379/0"

    done = run_cli("demo", env={"REDIS_URL": url}, cwd=tmp_path)

    assert done.returncode == 2
    assert "REDIS_URL points at redis://worker:***@redis.example.com:6379/0" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_demo_runs_on_a_database_and_queue_named_as_scratch(empty_database_url, redis_url, tmp_path):
    name = _database_name(empty_database_url)
    scratch = "{cli-demo}:queue"
    with redis.Redis.from_url(redis_url) as client:
        client.rpush(DEFAULT_QUEUE_KEY, b"the site's own request")
        env = {"DATABASE_URL": empty_database_url, "REDIS_URL": redis_url}

        done = run_cli(
            "demo",
            "--requests",
            "12",
            "--scratch-database",
            name,
            "--scratch-queue",
            scratch,
            env=env,
            cwd=tmp_path,
        )

        assert done.returncode == 0, done.stdout + done.stderr
        assert f"on {scratch};" in done.stdout
        assert "Outcomes of this run (refresh_ledger):" in done.stdout
        assert "stopped=queue_empty" in done.stdout
        assert re.search(r"^NOTIFY refresh_done heard by the site: player #\w+ fetched", done.stdout, re.M)
        # The user's refresh, queued last in the priority lane, went before the backlog.
        assert "the priority lane overtook the backlog" in done.stdout
        # The worker's queue is untouched; the scratch queue and its in-flight list are drained.
        assert client.lrange(DEFAULT_QUEUE_KEY, 0, -1) == [b"the site's own request"]
        scratch_keys = QueueKeys(scratch)
        assert client.llen(scratch_keys.queue) == client.llen(scratch_keys.inflight) == 0
    terminal = [row for row in ledger(empty_database_url) if row["outcome"] != "attempted"]
    assert len(terminal) >= 12  # the requests and the malformed items, each settled once
    # Then the site asks again for tags it just got: fresh ones are settled without a call (a
    # tag is called again only if the simulator served it with an Age as old as its max-age,
    # one in ten), the rest are fetched and say whether they changed.
    assert "The site asks again for" in done.stdout
    second = [row for row in terminal if str(row["run_id"]) != str(terminal[0]["run_id"])]
    assert second and {row["outcome"] for row in second} <= {"skipped-fresh", "fetched"}
    assert "skipped-fresh" in {row["outcome"] for row in second}
    assert all(row["changed"] is not None for row in second if row["outcome"] == "fetched")
    failed = [row for row in terminal if row["outcome"] == "failed"]
    # The bad input anyone can see in the demo: a NUL-byte item (not UTF-8) and a tag the
    # simulator answers with an HTML page and status 200. Each fails alone, with a code.
    not_utf8 = [row for row in failed if row["reason"] == "invalid_request" and "UTF-8" in row["detail"]]
    assert len(not_utf8) == 1
    (html,) = [row for row in failed if "Service temporarily unavailable" in (row["detail"] or "")]
    assert re.fullmatch(r"[a-z_]+", html["reason"]) and html["kind"] == "player"
    assert not (tmp_path / ".local").exists()  # nothing embedded was started
    assert unclean_lines(done.stdout, done.stderr) == []


# --- wait ----------------------------------------------------------------------------------------


def test_wait_hears_the_tags_and_ids_it_waits_for(worker_env, settings, redis_client, database_url):
    push(redis_client, settings, RefreshRequest("before", "clan", "#8QU"))
    helpers_drain(settings)  # settled before the command started: found in the ledger by id
    env = {"DATABASE_URL": database_url}
    cmd = [
        sys.executable,
        "-m",
        "worker",
        "wait",
        "--kind",
        "player",
        "2pp",
        "--id",
        "before",
        "--timeout",
        "120",
    ]
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    with subprocess.Popen(
        cmd, env={**base, **env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stderr.readline().startswith("listening for 2 request(s)")  # LISTEN is on
        push(redis_client, settings, RefreshRequest("p1", "player", "#2PP"))
        helpers_drain(settings)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert sorted(out.splitlines()) == ["clan #8QU: fetched (id before)", "player #2PP: fetched (id p1)"]


def test_wait_times_out_with_exit_1_and_needs_something_to_wait_for(database_url):
    done = run_cli("wait", "--id", "never-queued", "--timeout", "0", env={"DATABASE_URL": database_url})
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "timed out after 0 s waiting for never-queued"
    nothing = run_cli("wait", env={"DATABASE_URL": database_url})
    assert (nothing.returncode, nothing.stderr) == (2, "error: give at least one TAG or --id\n")
