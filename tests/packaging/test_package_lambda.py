"""package-lambda.sh: what goes into the zips, reproducibility, sizes, GLIBC, refusals."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import marshal
import os
import re
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from .support import (
    GLIBC_MAX,
    PYTHON,
    REPO,
    SCRIPT,
    SHA,
    TARGET,
    build,
    copy_checkout,
    elf_files,
    elf_machine,
    extract,
    glibc_needed,
    needed_libraries,
    run_package,
)

MB = 1024 * 1024
# What the Lambda Python runtimes' base images (Amazon Linux 2 and 2023) provide.
LAMBDA_SYSTEM_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libutil.so.1",
    "libresolv.so.2",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libz.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}
RUNTIME_DEPENDENCIES = (
    "coc",
    "redis",
    "psycopg",
    "psycopg_binary",
    "psycopg_pool",
    "orjson",
    "msgspec",
    "aws_lambda_powertools",
    "aiohttp",
)


def names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.namelist()


def repo_files(top: str) -> set[str]:
    return {
        p.relative_to(REPO).as_posix()
        for p in (REPO / top).rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix != ".pyc"
        and not any(part.startswith(".") for part in p.relative_to(REPO).parts)
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The bytecode of the target, which the tests build with an interpreter of its version.
CACHE_TAG = f"cpython-{PYTHON.replace('.', '')}"


def pyc_of(name: str, tag: str = CACHE_TAG) -> str:
    """The .pyc shipped for the source `name`: __pycache__/<module>.<tag>.pyc beside it."""
    folder, _, module = name.rpartition("/")
    return "/".join(filter(None, (folder, "__pycache__", f"{module.removesuffix('.py')}.{tag}.pyc")))


def with_bytecode(files: set[str]) -> set[str]:
    return files | {pyc_of(f) for f in files if f.endswith(".py")}


def bytecode(shipped: set[str] | list[str]) -> set[str]:
    return {n for n in shipped if "__pycache__" in n or n.endswith((".pyc", ".pyo"))}


def test_help_explains_the_options():
    proc = run_package("--help")
    assert proc.returncode == 0
    for word in (
        "--arch",
        "x86_64",
        "arm64",
        "--python",
        "3.11",
        "3.12",
        "3.13",
        "--single-zip",
        "--sha",
        "--out",
        "manylinux2014",
        "GLIBC",
        "50 MB",
        "250 MB",
    ):
        assert word in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "i386"], "--arch must be x86_64 or arm64"),
        (["--python", "3.10"], "--python must be 3.11, 3.12 or 3.13"),
        (["--sha", "a/b"], "--sha may hold only"),
        (["--arch"], "--arch needs a value"),
        (["--zip"], "unknown option '--zip'"),
    ],
)
def test_bad_options_are_refused(args, message):
    proc = run_package(*args)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert SCRIPT.read_text().splitlines()[:3][-1] == "set -euo pipefail"


# Modules for local runs only: they import coclib.testing, which never ships.
DEV_ONLY = {"worker/demo.py", "worker/serve.py"}


def test_function_zip_holds_the_handler_worker_ledger_and_sql_only(lambda_build):
    shipped = set(names(lambda_build.function_zip))
    assert "lambda_function.py" in shipped
    sources = {"lambda_function.py"} | {
        f for top in ("worker", "ledger", "sql") for f in repo_files(top) if f not in DEV_ONLY
    }
    # Each module with its bytecode for the target, and no other .pyc (none for the dev-only
    # modules, none of the checkout's own caches).
    assert shipped == with_bytecode(sources)
    assert "sql/__init__.py" in shipped  # the SQL is a package, found through importlib.resources
    assert f"__pycache__/lambda_function.{CACHE_TAG}.pyc" in shipped
    assert bytecode(shipped) == {pyc_of(f) for f in sources if f.endswith(".py")}
    assert not [n for n in shipped if n.startswith(("tests/", "bench/", "coclib/")) or n.endswith(".pyo")]


def test_layer_holds_coclib_and_the_dependencies_under_python(lambda_build):
    shipped = names(lambda_build.layer_zip)
    assert all(n.startswith("python/") for n in shipped)
    tops = {n.split("/")[1] for n in shipped}
    assert set(RUNTIME_DEPENDENCIES) <= tops
    coclib = {f"python/{f}" for f in repo_files("coclib") if not f.startswith("coclib/testing/")}
    assert with_bytecode(coclib) <= set(shipped)
    assert not [
        n for n in shipped if n.startswith(("python/coclib/testing/", "python/bin/")) or n.endswith(".pyo")
    ]
    # Every module, ours and the dependencies', has its bytecode for the target, and there is no
    # other bytecode (a wheel's own __pycache__, another version's, the simulator's).
    sources = {n for n in shipped if n.endswith(".py")}
    assert bytecode(shipped) == {pyc_of(n) for n in sources}
    assert not {"worker", "ledger", "sql", "tests"} & tops
    # The Lambda runtime provides the AWS SDK (Powertools' parameters utility uses it).
    assert not {"boto3", "botocore", "s3transfer"} & tops


def test_manifest_names_the_target_and_the_bytes_of_each_zip(lambda_build):
    manifest = json.loads(lambda_build.manifest.read_text())
    assert manifest["schema"] == 1 and manifest["commit"] == SHA
    assert (manifest["target"], manifest["runtime"], manifest["architecture"]) == (
        TARGET,
        f"python{PYTHON}",
        "x86_64",
    )
    for part, zip_path in (("function", lambda_build.function_zip), ("layer", lambda_build.layer_zip)):
        raw = hashlib.sha256(zip_path.read_bytes()).digest()
        assert manifest[part] == {
            "file": zip_path.name,
            "sha256": raw.hex(),
            "base64sha256": base64.b64encode(raw).decode(),  # what filebase64sha256() gives tofu
            "bytes": zip_path.stat().st_size,
        }
    # The shipped dependencies, read from the layer itself.
    dist_infos = [
        n.split("/")[1].removesuffix(".dist-info").rsplit("-", 1)
        for n in names(lambda_build.layer_zip)
        if n.count("/") == 2 and n.endswith(".dist-info/METADATA")
    ]
    in_layer = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in dist_infos}
    assert manifest["dependencies"] == in_layer
    assert manifest["bytecode"] == CACHE_TAG
    assert f"{lambda_build.manifest}: {TARGET}, lock sha256 " in lambda_build.output


def test_zip_entries_are_normalised(lambda_build):
    for zip_path in (lambda_build.function_zip, lambda_build.layer_zip):
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.external_attr >> 16 in (0o100644, 0o100755), info.filename


def test_bytecode_is_unchecked_hash_pycs_of_the_shipped_sources(lambda_build):
    """PEP 552: the target's magic number, flags 0b01 (hash-based, unchecked: the runtime never
    reads the source to validate it), the hash of the very source shipped beside it and no
    mtime; compiled under the module's name in the zip, not a path of the build machine."""
    checked = 0
    for zip_path, prefix in ((lambda_build.function_zip, ""), (lambda_build.layer_zip, "python/")):
        with zipfile.ZipFile(zip_path) as zf:
            for name in bytecode(zf.namelist()):
                folder, _, pyc = name.rpartition("__pycache__/")
                source = folder + pyc.removesuffix(f".{CACHE_TAG}.pyc") + ".py"
                data = zf.read(name)
                assert data[:4] == importlib.util.MAGIC_NUMBER, name
                assert int.from_bytes(data[4:8], "little") == 0b01, name
                assert data[8:16] == importlib.util.source_hash(zf.read(source)), name
                assert marshal.loads(data[16:]).co_filename == source.removeprefix(prefix), name
                assert zf.getinfo(name).external_attr >> 16 == 0o100644, name  # data, never executed
                checked += 1
    assert checked > 500


