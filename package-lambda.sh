#!/usr/bin/env bash
# Builds the refresh worker's AWS Lambda artifacts. ./package-lambda.sh --help explains.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./package-lambda.sh [--arch x86_64|arm64] [--python 3.11|3.12|3.13]
                           [--single-zip] [--sha SHA] [--out DIR]

Builds the refresh worker's AWS Lambda artifacts from this checkout:

  dist/refresh-worker-<sha>.zip  the function: lambda_function.py (the handler shim) at the
                                 root, worker/, ledger/, coclib/ (without coclib/testing) and
                                 sql/. Handler setting: lambda_function.lambda_handler.
  dist/coclib-layer-<sha>.zip    the layer: python/ holding coclib/ and the runtime
                                 dependencies of pyproject.toml, as wheels for the target.

Options:
  --arch ARCH      x86_64 (default) or arm64: the function's architecture.
  --python X.Y     the Lambda runtime python3.11 (default), python3.12 or python3.13.
  --single-zip     no layer: the dependencies go into the function zip.
  --sha SHA        names the artifacts (default: $GITHUB_SHA, else git rev-parse --short=12 HEAD).
  --out DIR        where the zips go (default: dist/ in this checkout).
  -h, --help       this text.

Dependencies are wheels for the target only (pip install --platform manylinux2014_<arch>
--implementation cp --python-version X.Y --only-binary=:all:): one without such a wheel
stops the build. The build also stops when a shipped shared object is for another
architecture or needs a GLIBC newer than the runtime's (2.26 for python3.11 on Amazon
Linux 2, 2.34 for python3.12/3.13 on Amazon Linux 2023), or when a zip is over Lambda's
limits: 50 MB zipped, 250 MB unzipped for the function and its layer together.

The zips are reproducible: the same sources and dependency versions give byte-identical
zips (sorted entries, fixed timestamps and modes, no tests, simulator, caches or .pyc).
Pin dependency versions with pip's PIP_CONSTRAINT=<file> to keep the inputs the same.

Environment: PYTHON, the interpreter that runs pip and packs the zips (default python3,
3.11 or newer; use the target's version so pip evaluates environment markers exactly).

Examples:
  ./package-lambda.sh                          # x86_64, python3.11, function + layer
  ./package-lambda.sh --arch arm64 --python 3.12
  ./package-lambda.sh --single-zip --sha "$(git rev-parse HEAD)"
EOF
}

die() { echo "package-lambda: error: $*" >&2; exit 1; }
note() { echo "==> $*"; }

# The newest GLIBC symbol version each runtime provides (the highest a .so may need).
declare -A GLIBC_MAX=([3.11]=2.26 [3.12]=2.34 [3.13]=2.34)
declare -A PIP_ARCH=([x86_64]=x86_64 [arm64]=aarch64)

ARCH=x86_64 PYVER=3.11 LAYER=1 SHA="" OUT=""
while (($#)); do
  case "$1" in
    --arch) ARCH=${2-}; shift 2 || die "--arch needs a value" ;;
    --python) PYVER=${2-}; shift 2 || die "--python needs a value" ;;
    --sha) SHA=${2-}; shift 2 || die "--sha needs a value" ;;
    --out) OUT=${2-}; shift 2 || die "--out needs a value" ;;
    --single-zip) LAYER=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[[ -n ${PIP_ARCH[$ARCH]-} ]] || die "--arch must be x86_64 or arm64, not '$ARCH'"
[[ -n ${GLIBC_MAX[$PYVER]-} ]] || die "--python must be 3.11, 3.12 or 3.13, not '$PYVER'"
PLATFORM="manylinux2014_${PIP_ARCH[$ARCH]}"

