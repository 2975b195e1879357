"""Proves one built target loads on Lambda: the workflow runs it on every zip it builds.

    python tests/packaging/check_artifact.py [--require-import] dist/refresh-worker-<sha>-<target>.json

From the manifest it finds the function zip and the layer zip beside it, unzips them as Lambda
does (function in var/task, layer in opt/) and checks, independently of package-lambda.sh's own
reader (this one asks binutils' readelf):

* every ELF file is for the target's machine (x86_64 or AArch64) and needs no GLIBC symbol
  version newer than the runtime's (2.26 on Amazon Linux 2 for python3.11, 2.34 on Amazon
  Linux 2023 for python3.12 and 3.13);
* where this machine can run the target (its architecture and this interpreter's X.Y), the
  shipped dependencies, coclib and `lambda_function` import in a clean interpreter
  (`python -I -S -B`: no site-packages, only /var/task and /opt/python, nothing written), as
  tests/packaging/lambda_runtime.py does in the packaging tests, and when the manifest says the
  zips carry bytecode, no module of theirs is compiled from source on the way (the cold start
  uses the shipped .pyc). `--require-import` makes that step mandatory (x86_64 in the
  workflow); otherwise it is reported as not run (arm64, built on an x86_64 runner, gets the
  ELF check only).

Exit status 0 when everything checked passed; 1 with the problems listed otherwise.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GLIBC_MAX = {"python3.11": (2, 26), "python3.12": (2, 34), "python3.13": (2, 34)}
READELF_MACHINE = {"x86_64": "Advanced Micro Devices X86-64", "arm64": "AArch64"}
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
RUNTIME = Path(__file__).with_name("lambda_runtime.py")


def extract(zip_path: Path, dest: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = zf.extract(info, dest)
            if info.external_attr >> 16:
                os.chmod(target, (info.external_attr >> 16) & 0o777)


def elf_problems(root: Path, arch: str, runtime: str) -> tuple[int, tuple[int, ...], list[str]]:
    """(ELF files checked, newest GLIBC needed, problems)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return 0, (0,), ["readelf not found: install binutils"]
    checked, newest, problems = 0, (0,), []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        checked += 1
        name = path.relative_to(root).as_posix()
        out = subprocess.run([readelf, "-h", "-V", "-W", str(path)], capture_output=True, text=True).stdout
        machine = re.search(r"Machine:\s+(.+)", out)
        if machine is None or machine[1].strip() != READELF_MACHINE[arch]:
            problems.append(f"{name}: ELF machine {machine[1].strip() if machine else '?'}, not {arch}")
        for need in re.findall(r"Name: GLIBC_(\d+(?:\.\d+)+)\b", out):
            version = tuple(int(part) for part in need.split("."))
            newest = max(newest, version)
            if version > GLIBC_MAX[runtime]:
                have = ".".join(map(str, GLIBC_MAX[runtime]))
                problems.append(f"{name}: needs GLIBC_{need}, {runtime} on Lambda has {have}")
    return checked, newest, problems


def clean_import(root: Path, runtime: str, bytecode: str | None) -> list[str]:
    """Problems importing the target in a clean interpreter (empty: it loaded), and modules
    compiled from source although the zips carry `bytecode` (cpython-311, say)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LAMBDA_TASK_ROOT": str(root / "var" / "task"),
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
        "AWS_LAMBDA_FUNCTION_NAME": "refresh-worker",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_REGION": "eu-west-1",
    }
    result = root / "result.json"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", str(RUNTIME), str(root), "imports", str(result)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 or not result.exists():
        return [f"the clean-interpreter import failed:\n{proc.stderr[-4000:]}"]
    out = json.loads(result.read_text())
    problems = [f"loaded from outside the zips: {m}" for m in out["foreign_modules"]]
    if out.get("psycopg_impl") != "binary":
        problems.append(f"psycopg's implementation is {out.get('psycopg_impl')}, not the shipped binary")
    if not out.get("handler"):
        problems.append("lambda_function.lambda_handler is not callable")
    if bytecode:
        problems += [
            f"compiled from source, not the shipped {bytecode} .pyc: {path}"
            for path in out["compiled_from_source"]
        ]
        if not out["loaded_from_zips"]:
            problems.append("no module was loaded from the zips")
    return problems


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--require-import"]
    require_import = len(args) != len(argv)
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    manifest_path = Path(args[0])
    manifest = json.loads(manifest_path.read_text())
    runtime, arch = manifest["runtime"], manifest["architecture"]
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extract(manifest_path.with_name(manifest["function"]["file"]), root / "var" / "task")
        if manifest.get("layer"):
            extract(manifest_path.with_name(manifest["layer"]["file"]), root / "opt")
        checked, newest, found = elf_problems(root, arch, runtime)
        problems += found
        print(
            f"{manifest['target']}: {checked} shared objects, all checked for {arch}; newest GLIBC "
            f"needed {'.'.join(map(str, newest))} ({runtime} on Lambda has "
            f"{'.'.join(map(str, GLIBC_MAX[runtime]))})"
        )
        here = f"python{sys.version_info.major}.{sys.version_info.minor}"
        can_run = HOST_ARCH.get(platform.machine().lower()) == arch and here == runtime
        if can_run:
            found = clean_import(root, runtime, manifest.get("bytecode"))
            problems += found
            print(f"{manifest['target']}: clean-interpreter import {'failed' if found else 'passed'}")
            if not manifest.get("bytecode"):
                print(f"{manifest['target']}: the zips carry no bytecode: cold starts compile from source")
        elif require_import:
            machine = f"{platform.machine()}, {here}"
            problems.append(f"--require-import: this machine ({machine}) cannot run {manifest['target']}")
        else:
            print(f"{manifest['target']}: import not run here ({platform.machine()}, {here})")
    for problem in problems:
        print(f"check_artifact: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
