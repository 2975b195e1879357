"""Static checks of the OpenTofu module in tofu/ (no tofu binary or provider is available).

Two tools, each in its own virtual environment under .cache/venvs/ (checkov vendors a fork of
python-hcl2 under the same `hcl2` import name, so they cannot share one), each installed from
its own hashed lock beside this file (hcl2.lock, checkov.lock; ./lock-dependencies.sh writes
them with requirements.lock):

* python-hcl2 parses every .tf file to JSON (hcl2_dump.py); the tests below assert the seed
  deployment guide's requirements on that JSON and check that every reference resolves.
* checkov (--framework terraform --skip-download) must report no failed check; each check the
  module skips is skipped inline with a reason, and every such skip must still be in use.

The environments are created on first use and reused while they were made from the same lock.
If pip cannot install them the tests fail with pip's output: they never skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
TOFU = REPO / "tofu"
EXAMPLE = "examples/complete"
BOOTSTRAP = "examples/bootstrap"
DUMP_SCRIPT = Path(__file__).with_name("hcl2_dump.py")
VENVS = REPO / ".cache" / "venvs"

# python-hcl2 8.x: SerializationOptions(strip_string_quotes=...) gives the classic JSON shape.
HCL2_REQUIREMENT = ("python-hcl2", Path(__file__).with_name("hcl2.lock"))
CHECKOV_REQUIREMENT = ("checkov", Path(__file__).with_name("checkov.lock"))

# A cold pip cache can take minutes for checkov: more than pytest-timeout's per-test default.
# (The marker is only known where pytest-timeout is installed, and markers are strict.)
pytestmark = [pytest.mark.timeout(900)] if importlib.util.find_spec("pytest_timeout") else []


# ---------------------------------------------------------------------------
# Virtual environments
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _installed_version(python: Path, dist: str) -> str | None:
    try:
        proc = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def locked_version(lock: Path, dist: str) -> str:
    """The version `lock` pins for `dist`."""
    found = re.search(rf"^{re.escape(dist)}==(\S+)", lock.read_text(encoding="utf-8"), re.M)
    assert found, f"{lock.name} does not pin {dist}: run ./lock-dependencies.sh"
    return found[1]


def ensure_venv(name: str, requirement: tuple[str, Path]) -> Path:
    """Return the python of .cache/venvs/NAME, installed from the lock (hashes checked)."""
    dist, lock = requirement
    venv = VENVS / name
    python = venv / "bin" / "python"
    stamp = venv / "installed-from.sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    with _locked(VENVS / f".{name}.lock"):
        if python.exists() and stamp.exists() and stamp.read_text() == digest:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "--require-hashes",
                "--only-binary=:all:",
                "-r",
                str(lock),
            ],
        ]
        for cmd in steps:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=800)
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.fail(f"could not set up {venv}: {' '.join(cmd)}: {exc}", pytrace=False)
            if proc.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.fail(
                    f"could not install {dist} from {lock.name} into {venv} (exit {proc.returncode}):\n"
                    f"$ {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
                    pytrace=False,
                )
        have = _installed_version(python, dist)
        if have != locked_version(lock, dist):
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"{venv} holds {dist} {have}, not the {lock.name} pin", pytrace=False)
        stamp.write_text(digest)
        return python


def test_a_failed_install_fails_the_tests_loudly(monkeypatch, tmp_path):
    """No index to install from: the fixture must fail with pip's reason, never skip."""
    monkeypatch.setattr(sys.modules[__name__], "VENVS", tmp_path / "venvs")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"(?s)could not install python-hcl2.*"):
        ensure_venv("hcl2", HCL2_REQUIREMENT)
    assert not (tmp_path / "venvs" / "hcl2").exists(), "a half-built venv must not be reused"


@pytest.fixture(scope="session")
def hcl2_python() -> Path:
    return ensure_venv("hcl2", HCL2_REQUIREMENT)


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    ensure_venv("checkov", CHECKOV_REQUIREMENT)
    return VENVS / "checkov" / "bin" / "checkov"


# ---------------------------------------------------------------------------
# Parsing and the module model
# ---------------------------------------------------------------------------


def parse_tree(python: Path, root: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(python), str(DUMP_SCRIPT), str(root)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        pytest.fail(f"python-hcl2 could not parse {root}:\n{proc.stderr}", pytrace=False)
    return json.loads(proc.stdout)["files"]


@dataclass
class Module:
    """The blocks of one module directory (its own .tf files, not subdirectories)."""

    directory: str
    files: dict[str, dict[str, Any]]
    variables: dict[str, dict] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    resources: dict[tuple[str, str], dict] = field(default_factory=dict)
    data: dict[tuple[str, str], dict] = field(default_factory=dict)
    modules: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    terraform: list[dict] = field(default_factory=list)

    @classmethod
    def from_files(cls, directory: str, all_files: dict[str, dict]) -> Module:
        prefix = f"{directory}/" if directory else ""
        own = {
            name: body
            for name, body in all_files.items()
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        }
        mod = cls(directory, own)
        for body in own.values():
            for block in body.get("variable", []):
                mod.variables.update(block)
            for block in body.get("locals", []):
                mod.locals.update(block)
            for kind, target in (("resource", mod.resources), ("data", mod.data)):
                for block in body.get(kind, []):
                    for rtype, named in block.items():
                        for rname, rbody in named.items():
                            assert (rtype, rname) not in target, f"duplicate {kind} {rtype}.{rname}"
                            target[(rtype, rname)] = rbody
            for block in body.get("module", []):
                mod.modules.update(block)
            for block in body.get("output", []):
                mod.outputs.update(block)
            mod.terraform.extend(body.get("terraform", []))
        return mod

    def resource(self, rtype: str, name: str) -> dict:
        assert (rtype, name) in self.resources, f"{self.directory or 'tofu'}: no {rtype}.{name}"
        return self.resources[(rtype, name)]

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == rtype}

    def resolve(self, value: Any, depth: int = 0) -> Any:
        """Follow a bare `${var.x}` to its default and a bare `${local.x}` to its value."""
        if depth > 10 or not isinstance(value, str):
            return value
        if m := re.fullmatch(r"\$\{var\.([\w-]+)\}", value):
            return self.resolve(self.variables[m[1]].get("default"), depth + 1)
        if m := re.fullmatch(r"\$\{local\.([\w-]+)\}", value):
            return self.resolve(self.locals[m[1]], depth + 1)
        return value


