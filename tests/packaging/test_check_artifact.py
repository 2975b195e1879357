"""check_artifact.py, the workflow's proof that each built zip loads: it passes on a real build
and fails on one with a shared object of another machine or a newer GLIBC, and on a layer
that does not import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .test_package_lambda import newer_glibc_object

CHECK = Path(__file__).with_name("check_artifact.py")


def check(manifest: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), *flags, str(manifest)], capture_output=True, text=True, timeout=600
    )


def copy_build(lambda_build, dest: Path) -> Path:
    dest.mkdir()
    for path in (lambda_build.function_zip, lambda_build.layer_zip, lambda_build.manifest):
        shutil.copy2(path, dest / path.name)
    return dest / lambda_build.manifest.name


def test_a_real_build_passes_with_the_clean_interpreter_import(lambda_build):
    proc = check(lambda_build.manifest, "--require-import")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "clean-interpreter import passed" in proc.stdout
    assert "shared objects, all checked for x86_64" in proc.stdout


def test_a_foreign_or_too_new_shared_object_fails(lambda_build, tmp_path):
    manifest = copy_build(lambda_build, tmp_path / "dist")
    too_new = newer_glibc_object().read_bytes()
    foreign = bytearray(too_new)
    foreign[18:20] = (183).to_bytes(2, "little")  # e_machine: AArch64
    layer = manifest.with_name(lambda_build.layer_zip.name)
    with zipfile.ZipFile(layer, "a") as zf:
        zf.writestr("python/coclib/_too_new.so", too_new)
        zf.writestr("python/coclib/_foreign.so", bytes(foreign))

    proc = check(manifest)

    assert proc.returncode == 1
    assert "python/coclib/_foreign.so: ELF machine AArch64, not x86_64" in proc.stderr
    assert "python/coclib/_too_new.so: needs GLIBC_2." in proc.stderr


def _build_whose_layer_lacks(lambda_build, tmp_path, prefix: str):
    """A copy of the build whose layer leaves out every file under `prefix`; its manifest."""
    manifest = copy_build(lambda_build, tmp_path / "dist")
    layer = manifest.with_name(lambda_build.layer_zip.name)
    kept = tmp_path / "kept.zip"
    with zipfile.ZipFile(layer) as src, zipfile.ZipFile(kept, "w") as dst:
        for info in src.infolist():
            if not info.filename.startswith(prefix):
                dst.writestr(info, src.read(info))
    kept.replace(layer)
    return manifest


def test_a_layer_that_does_not_import_fails(lambda_build, tmp_path):
    manifest = _build_whose_layer_lacks(lambda_build, tmp_path, "python/orjson")

    proc = check(manifest, "--require-import")

    assert proc.returncode == 1
    assert "the clean-interpreter import failed" in proc.stderr and "orjson" in proc.stderr


def test_a_layer_whose_bytecode_goes_unused_fails(lambda_build, tmp_path):
    """The manifest says the zips carry bytecode; a module compiled from source on import means
    a cold start pays for it (here coclib's .pyc are left out)."""
    manifest = _build_whose_layer_lacks(lambda_build, tmp_path, "python/coclib/__pycache__/")

    proc = check(manifest, "--require-import")

    assert proc.returncode == 1
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    assert f"compiled from source, not the shipped {tag} .pyc: opt/python/coclib/__init__.py" in proc.stderr


def test_an_arm64_build_gets_the_elf_check(arm64_build):
    """The workflow builds arm64 on an x86_64 runner: every shared object is checked to be
    AArch64 and within Amazon Linux 2023's GLIBC; the import cannot run here."""
    dist = arm64_build
    proc = check(dist.manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "python3.12-arm64:" in proc.stdout and "all checked for arm64" in proc.stdout
    assert "import not run here" in proc.stdout
    assert check(dist.manifest, "--require-import").returncode == 1
