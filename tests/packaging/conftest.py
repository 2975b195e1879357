"""Builds the Lambda artifacts once per session and lays them out as Lambda does.

The build is the real `package-lambda.sh` (x86_64, for the Lambda runtime of the interpreter
running the tests: python3.11, the seed's runtime, in CI) run on this checkout into a temporary
directory, so `dist/` is left alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import Build, build, extract


@pytest.fixture(scope="session")
def lambda_build(tmp_path_factory) -> Build:
    """Function and layer zips for x86_64 and this interpreter's Python."""
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def arm64_build(tmp_path_factory) -> Build:
    """Function and layer zips for arm64 and python3.12, as the workflow builds them on x86_64."""
    dist = tmp_path_factory.mktemp("dist-arm64")
    return build(dist, "--arch", "arm64", "--python", "3.12", target="python3.12-arm64")


@pytest.fixture(scope="session")
def lambda_root(lambda_build, tmp_path_factory) -> Path:
    """An empty root holding var/task (the function zip) and opt/python (the layer)."""
    root = tmp_path_factory.mktemp("lambda-root")
    extract(lambda_build.function_zip, root / "var" / "task")
    extract(lambda_build.layer_zip, root / "opt")
    return root