def strings_in(node: Any):
    """Every string in a parsed block: attribute values, list items, nested blocks."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


_LEAD = r"(?<![\w.])"
REF_PATTERNS = {
    "var": re.compile(_LEAD + r"var\.([A-Za-z_][\w-]*)"),
    "local": re.compile(_LEAD + r"local\.([A-Za-z_][\w-]*)"),
    "module": re.compile(_LEAD + r"module\.([A-Za-z_][\w-]*)"),
    "data": re.compile(_LEAD + r"data\.([a-z][a-z0-9_]*)\.([A-Za-z_][\w-]*)"),
    "resource": re.compile(_LEAD + r"(aws_[a-z0-9_]+)\.([A-Za-z_][\w-]*)"),
}


def references(node: Any) -> set[tuple]:
    refs: set[tuple] = set()
    for text in strings_in(node):
        for kind, pattern in REF_PATTERNS.items():
            for m in pattern.finditer(text):
                refs.add((kind, *m.groups()))
    return refs


def unresolved(mod: Module, refs: set[tuple]) -> list[str]:
    problems = []
    for ref in sorted(refs):
        kind = ref[0]
        ok = {
            "var": lambda r: r[1] in mod.variables,
            "local": lambda r: r[1] in mod.locals,
            "module": lambda r: r[1] in mod.modules,
            "data": lambda r: (r[1], r[2]) in mod.data,
            "resource": lambda r: (r[1], r[2]) in mod.resources,
        }[kind](ref)
        if not ok:
            problems.append(".".join(ref))
    return problems


def reference_problems(mod: Module) -> list[str]:
    """Undeclared variables, locals, modules, data sources and resources used anywhere."""
    return [
        f"{file}: {ref} is not declared"
        for file, body in sorted(mod.files.items())
        for ref in unresolved(mod, references(body))
    ]


def output_problems(mod: Module) -> list[str]:
    problems = []
    for name, body in sorted(mod.outputs.items()):
        refs = references(body.get("value"))
        if not refs:
            problems.append(f"output {name} refers to nothing")
        problems += [f"output {name}: {ref} does not exist" for ref in unresolved(mod, refs)]
    return problems


@pytest.fixture(scope="session")
def parsed(hcl2_python: Path) -> dict[str, dict]:
    return parse_tree(hcl2_python, TOFU)


@pytest.fixture(scope="session")
def mod(parsed) -> Module:
    return Module.from_files("", parsed)


@pytest.fixture(scope="session")
def example(parsed) -> Module:
    return Module.from_files(EXAMPLE, parsed)


def refs_to(value: Any, kind: str, *names: str) -> bool:
    return (kind, *names) in references(value)


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------


def test_every_tf_file_parses_and_the_layout_is_there(parsed):
    expected = {
        "versions.tf",
        "variables.tf",
        "main.tf",
        "artifacts.tf",
        "dashboard.tf",
        "lambda.tf",
        "iam.tf",
        "schedule.tf",
        "api_gateway.tf",
        "alarms.tf",
        "outputs.tf",
        f"{EXAMPLE}/main.tf",
        f"{EXAMPLE}/variables.tf",
        f"{EXAMPLE}/outputs.tf",
        f"{EXAMPLE}/versions.tf",
        f"{BOOTSTRAP}/main.tf",
        f"{BOOTSTRAP}/variables.tf",
        f"{BOOTSTRAP}/outputs.tf",
        f"{BOOTSTRAP}/versions.tf",
    }
    on_disk = {p.relative_to(TOFU).as_posix() for p in TOFU.rglob("*.tf") if ".terraform" not in p.parts}
    assert set(parsed) == on_disk, "every .tf file must be parsed"
    assert expected <= set(parsed)


def _allows(constraint: str, version: str) -> bool:
    """Terraform version constraints (>=, >, <=, <, =, !=, ~>) on a dotted version."""
    v = Version(version)
    for part in constraint.split(","):
        op, _, target = part.strip().partition(" ")
        if not target:
            m = re.fullmatch(r"(~>|>=|<=|!=|>|<|=)?\s*([\d.]+)", part.strip())
            op, target = (m[1] or "="), m[2]
        t = Version(target)
        if op == "~>":
            pieces = target.split(".")
            upper = Version(
                ".".join([*pieces[:-2], str(int(pieces[-2]) + 1)])
                if len(pieces) > 1
                else str(int(pieces[0]) + 1)
            )
            ok = t <= v < upper
        else:
            ok = {">=": v >= t, ">": v > t, "<=": v <= t, "<": v < t, "=": v == t, "!=": v != t}[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("directory", ["", EXAMPLE, BOOTSTRAP])
def test_aws_provider_constraint_covers_5x_and_6x_and_knows_every_allowed_runtime(parsed, directory):
    mod = Module.from_files(directory, parsed)
    assert mod.terraform, f"{directory or 'tofu'} has no terraform block"
    providers = mod.terraform[0]["required_providers"][0]
    aws = providers["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert _allows(aws["version"], "5.80.0") and _allows(aws["version"], "6.20.0")
    assert not _allows(aws["version"], "4.67.0") and not _allows(aws["version"], "7.0.0")
    # runtime allows python3.13, which 5.75.1 refuses (hashicorp/terraform-provider-aws#40107).
    allowed = Module.from_files("", parsed).variables["runtime"]["validation"][0]["condition"]
    runtimes = re.findall(r"python3\.\d+", allowed)
    assert "python3.13" in runtimes
    assert not _allows(aws["version"], "5.75.1")


@pytest.mark.parametrize("directory", ["", EXAMPLE, BOOTSTRAP])
def test_every_variable_has_a_description_and_a_type(parsed, directory):
    mod = Module.from_files(directory, parsed)
    assert mod.variables
    for name, body in mod.variables.items():
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
    for name, body in mod.outputs.items():
        assert str(body.get("description", "")).strip(), f"output {name} has no description"


# ---------------------------------------------------------------------------
# References resolve (and the check can fail)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["", EXAMPLE, BOOTSTRAP])
def test_every_reference_is_declared(parsed, directory):
    mod = Module.from_files(directory, parsed)
    refs = set().union(*(references(body) for body in mod.files.values()))
    assert len(refs) >= 10, "the reference scan found (almost) nothing"
    assert reference_problems(mod) == []


@pytest.mark.parametrize("directory", ["", EXAMPLE, BOOTSTRAP])
def test_every_output_refers_to_something_that_exists(parsed, directory):
    mod = Module.from_files(directory, parsed)
    assert mod.outputs
    assert output_problems(mod) == []


def test_example_calls_the_module_with_its_real_inputs_and_outputs(mod, example):
    call = example.modules["refresh_worker"]
    assert call["source"] == "../.."
    meta = {"source", "version", "providers", "count", "for_each", "depends_on"}
    passed = set(call) - meta
    assert passed - set(mod.variables) == set(), "the example passes inputs the module lacks"
    required = {name for name, body in mod.variables.items() if "default" not in body}
    assert required - passed == set(), "the example leaves required inputs out"
    used = {ref[1] for body in example.files.values() for ref in references(body) if ref[0] == "module"}
    assert used == {"refresh_worker"}
    for text in (s for body in example.files.values() for s in strings_in(body)):
        for name in re.findall(r"module\.refresh_worker\.([\w-]+)", text):
            assert name in mod.outputs, f"the example uses module output {name}, which is missing"
    # the example is "complete": it turns the optional parts on
    assert call["create_api"] is True
    assert call["create_alarm_topic"] is True
    assert call["subnet_ids"] == "${var.subnet_ids}"


@pytest.fixture
def tofu_copy(tmp_path) -> Path:
    copy = tmp_path / "tofu"
    shutil.copytree(TOFU, copy, ignore=shutil.ignore_patterns(".terraform"))
    return copy


def test_reference_check_catches_an_undeclared_variable(hcl2_python, tofu_copy):
    lambda_tf = tofu_copy / "lambda.tf"
    text = lambda_tf.read_text()
    assert "timeout       = 300" in text
    lambda_tf.write_text(text.replace("timeout       = 300", "timeout       = var.timeout_typo"))
    broken = Module.from_files("", parse_tree(hcl2_python, tofu_copy))
    assert reference_problems(broken) == ["lambda.tf: var.timeout_typo is not declared"]


def test_output_check_catches_a_missing_resource_and_a_missing_local(hcl2_python, tofu_copy):
    with (tofu_copy / "outputs.tf").open("a") as handle:
        handle.write(
            '\noutput "ghost" {\n  description = "x"\n'
            "  value       = aws_lambda_function.ghost.arn\n}\n"
            '\noutput "phantom" {\n  description = "x"\n  value       = local.phantom\n}\n'
        )
    broken = Module.from_files("", parse_tree(hcl2_python, tofu_copy))
    assert output_problems(broken) == [
        "output ghost: resource.aws_lambda_function.ghost does not exist",
        "output phantom: local.phantom does not exist",
    ]


# ---------------------------------------------------------------------------
# The function (seed: Lambda Function)
# ---------------------------------------------------------------------------


def test_runtime_defaults_to_python311_and_allows_311_to_313(mod):
    fn = mod.resource("aws_lambda_function", "this")
    assert fn["runtime"] == "${var.runtime}"
    var = mod.variables["runtime"]
    assert var["default"] == "python3.11"
    allowed = set(re.findall(r"python3\.\d+", var["validation"][0]["condition"]))
    assert allowed == {"python3.11", "python3.12", "python3.13"}


def test_handler_memory_timeout_architecture_publish(mod):
    fn = mod.resource("aws_lambda_function", "this")
    assert fn["handler"] == "lambda_function.lambda_handler"
    assert mod.resolve(fn["memory_size"]) == 512
    assert fn["timeout"] == 300
    assert fn["publish"] is True
    assert fn["architectures"] == ["${var.architecture}"]
    arch = mod.variables["architecture"]
    assert arch["default"] == "x86_64"
    assert set(re.findall(r'"(\w+)"', arch["validation"][0]["condition"])) == {"x86_64", "arm64"}
    assert fn["reserved_concurrent_executions"] == "${var.reserved_concurrency}"


def test_code_and_layer_come_from_s3_keys_named_by_commit_and_target(mod):
    fn = mod.resource("aws_lambda_function", "this")
    layer = mod.resource("aws_lambda_layer_version", "coclib")
    # package-lambda.sh --python X.Y --arch A names its files python<X.Y>-<A>: the runtime value.
    assert mod.locals["target"] == "${var.runtime}-${var.architecture}"
    assert 'TARGET="python$PYVER-$ARCH"' in (REPO / "package-lambda.sh").read_text()
    assert refs_to(fn["s3_bucket"], "var", "artifacts_bucket")
    assert refs_to(fn["s3_key"], "local", "function_s3_key")
    assert "refresh-worker-${var.commit_sha}-${local.target}.zip" in mod.locals["function_s3_key"]
    assert refs_to(layer["s3_bucket"], "var", "artifacts_bucket")
    assert refs_to(layer["s3_key"], "local", "layer_s3_key")
    assert "coclib-layer-${var.commit_sha}-${local.target}.zip" in mod.locals["layer_s3_key"]
    assert "refresh-worker-${var.commit_sha}-${local.target}.json" in mod.locals["manifest_s3_key"]
    # `filename` is a local path only (the seed's "s3://..." is not valid)
    assert refs_to(fn["filename"], "var", "function_zip_path")
    assert refs_to(layer["filename"], "var", "layer_zip_path")
    for (rtype, name), body in mod.resources.items():
        assert "s3://" not in str(body.get("filename", "")), f"{rtype}.{name} filename is s3://"
    assert refs_to(fn["layers"], "resource", "aws_lambda_layer_version", "coclib")
    assert layer["compatible_runtimes"] == ["${var.runtime}"]
    assert layer["compatible_architectures"] == ["${var.architecture}"]


def test_live_alias_is_what_everything_invokes(mod):
    alias = mod.resource("aws_lambda_alias", "live")
    assert mod.resolve(alias["name"]) == "live"
    assert refs_to(alias["function_version"], "var", "live_version")
    assert refs_to(alias["function_version"], "resource", "aws_lambda_function", "this")
    live = ("resource", "aws_lambda_alias", "live")
    assert live in references(mod.resource("aws_cloudwatch_event_target", "schedule")["arn"])
    for name in ("refresh_post", "health_get"):
        assert live in references(mod.resource("aws_api_gateway_integration", name)["uri"])
    for name, perm in mod.of_type("aws_lambda_permission").items():
        assert live in references(perm["qualifier"]), f"permission {name} is not on the alias"


def test_environment_variables_and_sensitive_inputs(mod):
    fn = mod.resource("aws_lambda_function", "this")
    assert fn["environment"][0]["variables"] == "${local.environment_variables}"
    env = mod.locals["environment_variables"]
    keys = set(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=", env))
    assert keys == {
        "DATABASE_URL",
        "REDIS_URL",
        "COC_EMAIL",
        "COC_PASSWORD",
        "COC_API_TOKENS",
        "COC_API_BASE_URL",
        "COC_REQS_PER_SEC",
        "ENVIRONMENT",
        "LOG_LEVEL",
        "REFRESH_QUEUE_KEY",
        "LEDGER_RETENTION_DAYS",
        "REDIS_CLUSTER",
        "DRAIN_LINGER_SECONDS",
        "FRESHNESS",
        "PYTHONPATH",
    }
    assert "DRAIN_LINGER_SECONDS = tostring(var.drain_linger_seconds)" in env
    # The worker reads `on` or `off` (coclib.settings), not tofu's true/false.
    assert 'FRESHNESS = var.freshness ? "on" : "off"' in env and mod.variables["freshness"]["default"] is True
    assert mod.variables["drain_linger_seconds"]["default"] == 120  # the schedule's period
    assert "local.secret_references" in env  # the *_SECRET_ARN / *_PARAMETER variables
    assert 'PYTHONPATH = "/var/task:/opt/python"' in env
    assert "LOG_LEVEL = var.log_level" in env and mod.variables["log_level"]["default"] == "INFO"
    assert mod.variables["refresh_queue_key"]["default"] == "{coc:refresh}:queue"
    # Only when given: unset, the worker detects a cluster itself.
    assert "var.redis_cluster != null ? {REDIS_CLUSTER = tostring(var.redis_cluster)} : {}" in env
    assert mod.variables["redis_cluster"]["default"] is None
    assert mod.variables["coc_api_base_url"]["default"] == "https://api.clashofclans.com/v1"
    assert mod.variables["coc_reqs_per_sec"]["default"] == 10
    sensitive = {name for name, body in mod.variables.items() if body.get("sensitive") is True}
    assert {"database_url", "redis_url", "coc_password", "coc_api_tokens"} <= sensitive
    # DATABASE_URL and REDIS_URL: a plain value or a reference, exactly one (checked at plan);
    # the plain value is in the environment only when given.
    for setting in EXACTLY_ONE_WAY:
        assert mod.variables[setting]["default"] is None
        assert f"var.{setting} != null ? {{{setting.upper()} = var.{setting}}} : {{}}" in env
    envs = set(re.findall(r'"(\w+)"', mod.variables["environment"]["validation"][0]["condition"]))
    assert envs == {"production", "staging", "development"}
    assert fn["kms_key_arn"] == "${var.kms_key_arn}"


# ---------------------------------------------------------------------------
# Triggers (seed: CloudWatch Events rule every 2 minutes)
# ---------------------------------------------------------------------------


def test_schedule_every_two_minutes_with_a_switch_and_a_scoped_permission(mod):
    rule = mod.resource("aws_cloudwatch_event_rule", "schedule")
    assert mod.resolve(rule["schedule_expression"]) == "rate(2 minutes)"
    assert refs_to(rule["state"], "var", "schedule_enabled")
    assert mod.variables["schedule_enabled"]["default"] is True
    target = mod.resource("aws_cloudwatch_event_target", "schedule")
    assert refs_to(target["rule"], "resource", "aws_cloudwatch_event_rule", "schedule")
    assert target["retry_policy"][0]["maximum_retry_attempts"] == 0
    perm = mod.resource("aws_lambda_permission", "schedule")
    assert perm["principal"] == "events.amazonaws.com"
    assert perm["action"] == "lambda:InvokeFunction"
    assert perm["source_arn"] == "${aws_cloudwatch_event_rule.schedule.arn}"


def test_async_invocations_are_not_retried_and_expire_soon(mod):
    cfg = mod.resource("aws_lambda_function_event_invoke_config", "live")
    assert cfg["maximum_retry_attempts"] == 0
    assert mod.resolve(cfg["maximum_event_age_in_seconds"]) <= 120
    assert refs_to(cfg["qualifier"], "resource", "aws_lambda_alias", "live")


# ---------------------------------------------------------------------------
# API Gateway (seed: POST /refresh with API key, GET /health)
# ---------------------------------------------------------------------------


def _method_for(mod: Module, path: str) -> dict:
    resources = [n for n, b in mod.of_type("aws_api_gateway_resource").items() if b["path_part"] == path]
    assert len(resources) == 1, f"one API resource for /{path}"
    methods = [
        b
        for b in mod.of_type("aws_api_gateway_method").values()
        if refs_to(b["resource_id"], "resource", "aws_api_gateway_resource", resources[0])
    ]
    assert len(methods) == 1, f"one method on /{path}"
    return methods[0]


def test_post_refresh_requires_an_api_key_and_get_health_exists(mod):
    refresh = _method_for(mod, "refresh")
    assert refresh["http_method"] == "POST"
    assert refresh["api_key_required"] is True
    health = _method_for(mod, "health")
    assert health["http_method"] == "GET"
    for name, integ in mod.of_type("aws_api_gateway_integration").items():
        assert integ["type"] == "AWS_PROXY", name
        assert integ["integration_http_method"] == "POST", name
    assert len(mod.of_type("aws_api_gateway_integration")) == 2


def test_api_deployment_stage_usage_plan_key_and_permission(mod):
    deployment = mod.resource("aws_api_gateway_deployment", "this")
    assert deployment["lifecycle"][0]["create_before_destroy"] is True
    redeploy = json.dumps(deployment["triggers"])
    for name in ("refresh_post", "health_get"):
        assert f"aws_api_gateway_integration.{name}" in redeploy
        assert f"aws_api_gateway_method.{name}" in redeploy
    stage = mod.resource("aws_api_gateway_stage", "this")
    assert refs_to(stage["deployment_id"], "resource", "aws_api_gateway_deployment", "this")
    plan = mod.resource("aws_api_gateway_usage_plan", "this")
    assert {"rate_limit", "burst_limit"} <= set(plan["throttle_settings"][0])
    assert {"limit", "period"} <= set(plan["quota_settings"][0])
    assert refs_to(plan["api_stages"][0]["stage"], "resource", "aws_api_gateway_stage", "this")
    mod.resource("aws_api_gateway_api_key", "this")
    key = mod.resource("aws_api_gateway_usage_plan_key", "this")
    assert key["key_type"] == "API_KEY"
    perm = mod.resource("aws_lambda_permission", "api")
    assert perm["principal"] == "apigateway.amazonaws.com"
    assert perm["source_arn"].startswith("${aws_api_gateway_rest_api.this[0].execution_arn}/")
    # the whole API is optional, on one variable
    assert mod.locals["api_count"] == "${var.create_api ? 1 : 0}"
    assert mod.variables["create_api"]["default"] is False
    for (rtype, name), body in mod.resources.items():
        if rtype.startswith("aws_api_gateway_") or (rtype, name) == ("aws_lambda_permission", "api"):
            assert body.get("count") == "${local.api_count}", f"{rtype}.{name} is not optional"


# ---------------------------------------------------------------------------
# VPC and IAM (seed: VPC configuration, IAM permissions)
# ---------------------------------------------------------------------------


def test_vpc_config_only_with_subnets_and_the_documented_managed_policy(mod):
    fn = mod.resource("aws_lambda_function", "this")
    dyn = fn["dynamic"][0]["vpc_config"]
    assert refs_to(dyn["for_each"], "local", "use_vpc")
    assert mod.locals["use_vpc"] == ("${length(var.subnet_ids) > 0 && length(var.security_group_ids) > 0}")
    content = dyn["content"][0]
    assert content == {"subnet_ids": "${var.subnet_ids}", "security_group_ids": "${var.security_group_ids}"}
    # AWS's documented way: the managed AWSLambdaVPCAccessExecutionRole, only in a VPC.
    attachment = mod.resource("aws_iam_role_policy_attachment", "vpc")
    assert attachment["count"] == "${local.use_vpc ? 1 : 0}"
    assert attachment["policy_arn"] == (
        "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
    )
    assert attachment["role"] == "${aws_iam_role.this.name}"
    # No hand-scoped EC2 ARNs built from this account (they break shared subnets).
    everything = " ".join(s for body in mod.files.values() for s in strings_in(body))
    assert ":ec2:" not in everything and "ec2:CreateNetworkInterface" not in everything
    assert "${aws_iam_role_policy_attachment.vpc}" in fn["depends_on"]


def test_role_may_only_write_to_its_own_log_group(mod):
    statements = mod.data[("aws_iam_policy_document", "logs")]["statement"]
    assert len(statements) == 1
    assert set(statements[0]["actions"]) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert statements[0]["resources"] == ["${aws_cloudwatch_log_group.function.arn}:*"]
    policies = {name for (t, name) in mod.resources if t == "aws_iam_role_policy"}
    assert policies == {"logs", "secrets"}
    attachments = mod.of_type("aws_iam_role_policy_attachment")
    assert set(attachments) == {"vpc"}, "no managed policy but the VPC access one"
    assert not mod.of_type("aws_iam_policy")
    everything = " ".join(s for body in mod.files.values() for s in strings_in(body))
    assert "logs:CreateLogGroup" not in everything
    group = mod.resource("aws_cloudwatch_log_group", "function")
    assert mod.resolve(group["name"]) == "/aws/lambda/${var.function_name}"
    assert mod.resolve(group["retention_in_days"]) == 30
    fn = mod.resource("aws_lambda_function", "this")
    assert "${aws_cloudwatch_log_group.function}" in fn["depends_on"]


# ---------------------------------------------------------------------------
# Secrets by reference
# ---------------------------------------------------------------------------

SECRET_SETTINGS = ("database_url", "redis_url", "coc_password", "coc_api_tokens")
# Required settings: given exactly one of three ways (a plain value, a secret, a parameter).
EXACTLY_ONE_WAY = ("database_url", "redis_url")


def test_each_secret_setting_has_a_secret_arn_and_a_parameter_input_that_become_env_references(mod):
    refs = mod.locals["secret_references"]
    for setting in SECRET_SETTINGS:
        arn, param = f"{setting}_secret_arn", f"{setting}_parameter"
        for name in (arn, param):
            body = mod.variables[name]
            assert body["default"] is None and body["type"] == "string"
            assert body.get("sensitive") is not True, f"{name} is a name, not a secret"
        # The worker's variable names (coclib.references.secret_references) from the inputs.
        assert f"{setting.upper()}_SECRET_ARN = var.{arn}" in refs
        assert f"{setting.upper()}_PARAMETER = var.{param}" in refs
        # A full secret ARN (with AWS's 6-character suffix), so that IAM matches it exactly.
        assert "-[A-Za-z0-9]{6}$" in mod.variables[arn]["validation"][0]["condition"]
    assert "if ref != null" in refs  # unset references are left out of the environment
    from coclib.settings import SECRET_SETTINGS as WORKER_SECRET_SETTINGS

    assert {s.upper() for s in SECRET_SETTINGS} == set(WORKER_SECRET_SETTINGS)


@pytest.mark.parametrize("setting", EXACTLY_ONE_WAY)
def test_a_required_secret_setting_is_given_exactly_one_way_or_the_plan_stops(mod, setting):
    inputs = (setting, f"{setting}_secret_arn", f"{setting}_parameter")
    for name in inputs:
        assert mod.variables[name]["default"] is None, f"{name} must be optional: one of three"
    # The plain value's check lets null through (a reference gives the value instead).
    assert f"var.{setting} == null ||" in mod.variables[setting]["validation"][0]["condition"]
    # The local counts the three inputs, the same way for every secret setting ...
    counted = ", ".join(f'var.{name} != null ? "v" : ""' for name in inputs)
    assert mod.locals[f"{setting}_sources"] == f"${{length(compact([{counted}]))}}"
    # ... and a precondition of the function stops the plan unless exactly one is given,
    # with a message that names all three.
    [check] = [
        c
        for c in mod.resource("aws_lambda_function", "this")["lifecycle"][0]["precondition"]
        if c["condition"] == f"${{local.{setting}_sources == 1}}"
    ]
    assert check["error_message"].startswith("Give the ")
    assert all(name in check["error_message"] for name in inputs)


def test_iam_grants_exactly_the_referenced_secrets_and_decrypt_for_a_customer_key(mod):
    doc = mod.data[("aws_iam_policy_document", "secrets")]
    assert doc["count"] == "${length(local.secret_references) > 0 ? 1 : 0}"
    statements = {s["content"][0]["sid"]: s for s in (d["statement"] for d in doc["dynamic"])}
    secrets = statements["ReadReferencedSecrets"]
    assert secrets["for_each"] == "${length(local.secret_arns) > 0 ? [1] : []}"
    assert secrets["content"][0]["actions"] == ["secretsmanager:GetSecretValue"]
    assert secrets["content"][0]["resources"] == "${local.secret_arns}"
    params = statements["ReadReferencedParameters"]
    assert params["content"][0]["actions"] == ["ssm:GetParameter"]
    assert params["content"][0]["resources"] == "${local.parameter_arns}"
    kms = statements["DecryptThroughSecretsManagerAndSsm"]
    assert kms["for_each"] == "${var.secrets_kms_key_arn != null ? [1] : []}"
    assert kms["content"][0]["actions"] == ["kms:Decrypt"]
    assert kms["content"][0]["resources"] == ["${var.secrets_kms_key_arn}"]
    [condition] = kms["content"][0]["condition"]
    assert (condition["test"], condition["variable"]) == ("StringEquals", "kms:ViaService")
    assert "secretsmanager" in json.dumps(condition["values"]) and "ssm" in json.dumps(condition["values"])
    # Exactly the given ARNs: the secret ARNs as given, the parameters' ARNs built from their names.
    assert mod.locals["secret_arns"].startswith("${sort([for name, ref in local.secret_references : ref if")
    assert 'endswith(name, "_SECRET_ARN")' in mod.locals["secret_arns"]
    params_arn = mod.locals["parameter_arns"]
    assert ":ssm:${data.aws_region.current.id}:${data.aws_caller_identity.current.account_id}:parameter/" in (
        params_arn
    )
    assert 'endswith(name, "_PARAMETER")' in params_arn
    # Every reference the function may be given is one of the two kinds, so one statement
    # grants exactly it: the Redis URL's secret or parameter as much as the database URL's.
    given = re.findall(r"\b([A-Z][A-Z0-9_]+) = var\.(\w+)", mod.locals["secret_references"])
    assert {name for name, _ in given} == {
        f"{setting.upper()}{kind}" for setting in SECRET_SETTINGS for kind in ("_SECRET_ARN", "_PARAMETER")
    }
    assert all(var == name.lower() for name, var in given)
    everything = json.dumps(doc)
    assert '"*"' not in everything and "secretsmanager:*" not in everything
    policy = mod.resource("aws_iam_role_policy", "secrets")
    assert policy["policy"] == "${data.aws_iam_policy_document.secrets[0].json}"
    assert "${aws_iam_role_policy.secrets}" in mod.resource("aws_lambda_function", "this")["depends_on"]


# ---------------------------------------------------------------------------
# The artifacts' manifest
# ---------------------------------------------------------------------------


def test_a_runtime_or_architecture_the_artifacts_were_not_built_for_stops_the_plan(mod):
    fn = mod.resource("aws_lambda_function", "this")
    preconditions = fn["lifecycle"][0]["precondition"]
    [target] = [p for p in preconditions if "local.manifest.runtime" in p["condition"]]
    assert "local.manifest.runtime == var.runtime" in target["condition"]
    assert "local.manifest.architecture == var.architecture" in target["condition"]
    assert "package-lambda.sh --python" in target["error_message"]
    assert "local.manifest.target" in target["error_message"]
    [layer] = [p for p in preconditions if "local.manifest.layer != null" in p["condition"]]
    assert "var.use_layer" in layer["condition"]
    [local_zip] = [p for p in preconditions if "filebase64sha256(var.function_zip_path)" in p["condition"]]
    assert "local.manifest.function.base64sha256" in local_zip["condition"]
    # In S3, a missing target is named, with what was built, before the manifest is read.
    manifest = mod.data[("aws_s3_object", "manifest")]
    assert manifest["key"] == "${local.manifest_s3_key}"
    [missing] = manifest["lifecycle"][0]["precondition"]
    assert missing["condition"] == "${contains(local.built_targets, local.target)}"
    assert "local.built_targets" in missing["error_message"] and "matrix" in missing["error_message"]
    listing = mod.data[("aws_s3_objects", "artifacts")]
    assert listing["prefix"] == "${local.artifact_prefix}"
    assert "jsondecode(local.manifest_json)" in mod.locals["manifest"]
    assert "data.aws_s3_object.manifest[0].body" in mod.locals["manifest_json"]
    assert "file(local.manifest_path)" in mod.locals["manifest_json"]


def test_a_changed_zip_is_redeployed(mod):
    fn = mod.resource("aws_lambda_function", "this")
    layer = mod.resource("aws_lambda_layer_version", "coclib")
    assert "local.manifest.function.base64sha256" in fn["source_code_hash"]
    assert "filebase64sha256(var.function_zip_path)" in fn["source_code_hash"]
    assert "local.manifest.layer.base64sha256" in layer["source_code_hash"]
    assert "filebase64sha256(var.layer_zip_path)" in layer["source_code_hash"]


# ---------------------------------------------------------------------------
# Ledger retention and the dashboard
# ---------------------------------------------------------------------------


def test_ledger_retention_defaults_to_30_days_with_the_growth_figures(mod):
    var = mod.variables["ledger_retention_days"]
    assert var["default"] == 30
    for figure in ("5.2 million rows", "1.6 GB", "306 bytes", "48 GB", "null keeps all history"):
        assert figure in var["description"], figure
    env = mod.locals["environment_variables"]
    assert "LEDGER_RETENTION_DAYS = tostring(var.ledger_retention_days)" in env


def test_dashboard_shows_what_operators_need_and_is_optional(mod):
    dash = mod.resource("aws_cloudwatch_dashboard", "this")
    assert dash["count"] == "${var.create_dashboard ? 1 : 0}"
    assert mod.variables["create_dashboard"]["default"] is True
    widgets = mod.locals["dashboard_widgets"]
    text = json.dumps(widgets)
    for metric in (
        "queue_size",
        "priority_queue_size",
        "inflight_size",
        "processed_requests",
        "api_requests_per_second",
        "fetched",
        "failed",
        "deferred",
        "skipped_deadline",
        "Errors",
        "Duration",
        "Throttles",
        "AsyncEventsDropped",
        "ledger_bytes",
    ):
        assert re.search(rf"\b{metric}\b", text), f"the dashboard does not show {metric}"
    by_title = {w["title"]: w for w in widgets}
    assert any(w.get("stacked") is True for w in widgets), "outcomes per run are stacked"
    limit = next(w for title, w in by_title.items() if "against the limit" in title)
    assert "var.coc_reqs_per_sec" in json.dumps(limit["annotations"])
    duration = next(w for title, w in by_title.items() if "timeout" in title)
    assert "local.timeout_ms" in json.dumps(duration["annotations"])
    assert mod.locals["timeout_ms"] == mod.resource("aws_lambda_function", "this")["timeout"] * 1000
    # The worker's metrics: namespace and dimension as worker/metrics.py emits them.
    assert mod.locals["emf"] == ["CocRefreshWorker"]
    assert mod.locals["emf_dims"] == [
        "environment",
        "${var.environment}",
        "FunctionName",
        "${var.function_name}",
    ]
    emitted = (REPO / "worker" / "metrics.py").read_text()
    for name in (
        "inflight_size",
        "ledger_bytes",
        "queue_size",
        "priority_queue_size",
        "api_requests_per_second",
    ):
        assert f'"{name}"' in emitted


# ---------------------------------------------------------------------------
# Alarms (seed: CloudWatch alarm recommendations) and the backlog alarm
# ---------------------------------------------------------------------------


def _alarm(mod: Module, metric: str) -> dict:
    found = [b for b in mod.of_type("aws_cloudwatch_metric_alarm").values() if b.get("metric_name") == metric]
    assert len(found) == 1, f"one alarm on {metric}"
    return found[0]


def test_errors_alarm_every_run_failing_for_two_periods(mod):
    # The arithmetic (every failed run pages within 15 minutes, one does not): test_alarms.py.
    alarm = _alarm(mod, "Errors")
    assert alarm["namespace"] == "AWS/Lambda"
    assert alarm["statistic"] == "Sum"
    assert (alarm["period"], alarm["evaluation_periods"], alarm["datapoints_to_alarm"]) == (
        "${local.every_run_period}",
        "${local.every_run_periods}",
        "${local.every_run_periods}",
    )
    assert alarm["threshold"] == "${local.every_run_per_period}"
    assert alarm["comparison_operator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["dimensions"] == {"FunctionName": "${aws_lambda_function.this.function_name}"}


def test_halted_alarm_on_the_workers_metric_less_api_maintenance(mod):
    alarm = mod.resource("aws_cloudwatch_metric_alarm", "halted")
    queries = {q["id"]: q for q in alarm["metric_query"]}
    assert queries["paging"]["expression"] == "halted - FILL(maintenance, 0)"
    assert queries["paging"]["return_data"] is True
    for name in ("halted", "maintenance"):
        [metric] = queries[name]["metric"]
        assert (metric["namespace"], metric["metric_name"], metric["stat"]) == (
            "CocRefreshWorker",
            "halted",
            "Sum",
        )
    assert queries["halted"]["metric"][0]["dimensions"] == "${local.emf_alarm_dimensions}"
    assert 'cause = "maintenance"' in queries["maintenance"]["metric"][0]["dimensions"].replace("'", '"')
    assert alarm["treat_missing_data"] == "notBreaching"
    emitted = (REPO / "worker" / "metrics.py").read_text()
    assert 'name="halted"' in emitted and 'name="cause"' in emitted and 'name="FunctionName"' in emitted


def test_schedule_alarm_counts_the_rules_deliveries_not_the_functions_invocations(mod):
    # GET /health probes invoke the function too: the function's Invocations cannot tell a
    # dead schedule. The rule's own AWS/Events Invocations can.
    alarm = _alarm(mod, "Invocations")
    assert alarm["namespace"] == "AWS/Events"
    assert alarm["dimensions"] == {"RuleName": "${aws_cloudwatch_event_rule.schedule.name}"}
    assert alarm["statistic"] == "Sum"
    # Two silent periods in a row: one lost datapoint (EventBridge is best-effort) does not page.
    assert (alarm["period"], alarm["evaluation_periods"], alarm["datapoints_to_alarm"]) == (300, 2, 2)
    assert alarm["threshold"] == 1
    assert alarm["comparison_operator"] == "LessThanThreshold"
    assert alarm["treat_missing_data"] == "breaching"
    assert alarm["actions_enabled"] == "${var.schedule_enabled}"
    lambda_invocations = [
        b
        for b in mod.of_type("aws_cloudwatch_metric_alarm").values()
        if b.get("namespace") == "AWS/Lambda" and b.get("metric_name") == "Invocations"
    ]
    assert not lambda_invocations


def test_failed_schedule_deliveries_alarm(mod):
    alarm = _alarm(mod, "FailedInvocations")
    assert alarm["namespace"] == "AWS/Events"
    assert alarm["dimensions"] == {"RuleName": "${aws_cloudwatch_event_rule.schedule.name}"}
    assert (alarm["statistic"], alarm["threshold"], alarm["comparison_operator"]) == (
        "Sum",
        0,
        "GreaterThanThreshold",
    )
    assert alarm["treat_missing_data"] == "notBreaching"


@pytest.mark.parametrize("metric", ["Throttles", "AsyncEventsDropped"])
def test_throttles_and_dropped_async_events_alarm_on_the_function(mod, metric):
    alarm = _alarm(mod, metric)
    assert alarm["namespace"] == "AWS/Lambda"
    assert alarm["dimensions"] == {"FunctionName": "${aws_lambda_function.this.function_name}"}
    assert alarm["statistic"] == "Sum" and alarm["comparison_operator"] == "GreaterThanThreshold"
    assert alarm["treat_missing_data"] == "notBreaching"
    assert mod.resolve(alarm["threshold"]) == 0


def test_duration_alarm_above_the_drains_own_end(mod):
    # A manual drain runs to its deadline, 5 s before the timeout: test_alarms.py checks it
    # does not trip this.
    alarm = _alarm(mod, "Duration")
    assert alarm["namespace"] == "AWS/Lambda"
    assert alarm["statistic"] == "Maximum"
    assert alarm["threshold"] == "${local.duration_alarm_ms}"  # Lambda reports milliseconds
    assert alarm["comparison_operator"] == "GreaterThanThreshold"


def test_every_alarm_is_an_output(mod):
    names = mod.outputs["alarm_names"]["value"]
    alarms = mod.of_type("aws_cloudwatch_metric_alarm")
    assert {re.search(r"metric_alarm\.(\w+)\.", v)[1] for v in names.values()} == set(alarms)


def test_backlog_alarm_on_the_queue_size_emf_metric(mod):
    alarm = _alarm(mod, "queue_size")
    assert alarm["namespace"] == "CocRefreshWorker"
    assert alarm["dimensions"] == "${local.emf_alarm_dimensions}"
    assert mod.locals["emf_alarm_dimensions"] == {
        "environment": "${var.environment}",
        "FunctionName": "${var.function_name}",
    }
    assert alarm["comparison_operator"] == "GreaterThanThreshold"
    assert refs_to(alarm["threshold"], "var", "backlog_alarm_threshold")


def test_alarms_notify_the_optional_topic(mod):
    topic = mod.resource("aws_sns_topic", "alarms")
    assert topic["count"] == "${var.create_alarm_topic ? 1 : 0}"
    assert "aws_sns_topic.alarms" in mod.locals["alarm_actions"]
    for name, alarm in mod.of_type("aws_cloudwatch_metric_alarm").items():
        assert alarm["alarm_actions"] == "${local.alarm_actions}", name


# ---------------------------------------------------------------------------
# Outputs and README
# ---------------------------------------------------------------------------


def test_required_outputs(mod):
    assert {"function_arn", "alias_arn", "api_url", "api_key_id", "log_group_name"} <= set(mod.outputs)
    assert mod.outputs["api_key_value"].get("sensitive") is True


def test_readme_documents_every_input_and_output_and_the_runbooks(mod):
    readme = (TOFU / "README.md").read_text(encoding="utf-8")
    for name in [*mod.variables, *mod.outputs]:
        assert f"`{name}`" in readme, f"README does not document {name}"
    for phrase in (
        "package-lambda.sh --python 3.12",
        "python3.12",
        "Amazon Linux 2",
        "NAT gateway",
        "Elastic IP",
        "Rollback",
        "examples/complete",
        "reserved_concurrency",
    ):
        assert phrase in readme, f"README does not mention {phrase!r}"


# ---------------------------------------------------------------------------
# checkov
# ---------------------------------------------------------------------------

SKIP_COMMENT = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
GATE_FLAGS = ("--framework", "terraform", "--skip-download", "--quiet", "--compact")


def run_checkov(checkov: Path, directory: Path, *flags: str) -> subprocess.CompletedProcess:
    """checkov -d DIRECTORY FLAGS...; a run that could not scan fails the test."""
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}  # checkov reads LOG_LEVEL
    proc = subprocess.run(
        [str(checkov), "-d", directory.name, *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=directory.parent,
    )
    if proc.returncode not in (0, 1):  # 1 means "checks failed"; anything else is a crash
        pytest.fail(
            f"checkov did not run (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False
        )
    return proc


def test_checkov_passes(checkov_bin):
    proc = run_checkov(checkov_bin, TOFU, *GATE_FLAGS)
    output = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, f"checkov failed:\n{output}"
    m = re.search(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", output)
    assert m, output
    passed, failed, _ = map(int, m.groups())
    assert failed == 0 and passed >= 30, output


@pytest.fixture(scope="session")
def checkov_report(checkov_bin, tmp_path_factory) -> dict:
    """The full JSON report (--quiet would leave out passed and skipped checks)."""
    out = tmp_path_factory.mktemp("checkov")
    run_checkov(
        checkov_bin,
        TOFU,
        "--framework",
        "terraform",
        "--skip-download",
        "-o",
        "json",
        "--output-file-path",
        str(out),
    )
    report = out / "results_json.json"
    assert report.exists(), f"checkov wrote no JSON report to {out}"
    data = json.loads(report.read_text())
    if isinstance(data, list):  # one report per framework
        (data,) = [d for d in data if d.get("check_type") == "terraform"]
    return data


def test_checkov_skips_are_inline_justified_and_in_use(checkov_report):
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 25, summary
    inline = set()
    for path in TOFU.rglob("*.tf"):
        if ".terraform" in path.parts:
            continue
        for line in path.read_text().splitlines():
            if m := SKIP_COMMENT.search(line):
                check, reason = m[1], (m[2] or "").strip()
                assert len(reason) >= 40 and len(reason.split()) >= 8, (
                    f"{path.name}: skip of {check} needs a real reason, not {reason!r}"
                )
                inline.add((check, "/" + path.relative_to(TOFU).as_posix()))
    assert inline, "no inline skips found: the pattern is wrong"
    skipped = {(c["check_id"], c["file_path"]) for c in checkov_report["results"]["skipped_checks"]}
    # Every skip checkov applied comes from an inline comment, and every comment is still needed.
    assert skipped == inline
    for config in (".checkov.yaml", ".checkov.yml"):
        assert not (REPO / config).exists() and not (TOFU / config).exists(), (
            f"{config} could skip checks outside the .tf files"
        )


def test_checkov_gate_fails_when_a_skip_is_removed(checkov_bin, tofu_copy):
    lambda_tf = tofu_copy / "lambda.tf"
    text = lambda_tf.read_text()
    kept = [ln for ln in text.splitlines(keepends=True) if "checkov:skip=CKV_AWS_50:" not in ln]
    assert len(kept) == len(text.splitlines()) - 1
    lambda_tf.write_text("".join(kept))
    proc = run_checkov(checkov_bin, tofu_copy, *GATE_FLAGS)
    assert proc.returncode == 1, proc.stdout
    assert "Failed checks: 1," in proc.stdout and "CKV_AWS_50" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------
# Deploying: migrations first, plans that survive expired artifacts, global names
# ---------------------------------------------------------------------------


def test_each_published_version_migrates_before_live_moves_to_it(mod):
    call = mod.resource("aws_lambda_invocation", "migrate")
    assert call["count"] == "${var.migrate_on_deploy ? 1 : 0}"
    assert mod.variables["migrate_on_deploy"]["default"] is True
    assert call["function_name"] == "${aws_lambda_function.this.function_name}"
    assert call["qualifier"] == "${aws_lambda_function.this.version}"
    assert call["input"].startswith("${jsonencode(") and "migrate" in call["input"], call["input"]
    assert call["triggers"] == {"version": "${aws_lambda_function.this.version}"}
    alias = mod.resource("aws_lambda_alias", "live")
    assert "${aws_lambda_invocation.migrate}" in alias["depends_on"]
    # The handler's operator action it invokes.
    assert '"migrate"' in (REPO / "worker" / "events.py").read_text()


def test_a_plan_can_skip_every_s3_read(mod):
    """Rollback and disabling the schedule must not depend on the deployed commit's objects."""
    assert mod.variables["plan_without_artifacts"]["default"] is False
    assert mod.locals["read_artifacts"] == (
        "${local.use_s3_artifacts && var.commit_sha != null && !var.plan_without_artifacts}"
    )
    for name in ("artifacts", "manifest"):
        [data] = [body for (t, n), body in mod.data.items() if n == name and t.startswith("aws_s3_object")]
        assert data["count"] == "${local.read_artifacts ? 1 : 0}"
    s3_reads = [(t, n) for (t, n) in mod.data if t.startswith("aws_s3")]
    assert sorted(s3_reads) == [("aws_s3_object", "manifest"), ("aws_s3_objects", "artifacts")]
    # Without a manifest the code's hash is left to what is deployed (null keeps it).
    fn = mod.resource("aws_lambda_function", "this")
    assert "try(local.manifest.function.base64sha256, null)" in fn["source_code_hash"]
    [readable] = [
        p for p in fn["lifecycle"][0]["precondition"] if "has no readable body" in p["error_message"]
    ]
    assert readable["condition"] == "${local.manifest != null || !local.read_artifacts}"
    [missing] = mod.data[("aws_s3_object", "manifest")]["lifecycle"][0]["precondition"]
    assert "plan_without_artifacts = true" in missing["error_message"]


