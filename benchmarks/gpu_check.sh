#!/usr/bin/env bash
# The one prepared GPU check (issue 12): on a fresh GPU machine without network,
# within about 8 minutes of wall time, it
#   1. installs the carried wheels (.whl/: plyfile, pytorch-msssim; gsplat optional)
#      into /tmp/f3d_site, and starts gsplat's just-in-time CUDA build in the background;
#   2. builds the CPU and CUDA kernels in place (setup.py build_ext --inplace);
#   3. runs tests/test_cuda.py (CUDA vs CPU, every backward variant);
#   4. runs compute-sanitizer memcheck and racecheck on `tests/test_cuda.py -k small`;
#   5. runs benchmarks/raster_speed.py --device cuda (1M Gaussians at 1920x1080, 100k at
#      800x800, C in {3,16,32,64,128,256,512}, forward and forward+backward ms, peak
#      memory, the backward variants ct32/ct16/lb3, and gsplat when its build finished);
#   6. writes OUTDIR/summary.json (every step: command, exit code, seconds; the wheel
#      check) next to the raw logs (build, gsplat_build, test_cuda, sanitizer,
#      raster_speed) and raster_speed.json: 7 files, no sub-folders (the device
#      tool brings back at most 8).
#
#   benchmarks/gpu_check.sh OUTDIR               # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run OUTDIR     # here: checks wheels, commands, layout
#   benchmarks/gpu_check.sh --fetch-wheels       # here (network): downloads the wheels
#
# Environment: F3D_WHEEL_DIR (default <repo>/.whl), F3D_GPU_CHECK_BUDGET (seconds,
# default 480), PYTHON (default python3). Exit code: 0 when every step passed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEEL_DIR=${F3D_WHEEL_DIR:-$ROOT/.whl}
BUDGET=${F3D_GPU_CHECK_BUDGET:-480}
# name==version; the device image has torch, numpy, pillow, tqdm, ninja, pytest, jaxtyping, rich.
REQUIRED_WHEELS="plyfile==1.1.5 pytorch-msssim==1.0.0"
OPTIONAL_WHEELS="gsplat==1.5.3"

DRY=0
FETCH=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done

if [ "$FETCH" = 1 ]; then
  mkdir -p "$WHEEL_DIR"
  # shellcheck disable=SC2086
  exec "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEEL_DIR" $REQUIRED_WHEELS $OPTIONAL_WHEELS
fi
if [ -z "$OUT" ]; then
  echo "usage: gpu_check.sh [--dry-run] OUTDIR | --fetch-wheels" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STEPS="$OUT/steps.tsv.tmp"
: > "$STEPS"
START=$(date +%s)
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME LOG TIMEOUT CMD...: runs CMD (bash -c) with a timeout, appending to OUT/LOG;
# in a dry run only records it. Optional steps (NAME ending in '?') do not fail the check.
step() {
  local name=$1 log=$2 limit=$3
  shift 3
  local cmd="$*" rc=0 t0 optional=0
  case "$name" in *\?) optional=1; name=${name%\?} ;; esac
  local left=$(( BUDGET - $(elapsed) ))
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  {
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $cmd"
  } >> "$OUT/$log"
  if [ "$DRY" = 1 ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "dry-run" 0 "$log" "$cmd" >> "$STEPS"
    return 0
  fi
  if [ "$limit" -le 5 ]; then
    echo "no time left in the ${BUDGET}s budget: $name not run" | tee -a "$OUT/$log"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "no-time" 0 "$log" "$cmd" >> "$STEPS"
    [ "$optional" = 1 ] || FAILED=1
    return 1
  fi
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" bash -c "$cmd" >> "$OUT/$log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" $(( $(date +%s) - t0 )) "$log" "$cmd" >> "$STEPS"
  echo "--- $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$OUT/$log"
  if [ "$rc" != 0 ] && [ "$optional" = 0 ]; then FAILED=1; fi
  return "$rc"
}

# ---------------------------------------------------------------- checks
# The wheels: present, one version each, and their requirements met by another
# wheel or by the device image (the packages KINDS.md lists for nvidia-h200).
WHEELS_TXT="$OUT/wheels.txt.tmp"
"$PYTHON" - "$WHEEL_DIR" "$REQUIRED_WHEELS" "$OPTIONAL_WHEELS" > "$WHEELS_TXT" 2>&1 <<'EOF'
import re, sys, zipfile
from pathlib import Path

