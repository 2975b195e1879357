#!/usr/bin/env bash
# Builds the refresh worker's AWS Lambda artifacts. ./package-lambda.sh --help explains.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./package-lambda.sh [--arch x86_64|arm64] [--python 3.11|3.12|3.13]
                           [--single-zip] [--sha SHA] [--out DIR]

Builds the refresh worker's AWS Lambda artifacts from this checkout, named after the commit
and the target (TARGET is python<X.Y>-<arch>, e.g. python3.11-x86_64, the module's runtime and
architecture):

  dist/refresh-worker-<sha>-<TARGET>.zip  the function: lambda_function.py (the handler shim)
                                 at the root, worker/ (without the local-only demo.py and
                                 serve.py), ledger/ and sql/. Handler setting:
                                 lambda_function.lambda_handler.
  dist/coclib-layer-<sha>-<TARGET>.zip    the layer: python/ holding coclib/ (without
                                 coclib/testing) and the runtime dependencies.
                                 Both carry each module's bytecode beside its source (below).
  dist/refresh-worker-<sha>-<TARGET>.json the manifest: target, sha256 of each zip (hex and
                                 base64, as tofu's source_code_hash wants), the sha256 of
                                 requirements.lock, the shipped dependency versions and the
                                 bytecode's interpreter (cpython-311, or null: none). The
                                 OpenTofu module reads it to refuse a runtime or architecture
                                 the zips were not built for, and to redeploy changed zips.

Options:
  --arch ARCH      x86_64 (default) or arm64: the function's architecture.
  --python X.Y     the Lambda runtime python3.11 (default), python3.12 or python3.13.
  --single-zip     no layer: the dependencies go into the function zip.
  --sha SHA        names the artifacts (default: $GITHUB_SHA, else git rev-parse --short=12 HEAD).
  --out DIR        where the zips go (default: dist/ in this checkout).
  -h, --help       this text.

Dependencies: the runtime dependencies of pyproject.toml at exactly the versions of
requirements.lock (the lock the tests install; ./lock-dependencies.sh regenerates it), each
file checked against the lock's sha256 (pip --require-hashes), as wheels for the target only
(pip install --platform manylinux..._<arch> --implementation cp --python-version X.Y
--only-binary=:all:, every manylinux tag up to the runtime's glibc, each named, since pip does
not expand PEP 600 tags: manylinux_2_5 to 2_26 for python3.11, to 2_34 for 3.12/3.13, and
the aliases manylinux2014, manylinux2010, manylinux1): a
dependency without such a wheel, or missing from the lock, stops the build. boto3 is not
shipped: the Lambda runtime provides it. The build also stops when a shipped shared object is for another
architecture or needs a GLIBC newer than the runtime's (2.26 for python3.11 on Amazon
Linux 2, 2.34 for python3.12/3.13 on Amazon Linux 2023), or when a zip is over Lambda's
limits: 50 MB zipped, 250 MB unzipped for the function and its layer together.

Bytecode: Lambda's /var/task and /opt are read-only, so Python cannot cache what it compiles
there; without bytecode in the zips every cold start compiles every module it imports from
source (about 1.5 s of CPU for this worker). So each shipped .py goes with a .pyc for the target
(__pycache__/<module>.cpython-311.pyc for python3.11), compiled fresh from the shipped source
(never the checkout's own __pycache__), as PEP 552 unchecked-hash pycs: no timestamp inside, and
never checked against the source, which nothing on Lambda edits. Bytecode is per Python version,
so it is compiled only when PYTHON is the target's version (PYTHON=python3.12 for --python
3.12); with any other the build warns and the zips carry no bytecode: they work, but cold
starts compile from source.

The zips are reproducible: the same sources, lock and PYTHON give byte-identical zips and
manifest (sorted entries, fixed timestamps and modes, bytecode without timestamps; no tests,
simulator, or caches of the checkout).

Environment: PYTHON, the interpreter that runs pip, compiles the bytecode and packs the zips
(default python3, 3.11 or newer; use the target's version, so that pip evaluates environment
markers exactly and the zips carry bytecode).

Examples:
  ./package-lambda.sh                          # python3.11-x86_64, function + layer
  ./package-lambda.sh --arch arm64 --python 3.12
  ./package-lambda.sh --single-zip --sha "$(git rev-parse HEAD)"
EOF
}

die() { echo "package-lambda: error: $*" >&2; exit 1; }
note() { echo "==> $*"; }

