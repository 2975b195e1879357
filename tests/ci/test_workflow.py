""".github/workflows/refresh-worker.yml: valid for GitHub (schema and actionlint, offline),
and it does what the deployment needs: test, build, ship by commit SHA, with OIDC and
least privilege. Broken copies prove the validators really reject things."""

from __future__ import annotations

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
            "name: refresh-worker-lambda-${{ github.sha }}",
            "name: refresh-worker-lambda-${{ github.shaa }}",
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


def test_runs_on_relevant_pushes_to_main_and_by_hand(workflow):
    push = workflow["on"]["push"]
    assert push["branches"] == ["main"]
    assert {"worker/**", "ledger/**", "coclib/**", "sql/**", "package-lambda.sh"} <= set(push["paths"])
    assert "workflow_dispatch" in workflow["on"]


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


def test_tests_run_against_postgres_and_redis_services(workflow):
    job = workflow["jobs"]["test"]
    assert job["services"]["postgres"]["image"] == "postgres:16"
    assert job["services"]["redis"]["image"] == "redis:7"
    [run] = [s for s in steps(job) if "pytest" in s.get("run", "")]
    assert run["run"].strip() == "python -m pip install -e '.[test]' && python -m pytest"
    assert run["env"] == {
        "TEST_DATABASE_URL": "postgresql://postgres:postgres@localhost:5432/postgres",
        "TEST_REDIS_URL": "redis://localhost:6379/0",
    }


def test_style_is_checked_with_the_pinned_ruff_before_the_tests(workflow):
    job = workflow["jobs"]["test"]
    runs = [s.get("run", "") for s in steps(job)]
    [lint_at] = [i for i, run in enumerate(runs) if "ruff check" in run]
    assert runs[lint_at] == "python -m pip install -e '.[lint]' && ruff check . && ruff format --check ."
    assert lint_at < next(i for i, run in enumerate(runs) if "pytest" in run)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    [pin] = pyproject["project"]["optional-dependencies"]["lint"]
    assert re.fullmatch(r"ruff==\d+\.\d+\.\d+", pin)


def test_build_ships_by_commit_sha_to_s3_and_github(workflow):
    job = workflow["jobs"]["build"]
    assert job["needs"] == "test"
    runs = "\n".join(s.get("run", "") for s in steps(job))
    assert "./package-lambda.sh" in runs and '--sha "$GITHUB_SHA"' in runs
    artifact = step_using(job, "actions/upload-artifact")["with"]
    assert artifact["name"] == "refresh-worker-lambda-${{ github.sha }}"
    assert artifact["retention-days"] == 30
    assert "dist/refresh-worker-${{ github.sha }}.zip" in artifact["path"]
    assert "dist/coclib-layer-${{ github.sha }}.zip" in artifact["path"]
    [upload] = [s for s in steps(job) if "aws s3 cp" in s.get("run", "")]
    assert upload["env"]["AWS_LAMBDA_ARTIFACTS_BUCKET"] == "${{ secrets.AWS_LAMBDA_ARTIFACTS_BUCKET }}"
    assert '"s3://${AWS_LAMBDA_ARTIFACTS_BUCKET}/${zip}"' in upload["run"]
    assert '"refresh-worker-${GITHUB_SHA}.zip" "coclib-layer-${GITHUB_SHA}.zip"' in upload["run"]


def test_aws_credentials_come_from_oidc_not_stored_keys(workflow):
    job = workflow["jobs"]["build"]
    assert job["permissions"]["id-token"] == "write"
    aws = step_using(job, "aws-actions/configure-aws-credentials")["with"]
    assert aws["role-to-assume"].startswith("${{ secrets.")
    assert not {"aws-access-key-id", "aws-secret-access-key", "aws-session-token"} & set(aws)
    assert "AWS_SECRET_ACCESS_KEY" not in WORKFLOW.read_text()
