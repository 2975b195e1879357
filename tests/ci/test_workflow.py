""".github/workflows/refresh-worker.yml: valid for GitHub (schema and actionlint, offline),
and it does what the deployment needs: test pull requests and main alike, build every target
the module is deployed with, ship by commit SHA and target from main only, safely re-runnable,
with OIDC and least privilege. Broken copies prove the validators really reject things."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from .tools import REPO, WORKFLOW, lint, load_yaml, validate_schema

PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def workflow() -> dict:
    return load_yaml(WORKFLOW)


def steps(job: dict) -> list[dict]:
    return job["steps"]


def step_using(job: dict, action: str) -> dict:
    [step] = [s for s in steps(job) if s.get("uses", "").startswith(action + "@")]
    return step


def test_matches_githubs_workflow_schema():
    proc = validate_schema(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_passes_actionlint():
    proc = lint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 file(s), 0 finding(s)" in proc.stdout


@pytest.mark.parametrize(
    "old, new, validator",
    [
        ("runs-on: ubuntu-latest", "run-on: ubuntu-latest", validate_schema),
        ("runs-on: ubuntu-latest", "run-on: ubuntu-latest", lint),
        ("  contents: read", "  contents: reed", validate_schema),
        (
            "name: refresh-worker-lambda-${{ github.sha }}-python",
            "name: refresh-worker-lambda-${{ github.shaa }}-python",
            lint,
        ),
        ("needs: test", "needs: tests", lint),
    ],
    ids=[
        "schema-unknown-key",
        "actionlint-unknown-key",
        "schema-bad-permission",
        "actionlint-bad-expression",
        "actionlint-missing-job",
    ],
)
def test_validators_reject_a_broken_copy(tmp_path, old, new, validator):
    text = WORKFLOW.read_text()
    assert old in text
    broken = tmp_path / "refresh-worker.yml"
    broken.write_text(text.replace(old, new, 1))
    proc = validator(broken)
    assert proc.returncode != 0, f"{validator.__name__} accepted a broken workflow:\n{proc.stdout}"


LOCKED_INSTALL = "python -m pip install -qr requirements.lock && python -m pip install -qe . --no-deps"
SOURCES = {
    "worker/**",
    "ledger/**",
    "coclib/**",
    "sql/**",
    "tests/**",
    "package-lambda.sh",
    "lambda_function.py",
    "pyproject.toml",
    "requirements.lock",
    "tofu/**",  # tofu-only changes run the tofu tests
    ".ci/**",
}


def test_runs_on_pushes_to_main_pull_requests_and_by_hand(workflow):
    push = workflow["on"]["push"]
    assert push["branches"] == ["main"]
    assert set(push["paths"]) >= SOURCES
    assert set(workflow["on"]["pull_request"]["paths"]) == set(push["paths"])
    assert "workflow_dispatch" in workflow["on"]


def test_only_main_uploads_and_only_the_uploading_job_gets_aws_credentials(workflow):
    jobs = workflow["jobs"]
    uploaders = {name for name, job in jobs.items() if "aws s3" in json.dumps(job)}
    assert uploaders == {"publish"}
    condition = jobs["publish"]["if"]
    assert "github.ref == 'refs/heads/main'" in condition
    assert "github.event_name != 'pull_request'" in condition
    for name, job in jobs.items():
        uses = [s.get("uses", "") for s in steps(job)]
        has_aws = any(u.startswith("aws-actions/configure-aws-credentials@") for u in uses)
        assert has_aws == (name == "publish"), name
    # Tests and build run for pull requests too; they need nothing but read access.
    assert "if" not in jobs["test"] and "if" not in jobs["build"]
    assert jobs["build"]["needs"] == "test" and jobs["publish"]["needs"] == "build"


def build_targets(matrix: dict) -> set[tuple[str, str]]:
    excluded = {(e["python"], e["arch"]) for e in matrix.get("exclude", [])}
    return {(p, a) for p in matrix["python"] for a in matrix["arch"]} - excluded


def test_build_covers_every_target_the_module_accepts_that_can_load(workflow):
    """python3.11 on arm64 cannot load (psycopg-binary's aarch64 wheels need glibc 2.28, Amazon
    Linux 2 has 2.26); every other runtime and architecture tofu accepts is built."""
    matrix = workflow["jobs"]["build"]["strategy"]["matrix"]
    variables = (REPO / "tofu" / "variables.tf").read_text()
    runtimes = set(
        re.findall(r"python(3\.\d+)", re.search(r'variable "runtime" \{.*?\n\}', variables, re.S)[0])
    )
    arches = set(
        re.findall(r'"(x86_64|arm64)"', re.search(r'variable "architecture" \{.*?\n\}', variables, re.S)[0])
    )
    assert runtimes == {"3.11", "3.12", "3.13"} and arches == {"x86_64", "arm64"}
    assert build_targets(matrix) == {(p, a) for p in runtimes for a in arches} - {("3.11", "arm64")}


def test_tests_run_on_every_python_the_build_targets(workflow):
    job = workflow["jobs"]["test"]
    assert set(job["strategy"]["matrix"]["python"]) == set(
        workflow["jobs"]["build"]["strategy"]["matrix"]["python"]
    )
    assert step_using(job, "actions/setup-python")["with"]["python-version"] == "${{ matrix.python }}"
    assert job["strategy"]["fail-fast"] is False


def test_tests_get_their_system_tools_from_the_script_ci_runs_too(workflow):
    """ubuntu-latest has no redis-server; the Redis deployment tests need it. Both CI entry points
    install it with one script, before the tests."""
    runs = [s.get("run", "") for s in steps(workflow["jobs"]["test"])]
    install = runs.index(".ci/install-test-tools")
    assert install < next(i for i, run in enumerate(runs) if "pytest" in run)
    ci_run = (REPO / ".ci" / "run").read_text()
    assert "\n.ci/install-test-tools\n" in ci_run
    assert "apt-get" not in ci_run, ".ci/run installs nothing itself: the shared script does"
    script = (REPO / ".ci" / "install-test-tools").read_text()
    for need in ("redis-server", "redis-cli", "readelf", "npm", "policy-rc.d"):
        assert need in script


def test_every_built_target_proves_it_loads_before_it_is_kept(workflow):
    job = workflow["jobs"]["build"]
    names = [s.get("uses", s.get("name", "")) if "uses" in s else s["name"] for s in steps(job)]
    [prove] = [s for s in steps(job) if "check_artifact.py" in s.get("run", "")]
    assert names.index("Build the function and layer zips and their manifest") < names.index(prove["name"])
    assert names.index(prove["name"]) < next(i for i, n in enumerate(names) if "upload-artifact" in n)
    assert prove["env"] == {
        "ARCH": "${{ matrix.arch }}",
        "TARGET": "python${{ matrix.python }}-${{ matrix.arch }}",
    }
    assert "if [[ $ARCH == x86_64 ]]; then flags+=(--require-import); fi" in prove["run"]
    assert '"dist/refresh-worker-${GITHUB_SHA}-${TARGET}.json"' in prove["run"]


def test_build_covers_the_modules_default_target_and_names_artifacts_by_target(workflow):
    job = workflow["jobs"]["build"]
    matrix = job["strategy"]["matrix"]
    assert set(matrix["python"]) <= {"3.11", "3.12", "3.13"} and set(matrix["arch"]) <= {"x86_64", "arm64"}
    variables = (REPO / "tofu" / "variables.tf").read_text()
    runtime = re.search(r'variable "runtime" \{.*?default\s*=\s*"python(3\.\d+)"', variables, re.S)[1]
    arch = re.search(r'variable "architecture" \{.*?default\s*=\s*"(\w+)"', variables, re.S)[1]
    assert runtime in matrix["python"] and arch in matrix["arch"], "CI must build the module's default target"
    [run] = [s["run"] for s in steps(job) if "package-lambda.sh" in s.get("run", "")]
    assert run == (
        './package-lambda.sh --python "${{ matrix.python }}" --arch "${{ matrix.arch }}" --sha "$GITHUB_SHA"'
    )
    setup = step_using(job, "actions/setup-python")["with"]
    assert setup["python-version"] == "${{ matrix.python }}"  # pip evaluates markers for the target
    artifact = step_using(job, "actions/upload-artifact")["with"]
    target = "python${{ matrix.python }}-${{ matrix.arch }}"
    assert artifact["name"] == f"refresh-worker-lambda-${{{{ github.sha }}}}-{target}"
    assert artifact["path"] == f"dist/*-${{{{ github.sha }}}}-{target}.*"
    assert artifact["retention-days"] == 30 and artifact["if-no-files-found"] == "error"


def test_every_step_can_be_re_run(workflow):
    artifact = step_using(workflow["jobs"]["build"], "actions/upload-artifact")["with"]
    assert artifact["overwrite"] is True  # "Re-run failed jobs" uploads under the same name
    job = workflow["jobs"]["publish"]
    download = step_using(job, "actions/download-artifact")["with"]
    assert download["pattern"] == "refresh-worker-lambda-${{ github.sha }}-*"
    assert download["merge-multiple"] is True and download["path"] == "dist"
    [upload] = [s for s in steps(job) if "aws s3 cp" in s.get("run", "")]
    assert upload["env"]["AWS_LAMBDA_ARTIFACTS_BUCKET"] == "${{ secrets.AWS_LAMBDA_ARTIFACTS_BUCKET }}"
    script = upload["run"]
    # The zips go first and each manifest last: a manifest tofu can read means its zips are there.
    assert script.index('for file in "${zips[@]}"') < script.index('for file in "${manifests[@]}"')
    assert "--content-type application/json" in script.split('for file in "${manifests[@]}"')[1]
    assert '"s3://${AWS_LAMBDA_ARTIFACTS_BUCKET}/${file#dist/}"' in script
    # S3 checks each upload against its SHA-256 and keeps the checksum with the object.
    assert script.count("aws s3 cp --no-progress --checksum-algorithm SHA256 ") == 2
    # The keys are the file names package-lambda.sh writes, which are the module's keys.
    assert 'zips=(dist/*-"${GITHUB_SHA}"-*.zip)' in script
    assert 'manifests=(dist/refresh-worker-"${GITHUB_SHA}"-*.json)' in script


def test_least_privilege(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        granted = job.get("permissions", {})
        assert set(granted.values()) <= {"read", "write", "none"}
        writes = {scope for scope, level in granted.items() if level == "write"}
        assert writes <= {"id-token"}, f"job {name} may write {writes}"
        if "id-token" in writes:  # only the job that assumes the AWS role gets an OIDC token
            step_using(job, "aws-actions/configure-aws-credentials")


def test_actions_are_pinned_to_full_commit_shas(workflow):
    for job in workflow["jobs"].values():
        for step in steps(job):
            if "uses" in step:
                assert PINNED.match(step["uses"]), f"not pinned to a commit: {step['uses']}"
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), line


def test_tests_run_in_the_locked_environment_against_postgres_and_redis_services(workflow):
    job = workflow["jobs"]["test"]
    assert job["services"]["postgres"]["image"] == "postgres:16"
    assert job["services"]["redis"]["image"] == "redis:7"
    # The same Postgres as .ci/run's: trust authentication (see the workflow's comment).
    assert job["services"]["postgres"]["env"] == {"POSTGRES_HOST_AUTH_METHOD": "trust"}
    runs = [s.get("run", "") for s in steps(job)]
    assert LOCKED_INSTALL in runs
    [run] = [s for s in steps(job) if "pytest" in s.get("run", "")]
    assert run["run"].strip() == "python -m pytest"
    assert run["env"] == {
        "TEST_DATABASE_URL": "postgresql://postgres@localhost:5432/postgres",
        "TEST_REDIS_URL": "redis://localhost:6379/0",
    }
    for name in ("test", "build"):
        setup = step_using(workflow["jobs"][name], "actions/setup-python")["with"]
        assert setup["cache-dependency-path"] == "requirements.lock"


def test_style_is_checked_with_the_locked_ruff_before_the_tests(workflow):
    job = workflow["jobs"]["test"]
    runs = [s.get("run", "") for s in steps(job)]
    install = runs.index(LOCKED_INSTALL)
    [lint_at] = [i for i, run in enumerate(runs) if "ruff check" in run]
    assert runs[lint_at] == "ruff check . && ruff format --check ."
    assert install < lint_at < next(i for i, run in enumerate(runs) if "pytest" in run)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    [pin] = pyproject["project"]["optional-dependencies"]["lint"]
    assert re.fullmatch(r"ruff==\d+\.\d+\.\d+", pin)
    lock = (REPO / "requirements.lock").read_text(encoding="utf-8")
    assert f"\n{pin} \\\n" in lock, "the lock pins the lint extra's ruff"


def test_aws_credentials_come_from_oidc_not_stored_keys(workflow):
    job = workflow["jobs"]["publish"]
    assert job["permissions"]["id-token"] == "write"
    aws = step_using(job, "aws-actions/configure-aws-credentials")["with"]
    assert aws["role-to-assume"].startswith("${{ secrets.")
    assert not {"aws-access-key-id", "aws-secret-access-key", "aws-session-token"} & set(aws)
    assert "AWS_SECRET_ACCESS_KEY" not in WORKFLOW.read_text()
