"""One lock for the tests and the build: what ships is exactly what was tested.

requirements.lock (written by ./lock-dependencies.sh) pins every dependency with its files'
hashes. The README's test command installs it (CI runs that command), and package-lambda.sh
ships the runtime part of it and records its hash in the manifest. These tests check the
three ends: the environment the tests run in, the build's output, and the commands.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import subprocess

import pytest
from packaging.markers import Marker

from .support import LOCK, REPO, SHA, copy_checkout, normalise, read_lock, run_package

QUICK_START = re.compile(r"(?ims)^#+ [^\n]*quick ?start[^\n]*\n.*?^```\w*\n(.*?)^```")


def quick_start_commands() -> list[str]:
    block = QUICK_START.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert block, "README has no Quick start code block"
    return [line for line in block[1].splitlines() if line.strip() and not line.startswith("#")]


def test_the_lock_pins_every_dependency_with_hashes():
    lock = read_lock()
    assert len(lock) >= 20
    for entry in lock.values():
        assert entry.hashes and all(h.startswith("sha256:") for h in entry.hashes), entry.name
    runtime = {"coc-py", "redis", "psycopg", "psycopg-binary", "psycopg-pool", "orjson", "msgspec"}
    runtime.add("aws-lambda-powertools")
    test = {"pytest", "hypothesis", "moto", "flask", "boto3"}
    assert runtime | test <= set(lock)
    header = LOCK.read_text(encoding="utf-8").splitlines()[:3]
    assert any("./lock-dependencies.sh" in line for line in header), "the lock names how to regenerate it"


def test_the_tests_run_in_the_locked_environment():
    """Every package of the lock that applies to this interpreter is installed at its pin."""
    wrong = []
    for entry in read_lock().values():
        if entry.marker and not Marker(entry.marker).evaluate():
            continue
        try:
            installed = importlib.metadata.version(entry.name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{entry.name}: not installed, the lock pins {entry.version}")
            continue
        if installed != entry.version:
            wrong.append(f"{entry.name}: {installed} installed, the lock pins {entry.version}")
    assert not wrong, (
        "the test environment is not the locked one; reinstall it with the README's test command:\n  "
        + "\n  ".join(wrong)
    )


def test_the_build_ships_the_locked_versions_and_records_the_lock(lambda_build):
    manifest = json.loads(lambda_build.manifest.read_text())
    assert manifest["lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    lock = read_lock()
    shipped = manifest["dependencies"]
    assert {"psycopg-binary", "orjson", "coc-py", "aws-lambda-powertools"} <= set(shipped)
    assert {name: version for name, version in shipped.items()} == {
        name: lock[name].version for name in shipped
    }


def test_quick_start_ci_and_build_read_the_same_lock_file():
    demo, tests = quick_start_commands()
    assert "-r requirements.lock" in tests.replace("-qr ", "-q -r "), tests
    assert "--no-deps" in tests  # the project itself adds nothing unlocked
    assert "pytest" in tests and "worker demo" in demo
    workflow = (REPO / ".github" / "workflows" / "refresh-worker.yml").read_text(encoding="utf-8")
    # CI installs exactly as the README does (its interpreter instead of .venv's), then tests.
    *installs, run = tests.split(" && ")[1:]
    assert " && ".join(installs).replace(".venv/bin/pip", "python -m pip") in workflow
    assert f"run: {run.replace('.venv/bin/python', 'python')}\n" in workflow
    assert re.search(r"^LOCK=requirements\.lock$", (REPO / "package-lambda.sh").read_text(), re.M)


def _rewrite_lock(checkout, name: str, change) -> None:
    path = checkout / "requirements.lock"
    blocks = re.split(r"\n(?=[a-z0-9])", path.read_text(encoding="utf-8"))
    hit = [i for i, b in enumerate(blocks) if normalise(b.split("==", 1)[0]) == name]
    assert len(hit) == 1, f"{name} is not in the lock"
    blocks[hit[0]] = change(blocks[hit[0]])
    path.write_text("\n".join(b for b in blocks if b), encoding="utf-8")


def test_a_runtime_dependency_missing_from_the_lock_stops_the_build(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    _rewrite_lock(checkout, "orjson", lambda block: "")

    proc = run_package("--sha", SHA, cwd=checkout)

    assert proc.returncode != 0
    assert "orjson 3." in proc.stderr
    assert "is needed on the target but not in requirements.lock" in proc.stderr
    assert not (checkout / "dist").exists() or not list((checkout / "dist").iterdir())


def test_a_file_that_does_not_match_the_locks_hash_stops_the_build(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    # Keep one hash, and make it wrong: the wheel pip downloads cannot match it.
    _rewrite_lock(
        checkout,
        "orjson",
        lambda block: block.split(" \\\n", 1)[0] + " \\\n    --hash=sha256:" + "0" * 64 + "\n",
    )

    proc = run_package("--sha", SHA, cwd=checkout)

    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("flag", ["--help"])
def test_the_lock_script_explains_itself_without_touching_anything(flag):
    before = LOCK.read_bytes()
    proc = subprocess.run(
        ["bash", str(REPO / "lock-dependencies.sh"), flag], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for phrase in ("universal", "requirements.lock", "package-lambda.sh", "--upgrade", "uv"):
        assert phrase in proc.stdout
    assert LOCK.read_bytes() == before