def test_sizes_are_within_targets_and_printed(lambda_build):
    function_size = lambda_build.function_zip.stat().st_size
    layer_size = lambda_build.layer_zip.stat().st_size
    assert function_size <= 1 * MB
    assert layer_size <= 15 * MB
    unzipped = sum(
        i.file_size
        for z in (lambda_build.function_zip, lambda_build.layer_zip)
        for i in zipfile.ZipFile(z).infolist()
    )
    assert unzipped <= 250 * MB
    for zip_path in (lambda_build.function_zip, lambda_build.layer_zip):
        assert re.search(
            rf"{re.escape(zip_path.name)}: [\d.]+ [KM]B zipped, [\d.]+ [KM]B unzipped",
            lambda_build.output,
        )
        assert sha256(zip_path) in lambda_build.output


def test_two_builds_are_byte_identical_and_fast(tmp_path):  # manifests included
    # Two copies of one snapshot, in different directories: the bytes depend on the sources
    # only, not on where they are, where the zips go or the staging directory.
    first = copy_checkout(tmp_path / "first")
    second = copy_checkout(tmp_path / "elsewhere" / "second", source=first)
    a = build(tmp_path / "a", checkout=first)
    started = time.monotonic()
    b = build(tmp_path / "b", checkout=second)
    assert time.monotonic() - started < 60, "a build with a warm pip cache takes under a minute"
    assert sha256(a.function_zip) == sha256(b.function_zip)
    assert sha256(a.layer_zip) == sha256(b.layer_zip)
    assert sha256(a.manifest) == sha256(b.manifest)
    # Bytecode included: compiled twice, the same bytes.
    assert bytecode(names(a.function_zip)) and bytecode(names(a.layer_zip))


