#!/usr/bin/env bash
# Regenerates requirements.lock, the one dependency lock of the project. ./lock-dependencies.sh --help
set -euo pipefail

usage() {
  cat <<'TEXT'
Usage: ./lock-dependencies.sh [--upgrade | --upgrade-package NAME ...]

Resolves pyproject.toml's dependencies and its local, test and lint extras once, for CPython
3.11 and newer on every platform (a universal resolution), and writes every version with the
sha256 of each of its files to requirements.lock; the same for the two tools the tofu tests
run in venvs of their own, python-hcl2 and checkov (tests/tofu/hcl2.lock, checkov.lock). Without options, versions already in the
lock are kept where they still fit (so merging a dependency change moves only what it must);
--upgrade moves everything to the newest versions that fit, --upgrade-package NAME one package.

Who reads the lock:
  the tests      README Quick start: pip install -r requirements.lock (hashes checked), then the
                 project itself with --no-deps; CI runs exactly that command.
  the build      package-lambda.sh ships the runtime dependencies at the lock's versions, hashes
                 checked, and records the lock's sha256 in the artifact manifest.
So what ships is what was tested. A test (tests/packaging) checks both read this file.

The resolver is uv, pinned below, installed from PyPI into .cache/venvs/ on first use.
Environment: PYTHON, the interpreter that makes that venv (default python3).
TEXT
}

UV_VERSION=0.13.8
case "${1-}" in -h | --help) usage; exit 0 ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")"

venv=.cache/venvs/uv-$UV_VERSION
if [[ ! -x $venv/bin/uv ]]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

# --python-version 3.11: the oldest interpreter requires-python allows; --universal makes the
# result valid for every newer one too, with environment markers where they differ.
"$venv/bin/uv" pip compile pyproject.toml \
  --extra local --extra test --extra lint \
  --universal --python-version 3.11 --generate-hashes \
  --custom-compile-command ./lock-dependencies.sh \
  --quiet --output-file requirements.lock "$@"
echo "requirements.lock: $(grep -c '^[a-z0-9]' requirements.lock) packages," \
  "sha256 $(sha256sum requirements.lock | cut -c1-16)…"

# The static checks of tofu/ (tests/tofu) run python-hcl2 and checkov, each in a venv of its
# own (checkov ships a fork of python-hcl2 under the same import name, so they cannot share
# one, nor the test environment): each gets its own hashed lock beside those tests, resolved
# the same way and installed with --require-hashes.
for tool in "hcl2:python-hcl2>=8.1,<9" "checkov:checkov>=3.2.400,<4"; do
  lock="tests/tofu/${tool%%:*}.lock"
  "$venv/bin/uv" pip compile - \
    --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command ./lock-dependencies.sh \
    --quiet --output-file "$lock" "$@" <<<"${tool#*:}"
  echo "$lock: $(grep -c '^[a-z0-9]' "$lock") packages"
done
