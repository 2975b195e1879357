"""Loads the unzipped artifacts the way Lambda's Python runtime does, in a clean interpreter.

Run as `python -I -S -B lambda_runtime.py ROOT MODE OUT`, where ROOT holds `var/task` (the
function zip) and `opt/python` (the layer). `-I` ignores PYTHON* variables, the user's site
directory and this script's directory; `-S` leaves out site-packages too; `-B` writes no
bytecode, as on Lambda, where /var/task and /opt are read-only. What is importable is then
the standard library plus the two paths Lambda puts first, in Lambda's order:
`/var/task`, then `/opt/python`. A module loaded from anywhere else is reported, and so is
every module of the zips that was compiled from its source rather than loaded from the
bytecode shipped beside it (`compiled_from_source`; `loaded_from_zips` lists them all).

MODE `imports` imports the shipped dependencies, coclib and `lambda_function`, and finds the SQL files through
coclib (which comes from the layer) although they ship in the function; MODE `scheduled`
imports `lambda_function` and invokes its handler with an EventBridge scheduled event; MODE
`migrate` invokes it with `{"action": "migrate"}`. An exception the handler raises is recorded
as `error`. Writes what it found as JSON to the file OUT (stdout is the handler's, as on Lambda).
"""

import importlib
import importlib.util
import json
import os
import sys
import sysconfig
import time
import uuid
from importlib.machinery import SourceFileLoader

DEPENDENCIES = (
    "coc",
    "redis",
    "psycopg",
    "psycopg_pool",
    "orjson",
    "msgspec",
    "aws_lambda_powertools",
    "aws_lambda_powertools.logging",
    "aws_lambda_powertools.metrics",
)

SCHEDULED_EVENT = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-28T12:00:00Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:events:eu-west-1:123456789012:rule/refresh-worker-schedule"],
    "detail": {},
}


class LambdaContext:
    """The attributes of awslambdaric's LambdaContext that a handler reads."""

    def __init__(self, timeout_ms: int) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ["AWS_LAMBDA_FUNCTION_VERSION"]
        # A string, as on Lambda: the runtime copies it from the environment.
        self.memory_limit_in_mb = os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
        self.invoked_function_arn = (
            f"arn:aws:lambda:{os.environ['AWS_REGION']}:123456789012:function:{self.function_name}"
        )
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "2026/11/28/[$LATEST]0123456789abcdef"
        self._deadline_ms = int(time.time() * 1000) + timeout_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def foreign_modules(allowed: list[str]) -> list[str]:
    """Modules loaded from outside the allowed directories."""
    strays = []
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and name != "__main__" and not os.path.realpath(path).startswith(tuple(allowed)):
            strays.append(f"{name}: {path}")
    return strays


def count_compiles() -> list[str]:
    """Records the path of every source the import system compiles from here on: what a cold
    start on Lambda would compile, since it cannot use bytecode the zips do not carry (or that
    is for another Python)."""
    compiled: list[str] = []
    compile_source = SourceFileLoader.source_to_code

    def source_to_code(self, data, path, *args, **kwargs):
        compiled.append(path)
        return compile_source(self, data, path, *args, **kwargs)

    SourceFileLoader.source_to_code = source_to_code
    return compiled


def main() -> None:
    compiled = count_compiles()
    root, mode, result_path = sys.argv[1:4]
    task, opt = os.path.join(root, "var", "task"), os.path.join(root, "opt", "python")
    leaked = [p for p in sys.path if "site-packages" in p or "dist-packages" in p]
    if leaked:
        sys.exit(f"not a clean interpreter, sys.path has {leaked}")
    sys.path[:0] = [task, opt]
    os.chdir(task)
    out: dict = {}
    if mode == "imports":
        for name in DEPENDENCIES:
            importlib.import_module(name)
        import psycopg

        import coclib

        out["psycopg_impl"] = psycopg.pq.__impl__
        out["coclib"] = coclib.__file__
        out["coclib_testing_shipped"] = importlib.util.find_spec("coclib.testing") is not None
        out["boto3_importable"] = importlib.util.find_spec("boto3") is not None
        from coclib.migrations import discover
        from coclib.sqlfiles import SQL_DIR, load_queries

        out["sql_dir"] = str(SQL_DIR)
        out["migrations"] = [m.path.name for m in discover()]
        out["queries"] = sorted(load_queries())
        # The handler module too (importing it reads no setting and connects nothing).
        out["handler"] = callable(getattr(importlib.import_module("lambda_function"), "lambda_handler", None))
    elif mode in ("scheduled", "migrate"):
        import lambda_function

        out["handler_module"] = lambda_function.__file__
        event = SCHEDULED_EVENT if mode == "scheduled" else {"action": "migrate"}
        try:
            out["result"] = lambda_function.lambda_handler(event, LambdaContext(60_000))
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
    else:
        sys.exit(f"unknown mode {mode!r}")
    stdlib = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")}
    out["foreign_modules"] = foreign_modules([os.path.realpath(p) + os.sep for p in (task, opt, *stdlib)])
    zips = tuple(os.path.realpath(p) + os.sep for p in (task, opt))
    out["loaded_from_zips"] = sorted(
        name
        for name, module in sys.modules.items()
        if os.path.realpath(getattr(module, "__file__", None) or os.devnull).startswith(zips)
        and module.__file__.endswith(".py")
    )
    out["compiled_from_source"] = sorted(
        os.path.relpath(path, root) for path in compiled if os.path.realpath(path).startswith(zips)
    )
    with open(result_path, "w") as f:
        json.dump(out, f, default=str)


if __name__ == "__main__":
    main()