[[ -z $OUT || $OUT == /* ]] || OUT="$PWD/$OUT"  # relative to where it was run from
cd "$(dirname "${BASH_SOURCE[0]}")"
OUT=${OUT:-dist}
SHA=${SHA:-${GITHUB_SHA:-}}
if [[ -z $SHA ]]; then
  SHA=$(git rev-parse --short=12 HEAD 2>/dev/null) || {
    SHA=dev
    echo "package-lambda: warning: no git commit to name the artifacts by; using '$SHA' (pass --sha)" >&2
  }
fi
[[ $SHA =~ ^[A-Za-z0-9._-]+$ ]] || die "--sha may hold only letters, digits, '.', '_' and '-', not '$SHA'"

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  die "PYTHON=$PY is not a Python 3.11 or newer (needed for tomllib)"
"$PY" -m pip --version >/dev/null 2>&1 || die "PYTHON=$PY has no pip"
HOST_PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $HOST_PYVER == "$PYVER" ]] || echo "package-lambda: warning: packing for python$PYVER" \
  "with python$HOST_PYVER: pip evaluates environment markers for python$HOST_PYVER" >&2

for path in lambda_function.py worker ledger coclib sql pyproject.toml; do
  [[ -e $path ]] || die "$path is missing: run this from a complete checkout"
done
[[ -f worker/lambda_function.py ]] || die "worker/lambda_function.py, the shim's handler, is missing"

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/package-lambda.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
SECONDS=0

# One source of truth for the runtime dependencies: [project].dependencies.
"$PY" -c 'import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(dep)' >"$STAGE/requirements.txt"
note "python$PYVER $ARCH ($PLATFORM): $(paste -sd' ' "$STAGE/requirements.txt")"
if ! "$PY" -m pip install --quiet --no-compile --disable-pip-version-check \
  --target "$STAGE/deps" --platform "$PLATFORM" --implementation cp \
  --python-version "$PYVER" --only-binary=:all: \
  -r "$STAGE/requirements.txt" >"$STAGE/pip.log" 2>&1; then
  grep -v 'is ignored: it is neither a file nor a directory' "$STAGE/pip.log" | tail -n 15 >&2
  missing=$(sed -n 's/.*Could not find a version that satisfies the requirement \([^ ]*\).*/\1/p' \
    "$STAGE/pip.log" | head -n 1)
  [[ -z $missing ]] || die "no wheel of '$missing' for python$PYVER (cp${PYVER/./}) on $PLATFORM." \
    "Lambda needs a binary wheel for its platform; pick a version that ships one, or drop the dependency."
  die "pip could not install the dependencies for python$PYVER on $PLATFORM (its output is above)"
fi
note "wheels: $(cd "$STAGE/deps" && ls -d ./*.dist-info | sed 's|^\./||; s|\.dist-info$||' | paste -sd' ')"

FUNCTION_ZIP="$OUT/refresh-worker-$SHA.zip"
LAYER_ZIP=""
((LAYER)) && LAYER_ZIP="$OUT/coclib-layer-$SHA.zip"
mkdir -p "$OUT"
rm -f "$FUNCTION_ZIP" "$OUT/coclib-layer-$SHA.zip"

"$PY" - "$STAGE/deps" "$FUNCTION_ZIP" "$LAYER_ZIP" "${GLIBC_MAX[$PYVER]}" "$ARCH" "$PYVER" <<'PY'
"""Checks the shared objects, packs the zips reproducibly, checks Lambda's size limits."""
import hashlib, os, re, struct, sys, zipfile
from collections import Counter
from pathlib import Path

deps, function_zip, layer_zip, glibc_max, arch, pyver = sys.argv[1:]
ELF_MACHINE = {"x86_64": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64
MB = 1024 * 1024
ZIPPED_LIMIT, UNZIPPED_LIMIT = 50 * MB, 250 * MB
OWN = ("lambda_function.py", "worker", "ledger", "coclib", "sql")

def tree(root, top, own):
    """(name inside the zip, path) for each file under root/top that ships."""
    start = Path(root, top)
    for path in sorted(start.rglob("*")) if start.is_dir() else [start]:
        parts = path.relative_to(root).parts
        if not path.is_file() or "__pycache__" in parts or path.suffix in (".pyc", ".pyo"):
            continue
        if own and (parts[:2] == ("coclib", "testing") or path.name.endswith("~")
                    or any(p.startswith(".") or p.endswith(".egg-info") for p in parts)):
            continue
        if not own and parts[0] == "bin":  # console scripts: shebangs of the build machine
            continue
        yield "/".join(parts), path

own = [entry for top in OWN for entry in tree(".", top, own=True)]
dependencies = [entry for top in sorted(os.listdir(deps)) for entry in tree(deps, top, own=False)]
coclib = [entry for entry in own if entry[0].startswith("coclib/")]
if layer_zip:
    zips = {function_zip: own, layer_zip: [("python/" + n, p) for n, p in dependencies + coclib]}
else:
    zips = {function_zip: own + dependencies}

def read(name, path):
    """The bytes shipped for path: a wheel's RECORD loses the console scripts left out above."""
    data = path.read_bytes()
    if name.endswith(".dist-info/RECORD"):  # their hashes cover the build machine's shebang
        data = b"".join(line for line in data.splitlines(True) if not line.startswith(b"../"))
    return data

def write_zip(dest, entries):
    clashes = sorted(n for n, count in Counter(n for n, _ in entries).items() if count > 1)
    if clashes:
        sys.exit(f"package-lambda: error: {dest}: more than one file for {clashes[:5]}")
    with zipfile.ZipFile(dest, "w") as zf:
        for name, path in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3  # Unix, so that external_attr holds the mode
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, read(name, path), compresslevel=6)

def elf_needs(data):
    """(e_machine, versions in .gnu.version_r) of a 64-bit ELF file's bytes."""
    if data[4] != 2:
        return 0, set()  # 32-bit: no Lambda architecture
    e = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(e + "H", data, 18)
    (shoff,) = struct.unpack_from(e + "Q", data, 0x28)
    shentsize, shnum = struct.unpack_from(e + "HH", data, 0x3A)
    sections = [struct.unpack_from(e + "IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    needs = set()
    for _, kind, _, _, offset, _, link, count, _, _ in sections:
        if kind != 0x6FFFFFFE:  # SHT_GNU_verneed: Verneed records, each with Vernaux entries
            continue
        strtab = sections[link][4]
        for _ in range(count):
            _, n_aux, _, aux, next_need = struct.unpack_from(e + "HHIII", data, offset)
            at = offset + aux
            for _ in range(n_aux):
                _, _, _, name, next_aux = struct.unpack_from(e + "IHHII", data, at)
                needs.add(data[strtab + name:data.index(b"\0", strtab + name)].decode())
                at += next_aux
            offset += next_need
    return machine, needs

def version(text):
    return tuple(int(part) for part in text.split("."))

problems, newest, checked = [], (0,), 0
for dest, entries in zips.items():
    for name, path in entries:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        checked += 1
        machine, needs = elf_needs(path.read_bytes())
        if machine != ELF_MACHINE[arch]:
            problems.append(f"{name}: ELF machine {machine}, not {arch}")
        for need in needs:
            if re.fullmatch(r"GLIBC_\d+(\.\d+)+", need):
                newest = max(newest, version(need[6:]))
                if version(need[6:]) > version(glibc_max):
                    problems.append(f"{name}: needs {need}, python{pyver} on Lambda has {glibc_max}")
if problems:
    sys.exit("package-lambda: error: shared objects that would not load on Lambda:\n  "
             + "\n  ".join(sorted(problems)))
print(f"==> {checked} shared objects, all {arch}; newest GLIBC needed: "
      f"{'.'.join(map(str, newest)) if checked else 'none'} (python{pyver} on Lambda has {glibc_max})")

def human(n):
    return f"{n / MB:.2f} MB" if n >= MB else f"{n / 1024:.1f} KB"

total, over = 0, []
for dest, entries in zips.items():
    write_zip(dest, entries)
    zipped = os.path.getsize(dest)
    unzipped = sum(info.file_size for info in zipfile.ZipFile(dest).infolist())
    total += unzipped
    digest = hashlib.sha256(Path(dest).read_bytes()).hexdigest()
    print(f"==> {dest}: {human(zipped)} zipped, {human(unzipped)} unzipped, "
          f"{len(entries)} files, sha256 {digest}")
    if zipped > ZIPPED_LIMIT:
        over.append(f"{dest} is {human(zipped)} zipped; Lambda takes at most {human(ZIPPED_LIMIT)}")
print(f"==> unzipped total {human(total)} of Lambda's {human(UNZIPPED_LIMIT)}")
if total > UNZIPPED_LIMIT:
    over.append(f"function and layer unzip to {human(total)}; Lambda takes at most {human(UNZIPPED_LIMIT)}")
if over:
    for dest in zips:
        os.remove(dest)
    sys.exit("package-lambda: error: over Lambda's limits (zips removed):\n  " + "\n  ".join(over))
PY
note "built in ${SECONDS}s"