# The newest GLIBC symbol version each runtime provides (the highest a .so may need). Every
# manylinux tag at or under it is passed to pip explicitly: pip does not expand a PEP 600 tag
# (--platform manylinux_2_34_x86_64 accepts a manylinux_2_34 wheel, not a manylinux_2_31 or
# manylinux_2_17 one), so a list with gaps would refuse wheels that fit. The legacy aliases
# (manylinux1 = 2_5, manylinux2010 = 2_12, manylinux2014 = 2_17) are listed too.
declare -A GLIBC_MAX=([3.11]=2.26 [3.12]=2.34 [3.13]=2.34)
manylinux_tags() {  # the tags for glibc 2.5 up to 2.$1, newest first
  local minor tags=()
  for ((minor = $1; minor >= 5; minor--)); do tags+=("manylinux_2_$minor"); done
  tags+=(manylinux2014 manylinux2010 manylinux1)
  echo "${tags[*]}"
}
declare -A MANYLINUX=([3.11]="$(manylinux_tags 26)" [3.12]="$(manylinux_tags 34)" [3.13]="$(manylinux_tags 34)")
declare -A PIP_ARCH=([x86_64]=x86_64 [arm64]=aarch64)
LOCK=requirements.lock

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
TARGET="python$PYVER-$ARCH"
PLATFORMS=() PLATFORM_ARGS=()
for tag in ${MANYLINUX[$PYVER]}; do
  PLATFORMS+=("${tag}_${PIP_ARCH[$ARCH]}")
  PLATFORM_ARGS+=(--platform "${tag}_${PIP_ARCH[$ARCH]}")
done
PLATFORM="${PLATFORMS[0]} or older"  # for messages: the newest tag pip is given

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
# The zips carry bytecode (why: --help). A .pyc is for one Python version (its magic number, its
# name __pycache__/x.cpython-311.pyc), so only an interpreter of the target's version compiles it;
# any other ships none rather than bytecode the runtime would ignore.
BYTECODE=cpython-${PYVER/./}
HOST_TAG=$("$PY" -c 'import sys; print(sys.implementation.cache_tag)')
if [[ $HOST_TAG != "$BYTECODE" ]]; then
  echo "package-lambda: warning: PYTHON=$PY is $HOST_TAG, not $BYTECODE: the zips carry no" \
    "bytecode, so every cold start on python$PYVER compiles each module it imports from source" \
    "(about 1.5 s of CPU); run with PYTHON=python$PYVER to ship it" >&2
  BYTECODE=""
fi

for path in lambda_function.py worker ledger coclib sql pyproject.toml "$LOCK"; do
  [[ -e $path ]] || die "$path is missing: run this from a complete checkout"
done
[[ -f worker/lambda_function.py ]] || die "worker/lambda_function.py, the shim's handler, is missing"

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/package-lambda.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
SECONDS=0

# What ships: pyproject.toml's [project].dependencies and what they need on the target, each at
# the version requirements.lock pins (the lock the tests install), each file hash-checked.
"$PY" -c 'import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(dep)' >"$STAGE/requirements.txt"
note "$TARGET ($PLATFORM): $(paste -sd' ' "$STAGE/requirements.txt")"
pip_target() {  # pip install for the Lambda target; its output goes to $STAGE/pip.log
  # (--no-compile: pip's .pyc hold timestamps; the packer compiles reproducible ones itself.)
  "$PY" -m pip install --quiet --no-compile --disable-pip-version-check --ignore-installed \
    "${PLATFORM_ARGS[@]}" --implementation cp --python-version "$PYVER" --only-binary=:all: \
    "$@" >"$STAGE/pip.log" 2>&1
}
pip_failed() {
  grep -v 'is ignored: it is neither a file nor a directory' "$STAGE/pip.log" | tail -n 15 >&2
  missing=$(sed -n 's/.*Could not find a version that satisfies the requirement \([^ ]*\).*/\1/p' \
    "$STAGE/pip.log" | head -n 1)
  [[ -z $missing ]] || die "no wheel of '$missing' for python$PYVER (cp${PYVER/./}) on $PLATFORM." \
    "Lambda needs a binary wheel for its platform; pick a version that ships one (./lock-dependencies.sh)," \
    "or drop the dependency."
  die "pip could not install the dependencies for $TARGET ($1; its output is above)"
}
# 1. Resolve for the target with the lock's versions as constraints (hashes left out: pip checks
#    them in step 2, where every requirement carries its own).
"$PY" - "$LOCK" >"$STAGE/constraints.txt" <<'PY'
import re, sys
text = re.sub(r"\\\n\s*", " ", open(sys.argv[1], encoding="utf-8").read())
for line in text.splitlines():
    line = re.sub(r"\s--hash=\S+", "", line.split("#", 1)[0]).strip()
    if line:
        print(line)
PY
pip_target --dry-run --report "$STAGE/resolved.json" --target "$STAGE/unused" \
  -r "$STAGE/requirements.txt" -c "$STAGE/constraints.txt" || pip_failed "resolving"