wheel_dir, required, optional = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
DEVICE = {"torch", "numpy", "pillow", "tqdm", "ninja", "pytest", "jaxtyping", "rich", "packaging",
          "typing-extensions", "setuptools", "wheel", "pybind11", "filelock", "sympy", "networkx",
          "jinja2", "fsspec", "triton"}
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
found, problems, notes = {}, [], []
for w in sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []:
    name, version = w.name.split("-")[:2]
    if norm(name) in found:
        problems.append(f"two wheels of {name}: {found[norm(name)][1]} and {w.name}")
    try:
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines()
                    if l.startswith("Requires-Dist:")]
    except (zipfile.BadZipFile, StopIteration) as exc:
        problems.append(f"{w.name}: not a valid wheel ({exc!r})")
        continue
    found[norm(name)] = (version, w.name, reqs)
for spec in required + optional:
    name, version = spec.split("==")
    have = found.get(norm(name))
    if have is None:
        (problems if spec in required else notes).append(
            f"{name}=={version}: no wheel in {wheel_dir}" + ("" if spec in required else
            " (optional: the gsplat comparison will be skipped)"))
    elif have[0] != version:
        problems.append(f"{name}: wheel {have[1]} is not version {version}")
for name, (version, fname, reqs) in found.items():
    for r in reqs:
        if ";" in r and "extra" in r.split(";", 1)[1]:
            continue
        if ";" in r and "python_version <" in r:
            continue
        dep = norm(re.split(r"[ <>=!~;\[(]", r, 1)[0])
        if dep not in found and dep not in DEVICE:
            problems.append(f"{fname} needs {r}: neither a carried wheel nor on the device image")
for line in notes:
    print("note:", line)
for line in problems:
    print("problem:", line)
print("wheels:", ", ".join(sorted(f"{n}=={v[0]}" for n, v in found.items())) or "none")
sys.exit(1 if problems else 0)
EOF
WHEELS_RC=$?
cat "$WHEELS_TXT"
if [ "$WHEELS_RC" != 0 ]; then FAILED=1; fi
HAVE_GSPLAT=0
if ls "$WHEEL_DIR"/gsplat-*.whl > /dev/null 2>&1; then HAVE_GSPLAT=1; fi

MISSING=""
for tool in "$PYTHON" timeout nvidia-smi nvcc compute-sanitizer; do
  command -v "$tool" > /dev/null 2>&1 || MISSING="$MISSING $tool"
done
for f in setup.py tests/test_cuda.py tests/cuda_cases.py benchmarks/raster_speed.py; do
  [ -f "$ROOT/$f" ] || { echo "problem: missing $f" | tee -a "$WHEELS_TXT"; FAILED=1; }
done
if [ -n "$MISSING" ]; then
  if [ "$DRY" = 1 ]; then
    echo "not found here (needed on the GPU machine):$MISSING"
    case "$MISSING" in *" $PYTHON"*|*" timeout"*) FAILED=1 ;; esac
  else
    echo "problem: missing commands:$MISSING" | tee -a "$WHEELS_TXT"
    FAILED=1
  fi
fi
if [ "$DRY" = 1 ]; then
  # The commands parse: the benchmark's options and the tests' collection.
  (cd "$ROOT" && "$PYTHON" benchmarks/raster_speed.py --help > /dev/null 2>&1) \
    || { echo "problem: raster_speed.py --help failed" | tee -a "$WHEELS_TXT"; FAILED=1; }
  (cd "$ROOT" && "$PYTHON" -m pytest --collect-only -q -p no:cacheprovider tests/test_cuda.py > /dev/null 2>&1) \
    || { echo "problem: pytest cannot collect tests/test_cuda.py" | tee -a "$WHEELS_TXT"; FAILED=1; }
  bash -n "$0" || FAILED=1
fi

# ----------------------------------------------------------------- steps
SITE=/tmp/f3d_site
ENV="cd '$ROOT' && export PYTHONPATH='$SITE:$ROOT' PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=\${TORCH_CUDA_ARCH_LIST:-9.0}"
step environment build.log 30 "nvidia-smi; $PYTHON -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'; nvcc --version | tail -2"
step install_wheels build.log 60 "rm -rf $SITE && $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE '$WHEEL_DIR'/*.whl"
GSPLAT_PID=""
if [ "$HAVE_GSPLAT" = 1 ]; then
  if [ "$DRY" = 1 ]; then
    step "gsplat_build?" gsplat_build.log 300 "$ENV && MAX_JOBS=6 FAST_COMPILE=1 $PYTHON -c 'from gsplat.cuda._backend import _C; assert _C is not None'"
  else
    echo "=== gsplat_build (background)" >> "$OUT/gsplat_build.log"
    (eval "$ENV" && MAX_JOBS=6 FAST_COMPILE=1 timeout 330 "$PYTHON" -c \
      'from gsplat.cuda._backend import _C; assert _C is not None; print("gsplat built")') \
      >> "$OUT/gsplat_build.log" 2>&1 &
    GSPLAT_PID=$!
  fi