def test_shared_objects_need_no_glibc_newer_than_the_runtime_has(lambda_build, tmp_path):
    extract(lambda_build.function_zip, tmp_path / "task")
    extract(lambda_build.layer_zip, tmp_path / "opt")
    objects = elf_files(tmp_path)
    assert objects, "psycopg-binary, orjson and aiohttp ship shared objects"
    newest = max(v for path in objects for v in glibc_needed(path))
    limit = GLIBC_MAX[PYTHON]
    assert newest <= limit, f"needs GLIBC {newest}, python{PYTHON} on Lambda has {limit}"
    assert {elf_machine(path) for path in objects} == {"Advanced Micro Devices X86-64"}
    # The script's own ELF reading agrees with binutils.
    assert f"newest GLIBC needed: {'.'.join(map(str, newest))} " in lambda_build.output
    # Everything else they link against ships with them (auditwheel's .libs directories).
    shipped = {path.name for path in objects}
    missing = {
        (path.name, lib)
        for path in objects
        for lib in needed_libraries(path)
        if lib not in shipped and lib not in LAMBDA_SYSTEM_LIBRARIES
    }
    assert not missing, f"linked against libraries Lambda does not have: {sorted(missing)}"


@pytest.mark.slow
def test_arm64_python312_build_ships_aarch64_objects(arm64_build, tmp_path):
    extract(arm64_build.layer_zip, tmp_path / "opt")
    objects = elf_files(tmp_path / "opt")
    assert {elf_machine(path) for path in objects} == {"AArch64"}
    assert max(v for path in objects for v in glibc_needed(path)) <= (2, 34)
    assert any("cpython-312-aarch64-linux-gnu" in p.name for p in objects)


@pytest.mark.slow
def test_an_interpreter_of_another_version_ships_no_bytecode_and_says_so(tmp_path):
    """Bytecode is per Python version: packed by this interpreter for another runtime, the zips
    carry none (Lambda would ignore it), and the build says what that costs."""
    other = "3.13" if PYTHON == "3.12" else "3.12"
    dist = build(tmp_path / "dist", "--python", other, target=f"python{other}-x86_64")
    assert f"is {CACHE_TAG}, not cpython-{other.replace('.', '')}: the zips carry no bytecode" in dist.output
    assert json.loads(dist.manifest.read_text())["bytecode"] is None
    assert not bytecode(names(dist.function_zip)) and not bytecode(names(dist.layer_zip))


@pytest.mark.slow
def test_single_zip_mode_builds_one_zip_with_everything(lambda_build, tmp_path):
    single = build(tmp_path / "dist", "--single-zip")
    assert single.layer_zip is None
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [
        f"refresh-worker-{SHA}-{TARGET}.json",
        f"refresh-worker-{SHA}-{TARGET}.zip",
    ]
    assert json.loads(single.manifest.read_text())["layer"] is None
    shipped = set(names(single.function_zip))
    assert set(names(lambda_build.function_zip)) <= shipped
    assert {n.removeprefix("python/") for n in names(lambda_build.layer_zip)} <= shipped


def newer_glibc_object() -> Path:
    """A shared object on this machine that needs a GLIBC newer than 2.26."""
    import sysconfig

    dirs = [
        Path(sysconfig.get_config_var("DESTSHARED") or "/nonexistent"),
        Path("/usr/lib/x86_64-linux-gnu"),
        Path("/lib/x86_64-linux-gnu"),
        Path("/usr/lib64"),
    ]
    for directory in dirs:
        for path in sorted(directory.glob("*.so*")) if directory.is_dir() else []:
            if path.is_file() and not path.is_symlink() and max(glibc_needed(path), default=(0,)) > (2, 26):
                return path
    pytest.fail(f"no shared object needing GLIBC > 2.26 in {dirs} to test the refusal with")