# 2. The lock's entries for what was resolved, with their hashes; a resolved package the lock
#    does not pin stops the build (the tests never saw it).
"$PY" - "$LOCK" "$STAGE/resolved.json" >"$STAGE/shipped.txt" <<'PY' || exit 1
import json, re, sys
def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()
entries = {}
for block in re.split(r"\n(?=[A-Za-z0-9])", open(sys.argv[1], encoding="utf-8").read()):
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
    if m:
        entries[norm(m[1])] = (m[2], block.split("\n    #", 1)[0].strip())
problems = []
for item in json.load(open(sys.argv[2]))["install"]:
    name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
    if name not in entries:
        problems.append(f"{name} {version} is needed on the target but not in requirements.lock")
    elif entries[name][0] != version:
        problems.append(f"{name}: resolved {version}, requirements.lock pins {entries[name][0]}")
    else:
        print(entries[name][1])
if problems:
    sys.exit("package-lambda: error: the runtime dependencies do not match requirements.lock"
             " (run ./lock-dependencies.sh):\n  " + "\n  ".join(problems))
PY
# 3. Install exactly those files, hash-checked.
pip_target --require-hashes --no-deps --target "$STAGE/deps" -r "$STAGE/shipped.txt" ||
  pip_failed "installing the locked wheels"
note "wheels: $(cd "$STAGE/deps" && ls -d ./*.dist-info | sed 's|^\./||; s|\.dist-info$||' | paste -sd' ')"

FUNCTION_ZIP="$OUT/refresh-worker-$SHA-$TARGET.zip"
LAYER_ZIP=""
((LAYER)) && LAYER_ZIP="$OUT/coclib-layer-$SHA-$TARGET.zip"
MANIFEST="$OUT/refresh-worker-$SHA-$TARGET.json"
mkdir -p "$OUT"
rm -f "$FUNCTION_ZIP" "$OUT/coclib-layer-$SHA-$TARGET.zip" "$MANIFEST"

"$PY" - "$STAGE/deps" "$FUNCTION_ZIP" "$LAYER_ZIP" "${GLIBC_MAX[$PYVER]}" "$ARCH" "$PYVER" \
  "$MANIFEST" "$SHA" "$LOCK" "$BYTECODE" "$STAGE/bytecode" <<'PY'
"""Compiles the bytecode, checks the shared objects, packs the zips reproducibly, checks Lambda's
size limits, and writes the manifest."""
import base64, hashlib, json, os, re, struct, subprocess, sys, zipfile
from collections import Counter
from pathlib import Path

(deps, function_zip, layer_zip, glibc_max, arch, pyver, manifest, sha, lock, cache_tag,
 bytecode_dir) = sys.argv[1:]
