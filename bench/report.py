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