@pytest.mark.slow
def test_build_refuses_shared_objects_lambda_cannot_load(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    too_new = newer_glibc_object()
    (checkout / "coclib" / "_too_new.so").write_bytes(too_new.read_bytes())
    foreign = bytearray(too_new.read_bytes())
    foreign[18:20] = (183).to_bytes(2, "little")  # e_machine: AArch64
    (checkout / "coclib" / "_foreign.so").write_bytes(bytes(foreign))

    proc = run_package("--sha", SHA, cwd=checkout)

    assert proc.returncode != 0
    assert "coclib/_too_new.so: needs GLIBC_2." in proc.stderr
    assert "python3.11 on Lambda has 2.26" in proc.stderr
    assert "coclib/_foreign.so: ELF machine 183, not x86_64" in proc.stderr
    assert not list((checkout / "dist").glob("*.zip"))


def test_a_module_of_ours_that_does_not_compile_stops_the_build(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    (checkout / "worker" / "broken.py").write_text("def broken(:\n    pass\n")

    proc = run_package("--python", PYTHON, "--sha", SHA, cwd=checkout)

    assert proc.returncode != 0
    assert "package-lambda: error: could not compile worker/broken.py" in proc.stderr
    assert 'File "worker/broken.py", line 1' in proc.stderr  # the SyntaxError, under its name in the zip
    assert not list((checkout / "dist").glob("*.zip"))


def test_a_dependency_without_a_wheel_stops_the_build(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    pyproject = (checkout / "pyproject.toml").read_text()
    start = pyproject.index("dependencies = [")
    end = pyproject.index("\n]", start) + 2
    (checkout / "pyproject.toml").write_text(
        pyproject[:start] + 'dependencies = ["sdist-only-fixture==1.0"]' + pyproject[end:]
    )
    index = tmp_path / "index"  # a local index holding only a source distribution
    index.mkdir()
    with tarfile.open(index / "sdist_only_fixture-1.0.tar.gz", "w:gz") as tar:
        tar.add(checkout / "pyproject.toml", arcname="sdist_only_fixture-1.0/pyproject.toml")

    proc = run_package("--sha", SHA, cwd=checkout, env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index)})

    assert proc.returncode != 0
    assert (
        "no wheel of 'sdist-only-fixture==1.0' for python3.11 (cp311) on manylinux_2_26_x86_64 or older"
        in proc.stderr
    )
    assert not (checkout / "dist").exists() or not list((checkout / "dist").glob("*.zip"))


@pytest.mark.slow
def test_build_refuses_zips_over_lambdas_limits(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    (checkout / "sql" / "huge.bin").write_bytes(os.urandom(51 * MB))  # does not compress

    proc = run_package("--sha", SHA, cwd=checkout)

    assert proc.returncode != 0
    # (run_package builds the script's default target, python3.11-x86_64.)
    assert re.search(rf"refresh-worker-{SHA}-python3\.11-x86_64\.zip is 51\.\d+ MB", proc.stderr), proc.stderr
    assert "Lambda takes at most 50.00 MB" in proc.stderr
    assert not list((checkout / "dist").glob("*.zip"))


def _wheel(index: Path, name: str, version: str, tag: str) -> Path:
    """A minimal wheel of a one-module package, with the given platform tag."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = index / f"{dist}-py3-none-{tag}.whl"
    files = {
        f"{name.replace('-', '_')}.py": "VALUE = 1\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-{tag}\n"
        ),
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            zf.writestr(n, text)
    return path


def test_a_wheel_tagged_for_an_older_glibc_between_the_listed_tags_is_shipped(tmp_path):
    """pip does not expand PEP 600 tags: given only manylinux2014 (2_17), it refuses a
    manylinux_2_24 wheel that python3.11's glibc 2.26 loads. Every tag is passed, so it ships."""
    checkout = copy_checkout(tmp_path / "checkout")
    pyproject = (checkout / "pyproject.toml").read_text()
    start = pyproject.index("dependencies = [")
    end = pyproject.index("\n]", start) + 2
    (checkout / "pyproject.toml").write_text(
        pyproject[:start] + 'dependencies = ["glibc224-fixture==1.0"]' + pyproject[end:]
    )
    index = tmp_path / "index"
    index.mkdir()
    wheel = _wheel(index, "glibc224-fixture", "1.0", "manylinux_2_24_x86_64")
    with (checkout / "requirements.lock").open("a") as lock:
        lock.write(f"glibc224-fixture==1.0 \\\n    --hash=sha256:{sha256(wheel)}\n")

    proc = run_package("--sha", SHA, cwd=checkout, env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index)})

    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((checkout / "dist" / f"refresh-worker-{SHA}-python3.11-x86_64.json").read_text())
    assert manifest["dependencies"] == {"glibc224-fixture": "1.0"}