def role_name(function_name: str, region: str) -> str:
    """local.role_name, evaluated."""
    keep = min(len(function_name), 64 - len("--exec") - len(region))
    return f"{function_name[:keep]}-{region}-exec"


def test_the_role_name_holds_the_region_and_fits_iam(mod):
    assert mod.resource("aws_iam_role", "this")["name"] == "${local.role_name}"
    expression = mod.locals["role_name"]
    assert "data.aws_region.current.id" in expression and "64" in expression and '"--exec"' in expression
    longest = "f" * 48  # function_name's validation allows 48
    assert len(role_name(longest, "ap-southeast-5")) <= 64
    assert role_name("coc", "eu-west-1") != role_name("coc", "us-east-1")
    assert role_name("coc-refresh-worker", "eu-west-1") == "coc-refresh-worker-eu-west-1-exec"
    assert "48" in json.dumps(mod.variables["function_name"]["validation"])


def test_kms_via_service_names_the_region_of_each_referenced_secret(mod):
    doc = mod.data[("aws_iam_policy_document", "secrets")]
    statements = {s["content"][0]["sid"]: s for s in (d["statement"] for d in doc["dynamic"])}
    [condition] = statements["DecryptThroughSecretsManagerAndSsm"]["content"][0]["condition"]
    values = condition["values"]
    assert "local.secret_regions" in values and '"secretsmanager.${region}.amazonaws.com"' in values
    assert "ssm.${data.aws_region.current.id}.amazonaws.com" in values
    assert 'split(":", arn)[3]' in mod.locals["secret_regions"]