ELF_MACHINE = {"x86_64": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64
MB = 1024 * 1024
ZIPPED_LIMIT, UNZIPPED_LIMIT = 50 * MB, 250 * MB
OWN = ("lambda_function.py", "worker", "ledger", "coclib", "sql")
# Local-only modules: they import coclib.testing (the simulator, embedded services), which never
# ships, so they could not even import in Lambda.
DEV_ONLY = {("coclib", "testing"), ("worker", "demo.py"), ("worker", "serve.py")}

def tree(root, top, own):
    """(name inside the zip, path) for each file under root/top that ships."""
    start = Path(root, top)
    for path in sorted(start.rglob("*")) if start.is_dir() else [start]:
        parts = path.relative_to(root).parts
        if not path.is_file() or "__pycache__" in parts or path.suffix in (".pyc", ".pyo"):
            continue
        if own and (parts[:2] in DEV_ONLY or path.name.endswith("~")
                    or any(p.startswith(".") or p.endswith(".egg-info") for p in parts)):
            continue
        if not own and parts[0] == "bin":  # console scripts: shebangs of the build machine
            continue
        yield "/".join(parts), path

# Compiles each (source, pyc, name) read from stdin, NUL-separated, in a child forked from a bare
# interpreter (-I -S: no site, no .pth; -X utf8: no locale codec). Why a child each: the bytes
# marshal writes depend on the process, not only the code (an object something else also holds,
# such as a string pathlib interned from a directory name, is written with a reference flag), so
# every file starts from the same state, whatever was compiled before it and wherever it lies.
# As many children at once as there are CPUs. Prints the name of each file that does not
# compile, its SyntaxError on stderr.
COMPILER = r"""
import os, py_compile, sys, traceback, warnings
warnings.simplefilter("ignore")  # a SyntaxWarning in a dependency is not ours to report
jobs = sys.stdin.buffer.read().decode().split("\0")
running = {}  # pid: (source, name)

def reap():
    pid, status = os.wait()
    source, name = running.pop(pid)
    status = os.waitstatus_to_exitcode(status)
    if status == 1:
        print(name, flush=True)
    elif status:
        sys.exit(f"compiling {source} failed ({status})")

for source, pyc, name in zip(jobs[0::3], jobs[1::3], jobs[2::3]):
    if len(running) >= (os.cpu_count() or 1):
        reap()
    pid = os.fork()
    if pid == 0:
        status = 2
        try:
            py_compile.compile(source, cfile=pyc, dfile=name, doraise=True, optimize=0,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            status = 0
        except py_compile.PyCompileError as exc:
            print(exc.msg, file=sys.stderr)
            status = 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    running[pid] = (source, name)
while running:
    reap()
"""

def compiled(entries, own):
    """(name, path) of a fresh .pyc for each .py entry, compiled by this interpreter (the target's
    version), never taken from a checkout's __pycache__ (stale, or another version's). PEP 552
    unchecked-hash pycs hold the source's hash instead of its mtime, so they are the same bytes on
    every build, and the runtime never re-reads the source to validate them: right for a
    deployment nothing edits. Not optimised (-O), as Lambda runs Python. The name compiled in is
    the name in the zip, not this machine's path (the loader puts the real path in tracebacks);
    py_compile writes the pyc without the source's exec bits."""
    jobs = []  # (name of the source, name of the pyc, source, pyc)
    for name, path in entries:
        if name.endswith(".py"):
            folder, _, module = name.rpartition("/")
            pyc = "/".join(filter(None, (folder, "__pycache__", f"{module[:-3]}.{cache_tag}.pyc")))
            jobs.append((name, pyc, path, Path(bytecode_dir, pyc)))
    stdin = "\0".join(f"{path}\0{cfile}\0{name}" for name, _, path, cfile in jobs)
    proc = subprocess.run([sys.executable, "-I", "-S", "-X", "utf8", "-c", COMPILER],
                          input=stdin.encode(), capture_output=True)
    failed = set(proc.stdout.decode().splitlines())
    if proc.returncode or (own and failed):
        sys.exit(f"package-lambda: error: could not compile {', '.join(sorted(failed)) or 'the bytecode'}:\n"
                 + proc.stderr.decode())
    if failed:  # as pip does: a dependency's file that does not compile cannot be imported either
        print(f"==> no bytecode for {', '.join(sorted(failed))}: it does not compile")
    return [(pyc, cfile) for name, pyc, _, cfile in jobs if name not in failed]

own = [entry for top in OWN for entry in tree(".", top, own=True)]
dependencies = [entry for top in sorted(os.listdir(deps)) for entry in tree(deps, top, own=False)]
if cache_tag:
    own += compiled(own, own=True)
    dependencies += compiled(dependencies, own=False)
    print(f"==> bytecode: {sum(n.endswith('.pyc') for n, _ in own + dependencies)} modules compiled "
          f"for {cache_tag} (unchecked-hash .pyc)")
# coclib has one home: the layer (as the seed guide recommends), or the single zip.
coclib = [entry for entry in own if entry[0].startswith("coclib/")]
function = [entry for entry in own if not entry[0].startswith("coclib/")]
if layer_zip:
    zips = {function_zip: function, layer_zip: [("python/" + n, p) for n, p in dependencies + coclib]}
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

total, over, described = 0, [], {}
for dest, entries in zips.items():
    write_zip(dest, entries)
    zipped = os.path.getsize(dest)
    unzipped = sum(info.file_size for info in zipfile.ZipFile(dest).infolist())
    total += unzipped
    raw = hashlib.sha256(Path(dest).read_bytes()).digest()
    digest = raw.hex()
    described[dest] = {"file": os.path.basename(dest), "sha256": digest,
                       "base64sha256": base64.b64encode(raw).decode(), "bytes": zipped}
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

# The manifest: what tofu checks before deploying (target) and what tells it a zip changed
# (base64sha256 is source_code_hash's format). No timestamps: rebuilding gives the same bytes.
shipped = {}
for info in sorted(Path(deps).glob("*.dist-info")):
    meta = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
    name = re.search(r"^Name: (.+)$", meta, re.M)[1].strip()
    shipped[re.sub(r"[-_.]+", "-", name).lower()] = re.search(r"^Version: (.+)$", meta, re.M)[1].strip()
document = {
    "schema": 1,
    "commit": sha,
    "target": f"python{pyver}-{arch}",
    "runtime": f"python{pyver}",
    "architecture": arch,
    "lock_sha256": hashlib.sha256(Path(lock).read_bytes()).hexdigest(),
    "bytecode": cache_tag or None,  # the interpreter the .pyc are for; None: the zips carry none
    "function": described[function_zip],
    "layer": described[layer_zip] if layer_zip else None,
    "dependencies": shipped,
}
Path(manifest).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
print(f"==> {manifest}: {document['target']}, lock sha256 {document['lock_sha256']}")
PY
note "built in ${SECONDS}s"
