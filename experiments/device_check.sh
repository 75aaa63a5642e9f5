#!/usr/bin/env bash
# One check of pcomp on a GPU machine: install pcomp with CUDA JAX, run the device-independent part
# of the test suite, the training benchmark (125m, bf16: tokens/s and MFU against the device's peak),
# the patch benchmark and the Equal-Info benchmark, then print one table. Logs and JSON go to --out.
#
#   bash experiments/device_check.sh                 # from the repository root, on the GPU machine
#   bash experiments/device_check.sh --dry-run       # print the steps, run nothing
#   bash experiments/device_check.sh --wheels .whl   # offline: missing packages from a wheel folder
#   bash experiments/device_check.sh --compile-only  # no accelerator: compile for a TPU slice instead
set -euo pipefail

PROG=device_check.sh
# shellcheck source-path=SCRIPTDIR source=../tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tpu_scripts/common.sh"

usage() {
  cat <<'EOF'
usage: bash experiments/device_check.sh [OPTIONS]

Options (environment variable in brackets)
  --python PY        the Python to install into and run [PYTHON]; default python3
  --install MODE     online: pip install -e ".[dev,bench]" plus "jax[CUDA]" unless JAX already sees
                     a GPU; offline: the same from --wheels only (pip --no-index); none: skip
                     [INSTALL]; default online, or offline when --wheels is given
  --wheels DIR       folder of wheels for an offline install [WHEELS]
  --jax-cuda EXTRA   cuda12 or cuda13 [JAX_CUDA]; default by the driver: cuda13 from driver 580 on
  --out DIR          logs, JSON and the table [OUT_DIR]; default results/device_check
  --skip LIST        comma-separated steps to skip: tests,train,patch,equal_info [SKIP]
  --step-timeout S   seconds per step before it is stopped [STEP_TIMEOUT]; default 600
  --compile-only     for a machine without the accelerator [COMPILE_ONLY=1]: install ".[dev,bench,tpu]"
                     (libtpu, no CUDA), run the tests, then `pcomp compile` for a TPU slice (COMPILE_ARGS)
                     and the TPU compile tests (tests/test_tpu.py, slow ones included) instead of the
                     GPU benchmarks
  --dry-run          print the commands, run nothing
  -h, --help         this help

Sizes (environment): TRAIN_ARGS (default "--models 125m --dtype bfloat16 --batch 16 --seq 1024
--repeats 5"), PATCH_ARGS (default "--model 125m --dtype bfloat16 --batch 16 --seq-len 1024
--patch-sizes 2,4,8 --repeats 3"), EQUAL_INFO_ARGS (default "--bytes 100000 --window-bits 16,32
--batch 256,1024"), PYTEST_ARGS (default "-q -m 'not slow'", plus "-n 8" when pytest-xdist is there),
COMPILE_ARGS (default "--topology v5e:2x4 --config 125m mesh.data=1 mesh.fsdp=-1").
The test suite runs on 8 simulated CPU devices (JAX_PLATFORMS=cpu), as in CI; the benchmarks run on
the GPU.
EOF
}

PYTHON="${PYTHON:-python3}"
INSTALL="${INSTALL:-}"
WHEELS="${WHEELS:-}"
JAX_CUDA="${JAX_CUDA:-}"
OUT_DIR="${OUT_DIR:-results/device_check}"
SKIP="${SKIP:-}"
STEP_TIMEOUT="${STEP_TIMEOUT:-600}"
COMPILE_ONLY="${COMPILE_ONLY:-0}"
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --python) need_value "$@"; PYTHON="$2"; shift ;;
    --install) need_value "$@"; INSTALL="$2"; shift ;;
    --wheels) need_value "$@"; WHEELS="$2"; shift ;;
    --jax-cuda) need_value "$@"; JAX_CUDA="$2"; shift ;;
    --out) need_value "$@"; OUT_DIR="$2"; shift ;;
    --skip) need_value "$@"; SKIP="$2"; shift ;;
    --step-timeout) need_value "$@"; STEP_TIMEOUT="$2"; shift ;;
    --compile-only) COMPILE_ONLY=1 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

if [[ -z "$INSTALL" ]]; then
  if [[ -n "$WHEELS" ]]; then INSTALL=offline; else INSTALL=online; fi
fi
case "$INSTALL" in
  online | none) ;;
  offline) [[ -n "$WHEELS" ]] || die "--install offline needs --wheels DIR" ;;
  *) die "--install '$INSTALL': expected online, offline or none" ;;
esac
case "$JAX_CUDA" in
  "" | cuda12 | cuda13) ;;
  *) die "--jax-cuda '$JAX_CUDA': expected cuda12 or cuda13" ;;
