"""What a benchmark ran on, for its results file."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path


def describe() -> dict[str, str]:
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
