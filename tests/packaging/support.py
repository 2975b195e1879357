"""Helpers for the packaging tests: running package-lambda.sh, unzipping, reading ELF files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "package-lambda.sh"
SHA = "test0123abcd"
# The tests build for the Lambda runtime of the interpreter running them, so that the clean-
# interpreter test can load the layer's compiled wheels (psycopg-binary, orjson are per CPython).
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
GLIBC_MAX = {"3.11": (2, 26), "3.12": (2, 34), "3.13": (2, 34)}  # Amazon Linux 2, 2023, 2023
TARGET = f"python{PYTHON}-x86_64"
# What the function zip is built from; a copy of these is a buildable checkout.
SOURCES = (
    "lambda_function.py",
    "package-lambda.sh",
    "pyproject.toml",
    "requirements.lock",
    "worker",
    "ledger",
    "coclib",
    "sql",
)


@dataclass(frozen=True)
class Build:
    out: Path
    function_zip: Path
    layer_zip: Path | None
    manifest: Path
    output: str  # stdout and stderr together
    seconds: float


def run_package(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Runs package-lambda.sh with the test interpreter as its PYTHON."""
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    full_env.pop("GITHUB_SHA", None)
    return subprocess.run(
        ["bash", str(cwd / "package-lambda.sh"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def build(out: Path, *args: str, checkout: Path = REPO, target: str = TARGET) -> Build:
    """package-lambda.sh into `out`, for this interpreter's runtime unless `args` name one."""
    if PYTHON not in GLIBC_MAX:
        pytest.fail(f"the packaging tests need a Python that is a Lambda runtime (3.11-3.13), not {PYTHON}")
    if "--python" not in args:
        args = ("--python", PYTHON, *args)
    started = time.monotonic()
    proc = run_package("--out", str(out), "--sha", SHA, *args, cwd=checkout)
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"package-lambda.sh {' '.join(args)} failed:\n{output}"
    layer = out / f"coclib-layer-{SHA}-{target}.zip"
    return Build(
        out,
        out / f"refresh-worker-{SHA}-{target}.zip",
        layer if layer.exists() else None,
        out / f"refresh-worker-{SHA}-{target}.json",
        output,
        seconds,
    )


def copy_checkout(dest: Path, source: Path = REPO) -> Path:
    """A buildable copy of a checkout (no git, no caches): a snapshot, or one to break."""
    dest.mkdir(parents=True)
    for name in SOURCES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def extract(zip_path: Path, dest: Path) -> None:
    """Unzips keeping the modes stored in the zip, as Lambda does."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = zf.extract(info, dest)
            if info.external_attr >> 16:
                os.chmod(target, (info.external_attr >> 16) & 0o777)


def readelf(path: Path) -> str:
    tool = shutil.which("readelf")
    if tool is None:
        pytest.fail(
            "readelf not found: install binutils (apt-get install binutils); the GLIBC "
            "check cross-checks package-lambda.sh against it"
        )
    return subprocess.run(
        [tool, "-h", "-V", "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout


def glibc_needed(path: Path) -> set[tuple[int, ...]]:
    """The GLIBC_x.y versions a shared object needs, according to binutils."""
    return {
        tuple(int(p) for p in v.split("."))
        for v in re.findall(r"Name: GLIBC_(\d+(?:\.\d+)+)\b", readelf(path))
    }


def needed_libraries(path: Path) -> set[str]:
    """The sonames a shared object is linked against (DT_NEEDED)."""
    tool = shutil.which("readelf") or "readelf"
    out = subprocess.run([tool, "-d", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))


def elf_machine(path: Path) -> str:
    return re.search(r"Machine:\s+(.+)", readelf(path)).group(1).strip()


def elf_files(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


LOCK = REPO / "requirements.lock"


@dataclass(frozen=True)
class LockEntry:
    name: str  # normalised: lower case, runs of -_. as one -
    version: str
    marker: str | None
    hashes: tuple[str, ...]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, LockEntry]:
    """requirements.lock as {name: entry}: `name==version ; marker \\` lines, then `--hash=` lines."""
    entries: dict[str, LockEntry] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"([A-Za-z0-9][\w.-]*)==([^\s;]+)\s*(?:;\s*(.*?))?\s*((?:--hash=\S+\s*)*)$", line)
        if not m:
            assert not line, f"requirements.lock: cannot read {line!r}"
            continue
        hashes = tuple(re.findall(r"--hash=(\S+)", m[4]))
        entries[normalise(m[1])] = LockEntry(normalise(m[1]), m[2], (m[3] or "").strip() or None, hashes)
    return entries