esac
[[ "$COMPILE_ONLY" == 0 || "$COMPILE_ONLY" == 1 ]] || die "COMPILE_ONLY='$COMPILE_ONLY': expected 0 or 1"
[[ "$STEP_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--step-timeout '$STEP_TIMEOUT': expected seconds (an integer >= 1)"
IFS=, read -r -a skip_list <<<"$SKIP"
for s in "${skip_list[@]+"${skip_list[@]}"}"; do
  case "$s" in
    tests | train | patch | equal_info) ;;
    *) die "--skip '$s': expected tests, train, patch or equal_info" ;;
  esac
done
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

[[ -f setup.cfg && -d pcomp ]] || die "run from the pcomp repository root (no setup.cfg / pcomp/ here)"

read -r -a train_args <<<"${TRAIN_ARGS:---models 125m --dtype bfloat16 --batch 16 --seq 1024 --repeats 5}"
read -r -a patch_args <<<"${PATCH_ARGS:---model 125m --dtype bfloat16 --batch 16 --seq-len 1024 --patch-sizes 2,4,8 --repeats 3}"
read -r -a compile_args <<<"${COMPILE_ARGS:---topology v5e:2x4 --config 125m mesh.data=1 mesh.fsdp=-1}"
read -r -a ei_args <<<"${EQUAL_INFO_ARGS:---bytes 100000 --window-bits 16,32 --batch 256,1024}"
if [[ -n "${PYTEST_ARGS:-}" ]]; then
  read -r -a pytest_args <<<"$PYTEST_ARGS"
else
  pytest_args=(-q -m "not slow")
fi

show() {  # print a command line
  local line="" a
  for a in "$@"; do
    line+="${line:+ }$(q "$a")"
  done
  echo "$line"
}

# step NAME CMD...: run with a timeout, output to $OUT_DIR/NAME.log, status to $OUT_DIR/NAME.status
step() {
  local name="$1"
  shift
  if [[ "$DRY_RUN" == 1 ]]; then
    show "$@"
    return 0
  fi
  echo "== $name: $(show "$@")"
  local start rc=0
  start=$(date +%s)
  set +e
  timeout --kill-after=30 "$STEP_TIMEOUT" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  echo "$rc $(($(date +%s) - start))" >"$OUT_DIR/$name.status"
  echo "== $name: exit $rc"
}

[[ "$DRY_RUN" == 1 ]] || mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's pcomp, installed or not

# 1. install
if [[ "$INSTALL" != none ]]; then
  if [[ -z "$JAX_CUDA" ]]; then
    driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)"
    if [[ "${driver%%.*}" =~ ^[0-9]+$ ]] && ((${driver%%.*} >= 580)); then JAX_CUDA=cuda13; else JAX_CUDA=cuda12; fi
  fi
  extras="dev,bench"
  [[ "$COMPILE_ONLY" == 0 ]] || extras="dev,bench,tpu"
  pip_cmd=("$PYTHON" -m pip install -q -e ".[$extras]")
  # offline: no index, and the build backend (setuptools) from this environment instead of fetched
  [[ "$INSTALL" != offline ]] || pip_cmd+=(--no-index --find-links "$WHEELS" --no-build-isolation)
  # keep a JAX that already sees a GPU (a preinstalled CUDA build); add the CUDA extra otherwise
  if [[ "$COMPILE_ONLY" == 1 ]]; then
    :  # compiles for TPU need libtpu (the tpu extra), no CUDA
  elif [[ "$DRY_RUN" == 1 ]] || ! "$PYTHON" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
    pip_cmd+=("jax[$JAX_CUDA]")
  fi
  step install "${pip_cmd[@]}"
fi

# 2. device-independent tests: 8 simulated CPU devices, as in CI
if ! skipped tests; then
  if "$PYTHON" -c 'import xdist' 2>/dev/null && [[ -z "${PYTEST_ARGS:-}" ]]; then pytest_args+=(-n 8); fi
  step tests env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    "$PYTHON" -m pytest "${pytest_args[@]}" tests
fi

# 3. benchmarks on the GPU, or (--compile-only) the compiles for a TPU slice
if [[ "$COMPILE_ONLY" == 1 ]]; then
  step compile env JAX_PLATFORMS=cpu "$PYTHON" -m pcomp compile "${compile_args[@]}"
  step tpu_tests env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    "$PYTHON" -m pytest -q tests/test_tpu.py
  SKIP="$SKIP,train,patch,equal_info"
