"""What the benchmarks' results files share: the machine they ran on, and how they are rewritten."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path


def describe_machine() -> dict[str, str]:
    """CPUs, memory, load at the start, Python and Postgres versions."""

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.rstrip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "nproc": run("nproc"),
        "free": run("free", "-h"),
        "python": platform.python_version(),
        "cpu": cpu,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "postgres": run("psql", "--version"),
    }


def write_keeping_notes(out: Path, report: str, marker: str) -> None:
    """Write `report` to `out`, keeping what a person wrote below `marker` in the old file."""
    kept = out.read_text(encoding="utf-8").partition(marker)[2] if out.exists() else ""
    out.write_text(report + "\n" + (marker + kept if kept else ""), encoding="utf-8")


def provenance(command: str, machine: dict[str, str]) -> list[str]:
    """Markdown lines: the command that regenerates a results file, when and where it ran."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "```",
        command,
        "```",
        "",
        f"Run {now}. Machine: {machine['nproc']} CPUs ({machine['cpu']}), load average at start",
        f"{machine['load']}; Python {machine['python']}; {machine['postgres']}.",
    ]


@contextlib.contextmanager
def claimed_redis_db(base_url: str, owner: str, *, seconds: int = 3600):
    """A Redis db of `base_url`'s server, 15 down to 1, that no live test session or bench has
    claimed (`coclib.testing.services.claim_redis_db`, the tests' own claim); yields its URL,
    claimed for `owner`, and flushes it on exit if the claim is still ours."""
    import redis

    from coclib.testing.services import REDIS_CLAIM_KEY, claim_free_redis_db

    claim = f"{os.getpid()}:{owner}"
    url = claim_free_redis_db(base_url, claim, seconds, range(15, 0, -1))
    if url is None:
        raise SystemExit(f"every Redis db from 1 to 15 at {base_url} is claimed")
    try:
        yield url
    finally:
        with redis.Redis.from_url(url) as client:
            if client.get(REDIS_CLAIM_KEY) == claim.encode():
                client.flushdb()


def flush_keeping_claim(client) -> None:
    """Empty a claimed db for the next run, keeping the claim (one MULTI: never seen unclaimed)."""
    from coclib.testing.services import REDIS_CLAIM_KEY

    claim = client.get(REDIS_CLAIM_KEY)
    with client.pipeline(transaction=True) as tx:
        tx.flushdb()
        if claim is not None:
            tx.set(REDIS_CLAIM_KEY, claim, ex=3600)
        tx.execute()