fi
step build build.log 240 "$ENV && MAX_JOBS=12 $PYTHON setup.py build_ext --inplace"
step test_cuda test_cuda.log 150 "$ENV && $PYTHON -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py"
step memcheck sanitizer.log 90 "$ENV && compute-sanitizer --tool memcheck --error-exitcode 1 $PYTHON -m pytest -q -p no:cacheprovider tests/test_cuda.py -k small"
step racecheck sanitizer.log 100 "$ENV && compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 1 $PYTHON -m pytest -q -p no:cacheprovider tests/test_cuda.py -k small"
GSPLAT_FLAG="--no-gsplat"
if [ -n "$GSPLAT_PID" ]; then
  # Wait for gsplat's build at most until 150 s of the budget are left for the benchmark.
  while kill -0 "$GSPLAT_PID" 2> /dev/null && [ $(( BUDGET - $(elapsed) )) -gt 150 ]; do sleep 2; done
  if kill -0 "$GSPLAT_PID" 2> /dev/null; then
    kill "$GSPLAT_PID" 2> /dev/null
    echo "gsplat's build did not finish in time: the benchmark skips gsplat" | tee -a "$OUT/gsplat_build.log"
  elif grep -q "gsplat built" "$OUT/gsplat_build.log"; then
    GSPLAT_FLAG=""
  else
    echo "gsplat's build failed (see gsplat_build.log): the benchmark skips gsplat" | tee -a "$OUT/gsplat_build.log"
  fi
elif [ "$HAVE_GSPLAT" = 0 ]; then
  echo "no gsplat wheel in $WHEEL_DIR: the benchmark skips gsplat" | tee -a "$OUT/raster_speed.log"
fi
[ "$DRY" = 1 ] && GSPLAT_FLAG=""
# The benchmark stops starting configurations 60 s before its step's limit (a
# configuration in flight, then the JSON, fit in that).
RS_LIMIT=$(( BUDGET - $(elapsed) - 10 ))
if [ "$RS_LIMIT" -gt 400 ]; then RS_LIMIT=400; fi
step raster_speed raster_speed.log "$RS_LIMIT" "$ENV && $PYTHON benchmarks/raster_speed.py --device cuda --repeats 5 --backward-variants ct32 ct16 lb3 --max-seconds $(( RS_LIMIT > 90 ? RS_LIMIT - 60 : 30 )) $GSPLAT_FLAG --out '$OUT/raster_speed.json'"
# Data-parallel training (issue 16): one process per GPU (1 and 2 when there are two), with
# whatever budget is left; optional, its log goes with the training benchmarks'.
step "distributed_scaling?" raster_speed.log 90 "$ENV && NG=\$($PYTHON -c 'import torch; print(torch.cuda.device_count())') && $PYTHON benchmarks/distributed_scaling.py --device cuda --images 400 --processes \$( [ \"\$NG\" -ge 2 ] && echo 1 2 || echo 1) --out '$OUT/distributed_scaling.json'"

# --------------------------------------------------------------- summary
"$PYTHON" - "$OUT" "$DRY" "$FAILED" "$(elapsed)" "$BUDGET" "$(cd "$ROOT" && git rev-parse --short HEAD 2> /dev/null || echo unknown)" <<'EOF'
import json, sys
from pathlib import Path
out, dry, failed, seconds, budget, git = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1", *sys.argv[4:]
steps = []
for line in (out / "steps.tsv.tmp").read_text().splitlines():
    name, rc, secs, log, cmd = line.split("\t", 4)
    steps.append(dict(name=name, exit=rc, seconds=int(secs), log=log, command=cmd))
(out / "steps.tsv.tmp").unlink()
wheels_txt = out / "wheels.txt.tmp"
summary = dict(check="gpu_check", dry_run=dry, passed=not failed, seconds=int(seconds), budget_seconds=int(budget),
               git=git, wheels=(out / "wheels.txt.tmp").read_text().splitlines(), steps=steps,
               files=sorted(p.name for p in out.iterdir() if not p.name.endswith(".tmp")) + ["summary.json"])
(out / "summary.json").write_text(json.dumps(summary, indent=2))
wheels_txt.unlink()
print(f"gpu_check {'dry run ' if dry else ''}{'passed' if not failed else 'FAILED'} in {seconds}s; "
      f"{len(steps)} steps; results in {out}")
EOF
exit "$FAILED"