fi
skipped train || step train "$PYTHON" experiments/bench_train.py "${train_args[@]}"
skipped patch || step patch "$PYTHON" experiments/bench_patch.py "${patch_args[@]}" --json "$OUT_DIR/bench_patch.json"
skipped equal_info || step equal_info "$PYTHON" experiments/bench_equal_info.py "${ei_args[@]}" \
  --no-profile --out "$OUT_DIR/equal_info"

# 4. one table
summary=("$PYTHON" - "$OUT_DIR")
if [[ "$DRY_RUN" == 1 ]]; then
  show "${summary[@]}"
  echo "# (the summary script reads $OUT_DIR/*.status, *.log and *.json and prints one table)"
  exit 0
fi
"${summary[@]}" <<'PY' | tee "$OUT_DIR/table.md"
import json, re, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])


def status(name):
    f = out / f"{name}.status"
    if not f.is_file():
        return None
    rc, secs = f.read_text().split()
    return int(rc), int(secs)


def log(name):
    f = out / f"{name}.log"
    return f.read_text(errors="replace") if f.is_file() else ""


def flops(gflops):
    return f"{gflops / 1e3:.1f} TFLOP/s" if gflops >= 1e3 else f"{gflops:.1f} GFLOP/s"


def outcome(name):
    s = status(name)
    if s is None:
        return "skipped", ""
    rc, secs = s
    word = "ok" if rc == 0 else ("timed out" if rc in (124, 137) else f"failed (exit {rc})")
    return word, f"{secs} s"


rows = []
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
except (OSError, subprocess.CalledProcessError, IndexError):
    gpu = "no nvidia-smi"
try:
    jaxinfo = subprocess.run([sys.executable, "-c", "import jax; print(jax.__version__, jax.default_backend(), "
                              "jax.device_count(), jax.devices()[0].device_kind)"],
                             capture_output=True, text=True, timeout=300).stdout.strip()
except (OSError, subprocess.TimeoutExpired):
    jaxinfo = "?"
rows.append(("device", "", f"{gpu}; jax {jaxinfo}"))
if status("install") is not None:
    rows.append(("install", *outcome("install")))

word, secs = outcome("tests")
text = log("tests")
m = re.findall(r"=+ (.*?) in [\d.]+s", text) or re.findall(r"^(\d+ passed.*?) in [\d.]+s", text, re.M)
rows.append(("tests (not slow, 8 CPU devices)", word, f"{m[-1] if m else ''} {secs}".strip()))

if status("compile") is not None:
    word, secs = outcome("compile")
    lines = [line for line in log("compile").splitlines() if line.startswith("pcomp: ")]
    rows.append(("pcomp compile (TPU, no TPU)", word, "<br>".join(lines) or secs))
    word, secs = outcome("tpu_tests")
    m = re.findall(r"^(\d+ passed.*?) in [\d.]+s", log("tpu_tests"), re.M)
    rows.append(("TPU compile and splash tests", word, f"{m[-1] if m else ''} {secs}".strip()))

word, secs = outcome("train")
text = log("train")
limit = re.search(r"limit ([\d.]+) GFLOP/s \((.*?)\)", text)
detail = []
for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 7 and cells[0] not in ("model", "---"):
        detail.append(f"{cells[0]} {cells[1]}, {cells[2]}: {cells[4]} tokens/s, {flops(float(cells[5]))}, "
                      f"MFU {cells[6]}")
if limit:
    detail.append(f"MFU against {flops(float(limit.group(1)))} ({limit.group(2)})")
rows.append(("train step (bench_train)", word, "; ".join(detail) or secs))

word, secs = outcome("patch")
detail = ""
pj = out / "bench_patch.json"
if pj.is_file():
    res = json.loads(pj.read_text())
    token = next(r for r in res["rows"] if r["K"] == 1)
    parts = [f"token {token['tps_min']:,.0f} tokens/s"]
    parts += [f"K={r['K']} {r['ratio_min']:.2f}x" for r in res["rows"] if r["K"] > 1]
    detail = f"{res['model']} B={res['batch']} T={res['seq_len']}: " + ", ".join(parts)
rows.append(("patch vs token step (bench_patch)", word, detail or secs))

word, secs = outcome("equal_info")
detail = ""
ej = out / "equal_info" / "results.json"
if ej.is_file():
    res = json.loads(ej.read_text())
    parts = [f"b={r['b']} B={r['batch']} {r['dir']} {r['bytes_per_s']:,.0f} B/s" for r in res["rows"]]
    detail = f"{res['bytes']:,} bytes, {res['m1']}: " + ", ".join(parts)
rows.append(("EqualInfoAC round trip (bench_equal_info)", word, detail or secs))

print("| check | result | figures |")
print("|---|---|---|")
for name, word, detail in rows:
    print(f"| {name} | {word} | {detail} |")
PY