# ---------------------------------------------------------------------------
# The bootstrap example: artifacts bucket, GitHub OIDC role, remote state
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bootstrap(parsed) -> Module:
    return Module.from_files(BOOTSTRAP, parsed)


def test_bootstrap_artifacts_bucket_is_versioned_encrypted_private_and_tls_only(bootstrap):
    buckets = bootstrap.locals["buckets"]
    assert buckets == {"artifacts": "${aws_s3_bucket.artifacts}", "state": "${aws_s3_bucket.state}"}
    for rtype in (
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_ownership_controls",
        "aws_s3_bucket_policy",
    ):
        [body] = bootstrap.of_type(rtype).values()
        assert body["for_each"] == "${local.buckets}", f"{rtype} covers both buckets"
    versioning = bootstrap.resource("aws_s3_bucket_versioning", "this")
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"
    sse = bootstrap.resource("aws_s3_bucket_server_side_encryption_configuration", "this")["rule"][0]
    assert bootstrap.resolve(sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"]) == "aws:kms"
    pab = bootstrap.resource("aws_s3_bucket_public_access_block", "this")
    assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls"))
    [tls] = bootstrap.data[("aws_iam_policy_document", "tls_only")]["statement"]
    assert tls["effect"] == "Deny" and tls["condition"][0]["variable"] == "aws:SecureTransport"


def test_bootstrap_lifecycle_keeps_every_current_build_unless_told(bootstrap):
    lifecycle = bootstrap.resource("aws_s3_bucket_lifecycle_configuration", "artifacts")
    [rule] = lifecycle["rule"]
    assert "expiration" not in rule, "current builds (what is deployed) never expire by default"
    assert rule["noncurrent_version_expiration"][0]["noncurrent_days"] == "${var.noncurrent_artifact_days}"
    assert rule["abort_incomplete_multipart_upload"][0]["days_after_initiation"] == 7
    [expire] = lifecycle["dynamic"]
    assert expire["rule"]["for_each"] == (
        "${var.artifact_expiration_days != null ? [var.artifact_expiration_days] : []}"
    )
    assert bootstrap.variables["artifact_expiration_days"]["default"] is None


def test_bootstrap_github_role_is_for_the_main_branch_only_and_may_only_put_artifacts(bootstrap):
    assert bootstrap.locals["github_subject"] == "repo:${var.github_repository}:ref:refs/heads/main"
    [trust] = bootstrap.data[("aws_iam_policy_document", "github_trust")]["statement"]
    assert trust["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    conditions = {c["variable"]: c for c in trust["condition"]}
    sub = conditions["${local.github_oidc}:sub"]
    assert sub["test"] == "StringEquals" and sub["values"] == ["${local.github_subject}"]
    aud = conditions["${local.github_oidc}:aud"]
    assert aud["test"] == "StringEquals" and aud["values"] == ["sts.amazonaws.com"]
    assert bootstrap.locals["github_oidc"] == "token.actions.githubusercontent.com"
    statements = bootstrap.data[("aws_iam_policy_document", "github_publish")]["statement"]
    [put] = statements
    assert set(put["actions"]) == {"s3:PutObject", "s3:AbortMultipartUpload"}
    assert put["resources"] == ["${aws_s3_bucket.artifacts.arn}/*"]
    # The workflow's secrets are these outputs.
    workflow = (REPO / ".github" / "workflows" / "refresh-worker.yml").read_text()
    assert "AWS_LAMBDA_ARTIFACTS_ROLE_ARN" in bootstrap.outputs["github_role_arn"]["description"]
    assert "secrets.AWS_LAMBDA_ARTIFACTS_ROLE_ARN" in workflow
    assert "AWS_LAMBDA_ARTIFACTS_BUCKET" in bootstrap.outputs["artifacts_bucket"]["description"]


def test_bootstrap_remote_state_is_versioned_and_locked(bootstrap):
    table = bootstrap.resource("aws_dynamodb_table", "locks")
    assert table["hash_key"] == "LockID" and table["attribute"] == [{"name": "LockID", "type": "S"}]
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert table["point_in_time_recovery"][0]["enabled"] is True
    backend = bootstrap.outputs["backend_config"]["value"]
    for needle in (
        'backend "s3"',
        "${aws_s3_bucket.state.id}",
        "${aws_dynamodb_table.locks.name}",
        "encrypt",
    ):
        assert needle in backend
    assert bootstrap.terraform and "backend" not in bootstrap.terraform[0], "its own state starts local"


def test_the_tools_come_from_hashed_locks_that_lock_dependencies_writes():
    script = (REPO / "lock-dependencies.sh").read_text()
    for dist, lock in (HCL2_REQUIREMENT, CHECKOV_REQUIREMENT):
        text = lock.read_text(encoding="utf-8")
        assert text.startswith("# This file was autogenerated by uv") and "./lock-dependencies.sh" in text
        pins = re.findall(
            r"^([A-Za-z0-9][\w.-]*)==\S+(?: ;[^\\\n]*)? \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)",
            text,
            re.M,
        )
        assert len(pins) == len(re.findall(r"^[A-Za-z0-9][\w.-]*==", text, re.M)), (
            f"{lock.name}: a pin without hashes"
        )
        assert dist in {name for name, _ in pins}
        assert f'"{lock.stem}:{dist}' in script, f"lock-dependencies.sh does not write {lock.name}"
