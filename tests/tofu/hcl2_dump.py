"""Parse every .tf file under a directory with python-hcl2 and print them as one JSON object.

Runs inside the dedicated python-hcl2 virtual environment (see test_module.py), never in the
test environment itself: checkov ships a fork of the parser under the same `hcl2` import name.

    python hcl2_dump.py DIR  ->  {"hcl2_version": "...", "files": {"relative/path.tf": {...}}}

Output follows python-hcl2's classic shape: blocks are lists of dicts, labels are dict keys,
string literals are unquoted, and expressions are strings wrapped in ${...}.
A file that does not parse is reported on stderr and the exit status is 1.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import hcl2


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: hcl2_dump.py DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    options = hcl2.SerializationOptions(
        with_comments=False,
        explicit_blocks=False,
        strip_string_quotes=True,
    )
    files: dict[str, object] = {}
    failed = False
    for path in sorted(root.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        rel = path.relative_to(root).as_posix()
        try:
            with path.open(encoding="utf-8") as handle:
                files[rel] = hcl2.load(handle, serialization_options=options)
        except Exception as exc:  # any parser error: name the file, keep going
            print(f"{rel}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed = True
    json.dump({"hcl2_version": version("python-hcl2"), "files": files}, sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
