#!/usr/bin/env bash
# Cloud TPU VMs for pcomp: create (directly or as a queued resource), install pcomp on every worker,
# start `pcomp train` / `pcomp prepare` on all workers at once (detached), follow logs, stop, delete.
# Run with --help for the commands and options; --dry-run prints the gcloud commands instead.
# The '~' in the remote command lines is meant for the workers' shells, hence:
# shellcheck disable=SC2088
set -euo pipefail

PROG=tpu_scripts/tpu.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
usage: tpu_scripts/tpu.sh [OPTIONS] COMMAND [PCOMP ARGS...]

Commands
  create          create the TPU VM (`gcloud compute tpus tpu-vm create`), or with --queued a queued
                  resource (`gcloud compute tpus queued-resources create --node-id=NAME`)
  wait            wait until the queued resource is ACTIVE (polls `queued-resources describe`)
  status          describe the TPU VM (or the queued resource) and show on every worker whether the
                  job is running
  install         on every worker: clone/update pcomp, create ~/pcomp/.venv (uv, Python 3.11+),
                  pip install -e ~/pcomp "jax[tpu]"
  train ARGS...   first, here: `pcomp compile --topology ACCELERATOR ARGS...` (every stage's train
                  step compiled for the slice, no TPU needed; the local pcomp needs libtpu:
                  pip install 'pcomp[tpu]'), so a config that does not fit never reaches the pod;
                  then start `pcomp train ARGS...` on every worker at once with PCOMP_DISTRIBUTED=1,
                  detached (setsid nohup: an ssh drop does not kill it); output is appended to
                  ~/pcomp-logs/JOB.log on each worker, the process id is in ~/pcomp-logs/JOB.pid
  prepare ARGS... the same for `pcomp prepare ARGS...`
  logs            tail -F the job's log on one worker (--worker, default 0)
  stop            stop the job on every worker (SIGTERM to its process group, SIGKILL after 30 s)
  delete          delete the TPU VM, or with --queued the queued resource and its node (--force)

Options (each also read from the environment variable in brackets; options go before the
command, everything after train/prepare is passed to pcomp unchanged)
  --name NAME          TPU VM (node) name [TPU_NAME]; required
  --zone ZONE          e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p) [ZONE]; required
  --project PROJECT    GCP project [PROJECT]; default: gcloud's configured project
  --accelerator TYPE   v4-N, v5litepod-N (v5e), v5p-N or v6e-N [ACCELERATOR]; default v4-8
  --version VERSION    TPU software (runtime) version [RUNTIME_VERSION]; default by generation:
                       v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                       v6e v2-alpha-tpuv6e
  --queued             use a queued resource [QUEUED=1]
  --qr-id ID           queued resource id [QR_ID]; default: NAME
  --spot               Spot VMs (preemptible) [SPOT=1]
  --best-effort        best-effort queued resource (gcloud alpha; needs --queued) [BEST_EFFORT=1]
  --job JOB            job name for logs/pid files [JOB]; default: train or prepare
  --worker W           worker whose log `logs` follows [WORKER]; default 0
  --env KEY=VALUE      extra environment for the job (repeatable) [JOB_ENV, space-separated]
  --repo URL           git repository to install [PCOMP_REPO]
  --branch BRANCH      branch or tag [PCOMP_BRANCH]; default main
  --python VERSION     Python for the worker venv [PYTHON_VERSION]; default 3.11
  --pcomp PATH         the local pcomp that compiles before `train` [PCOMP_LOCAL]; default pcomp
  --no-compile-check   start `train` without compiling it here first [COMPILE_CHECK=0]
  --dry-run            print the gcloud commands, run nothing [DRY_RUN=1]
  -h, --help           this help

Example (a v4-32 pod slice from a queued Spot request, checkpoints on GCS):
  export TPU_NAME=pcomp-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32
  tpu_scripts/tpu.sh --queued --spot create && tpu_scripts/tpu.sh --queued wait
  tpu_scripts/tpu.sh install
  tpu_scripts/tpu.sh train --config 370m data.source=tfds:c4/en:3.1.0 data.data_dir=gs://BUCKET/tfds \
      training.workdir=runs/370m training.checkpoint_dir=gs://BUCKET/runs/370m mesh.data=1 mesh.fsdp=-1
  tpu_scripts/tpu.sh logs
  tpu_scripts/tpu.sh stop && tpu_scripts/tpu.sh --queued delete
EOF
}

# Print (dry run) or run one command.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    qargs "$@"
    printf '\n'
  else
    "$@"
  fi
}

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
QUEUED="${QUEUED:-0}"
QR_ID="${QR_ID:-}"
SPOT="${SPOT:-0}"
BEST_EFFORT="${BEST_EFFORT:-0}"
JOB="${JOB:-}"
WORKER="${WORKER:-0}"
PCOMP_REPO="${PCOMP_REPO:-https://github.com/pcomp/pcomp.git}"
PCOMP_BRANCH="${PCOMP_BRANCH:-main}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
PCOMP_LOCAL="${PCOMP_LOCAL:-pcomp}"
COMPILE_CHECK="${COMPILE_CHECK:-1}"
DRY_RUN="${DRY_RUN:-0}"
read -r -a JOB_ENV_LIST <<<"${JOB_ENV:-}"

COMMAND=""
PCOMP_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --best-effort) BEST_EFFORT=1 ;;
    --name) need_value "$@"; TPU_NAME="$2"; shift ;;
    --zone) need_value "$@"; ZONE="$2"; shift ;;
    --project) need_value "$@"; PROJECT="$2"; shift ;;
    --accelerator) need_value "$@"; ACCELERATOR="$2"; shift ;;
    --version) need_value "$@"; RUNTIME_VERSION="$2"; shift ;;
    --qr-id) need_value "$@"; QR_ID="$2"; shift ;;
    --job) need_value "$@"; JOB="$2"; shift ;;
    --worker) need_value "$@"; WORKER="$2"; shift ;;
    --env) need_value "$@"; JOB_ENV_LIST+=("$2"); shift ;;
    --repo) need_value "$@"; PCOMP_REPO="$2"; shift ;;
    --branch) need_value "$@"; PCOMP_BRANCH="$2"; shift ;;
    --python) need_value "$@"; PYTHON_VERSION="$2"; shift ;;
    --pcomp) need_value "$@"; PCOMP_LOCAL="$2"; shift ;;
    --no-compile-check) COMPILE_CHECK=0 ;;
    --name=* | --zone=* | --project=* | --accelerator=* | --version=* | --qr-id=* | --job=* | --worker=* | \
      --env=* | --repo=* | --branch=* | --python=* | --pcomp=*)
      die "write '${1%%=*} VALUE' (with a space), not '$1'" ;;
    -*) die "unknown option '$1' (see --help)" ;;
    create | wait | status | install | logs | stop | delete)
      [[ -z "$COMMAND" ]] || die "two commands given: '$COMMAND' and '$1'"
      COMMAND="$1" ;;
    train | prepare)
      [[ -z "$COMMAND" ]] || die "two commands given: '$COMMAND' and '$1'"
      COMMAND="$1"
      shift
      PCOMP_ARGS=("$@")
      break ;;
    *) die "unknown command '$1': expected create, wait, status, install, train, prepare, logs, stop or delete" ;;
  esac
  shift
done

[[ -n "$COMMAND" ]] || die "no command given: expected create, wait, status, install, train, prepare, logs, stop or delete (see --help)"
[[ -n "$TPU_NAME" ]] || die "no TPU name: give --name NAME or set TPU_NAME"
[[ -n "$ZONE" ]] || die "no zone: give --zone ZONE or set ZONE (e.g. us-central2-b)"
[[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "TPU name '$TPU_NAME': expected lowercase letters, digits and '-', starting with a letter"
QR_ID="${QR_ID:-$TPU_NAME}"
for flag in QUEUED SPOT BEST_EFFORT DRY_RUN COMPILE_CHECK; do
  [[ "${!flag}" == 0 || "${!flag}" == 1 ]] || die "$flag='${!flag}': expected 0 or 1"
done
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "worker '$WORKER': expected a worker number (0, 1, ...)"
[[ -z "$JOB" || "$JOB" =~ ^[A-Za-z0-9_.-]+$ ]] || die "job name '$JOB': expected letters, digits, '_', '.', '-'"
for kv in "${JOB_ENV_LIST[@]+"${JOB_ENV_LIST[@]}"}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv': expected KEY=VALUE"
done

# accelerator type -> default runtime version
case "$ACCELERATOR" in
  v4-[0-9]*) default_version=tpu-ubuntu2204-base ;;
  v5litepod-[0-9]*) default_version=v2-alpha-tpuv5-lite ;;
  v5p-[0-9]*) default_version=v2-alpha-tpuv5 ;;
  v6e-[0-9]*) default_version=v2-alpha-tpuv6e ;;
  *) default_version="" ;;
esac
if [[ -z "$default_version" || ! "${ACCELERATOR#*-}" =~ ^[1-9][0-9]*$ ]]; then
  die "unknown accelerator type '$ACCELERATOR': expected v4-N, v5litepod-N (v5e), v5p-N or v6e-N, e.g. v4-8, v5litepod-16"
fi
RUNTIME_VERSION="${RUNTIME_VERSION:-$default_version}"

if [[ "$BEST_EFFORT" == 1 && "$SPOT" == 1 ]]; then
  die "--spot and --best-effort exclude each other"
fi
if [[ "$BEST_EFFORT" == 1 && "$QUEUED" != 1 ]]; then
  die "--best-effort exists only for queued resources: add --queued"
fi

LOC=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || LOC+=(--project="$PROJECT")

# Run a shell command line on the workers of the TPU VM (all, or one number).
on_workers() {
  local worker="$1" remote="$2"
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOC[@]}" --worker="$worker" --command="$remote"
}

LOGDIR='~/pcomp-logs'  # expanded by the remote shell

cmd_create() {
  local provisioning=()
  [[ "$SPOT" == 1 ]] && provisioning+=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    local gcloud=(gcloud)
    if [[ "$BEST_EFFORT" == 1 ]]; then
      gcloud+=(alpha)
      provisioning+=(--best-effort)
    fi
    run "${gcloud[@]}" compute tpus queued-resources create "$QR_ID" --node-id="$TPU_NAME" "${LOC[@]}" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME_VERSION" "${provisioning[@]+"${provisioning[@]}"}"
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOC[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME_VERSION" "${provisioning[@]+"${provisioning[@]}"}"
  fi
}

cmd_wait() {
  [[ "$QUEUED" == 1 ]] || die "wait is for queued resources: add --queued (a direct create returns when the VM is ready)"
  local describe=(gcloud compute tpus queued-resources describe "$QR_ID" "${LOC[@]}" --format='value(state.state)')
  if [[ "$DRY_RUN" == 1 ]]; then
    run "${describe[@]}"
    echo "# ... repeated every 30 s until the state is ACTIVE (FAILED or SUSPENDED: error)"
    return
  fi
  local state
  while true; do
    state="$("${describe[@]}")"
    case "$state" in
      ACTIVE) echo "$QR_ID is ACTIVE"; return ;;
      FAILED | SUSPENDED) die "queued resource $QR_ID is $state" ;;
      *) echo "$(date +%T) $QR_ID: ${state:-unknown}; waiting" ;;
    esac
    sleep 30
  done
}

cmd_status() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources describe "$QR_ID" "${LOC[@]}"
  else
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}"
  fi
  local job="${JOB:-train}"
  on_workers all "f=$LOGDIR/$job.pid; if [ -f \$f ] && kill -0 \"\$(cat \$f)\" 2>/dev/null; then echo \"\$(hostname): $job running (pid \$(cat \$f))\"; else echo \"\$(hostname): $job not running\"; fi"
}

cmd_install() {
  local repo branch py
  repo="$(q "$PCOMP_REPO")"
  branch="$(q "$PCOMP_BRANCH")"
  py="$(q "$PYTHON_VERSION")"
  local steps=(
    "set -e"
    "if [ -d ~/pcomp/.git ]; then git -C ~/pcomp fetch --depth 1 $repo $branch && git -C ~/pcomp checkout --force FETCH_HEAD; else git clone --depth 1 --branch $branch $repo ~/pcomp; fi"
    "if [ ! -x ~/.local/bin/uv ]; then curl -LsSf https://astral.sh/uv/install.sh | sh; fi"
    "~/.local/bin/uv venv --allow-existing --python $py ~/pcomp/.venv"
    "~/.local/bin/uv pip install --python ~/pcomp/.venv/bin/python -e ~/pcomp 'jax[tpu]'"
    "~/pcomp/.venv/bin/pcomp --help > /dev/null && echo \"\$(hostname): pcomp installed\""
  )
  local remote="" s
  for s in "${steps[@]}"; do
    remote+="${remote:+; }$s"
  done
  on_workers all "$remote"
}

cmd_start() {
  if [[ "$COMMAND" == train && "$COMPILE_CHECK" == 1 ]]; then
    [[ "$DRY_RUN" == 1 ]] || command -v "$PCOMP_LOCAL" > /dev/null ||
      die "no local pcomp ('$PCOMP_LOCAL') to compile the job for $ACCELERATOR first: pip install -e '.[tpu]', give --pcomp PATH, or --no-compile-check"
    # pcomp prints the one-line error (e.g. the step does not fit the chip) and exits 2: nothing starts
    run "$PCOMP_LOCAL" compile --topology "$ACCELERATOR" "${PCOMP_ARGS[@]+"${PCOMP_ARGS[@]}"}" || exit $?
  fi
  local job="${JOB:-$COMMAND}" envs="PCOMP_DISTRIBUTED=1" kv
  for kv in "${JOB_ENV_LIST[@]+"${JOB_ENV_LIST[@]}"}"; do
    envs+=" $(q "$kv")"
  done
  local pid="$LOGDIR/$job.pid" log="$LOGDIR/$job.log"
  local pcomp_cmd
  pcomp_cmd="$(qargs "$COMMAND" "${PCOMP_ARGS[@]+"${PCOMP_ARGS[@]}"}")"
  # setsid: the job leads its own session (no SIGHUP when ssh goes); nohup + redirections: no tty.
  on_workers all "mkdir -p $LOGDIR && cd ~/pcomp && if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then echo \"\$(hostname): $job is already running (pid \$(cat $pid)); stop it first\" >&2; exit 1; fi && { echo \"=== \$(date -u +%FT%TZ) \$(hostname) start:\" pcomp $pcomp_cmd >> $log; env $envs setsid nohup .venv/bin/pcomp $pcomp_cmd >> $log 2>&1 < /dev/null & echo \$! > $pid; } && echo \"\$(hostname): started $job (pid \$(cat $pid)), log $log\""
  if [[ "$DRY_RUN" != 1 ]]; then
    echo "follow with: $PROG --name $TPU_NAME --zone $ZONE logs${JOB:+ --job $JOB}"
  fi
}

cmd_logs() {
  local job="${JOB:-train}"
  on_workers "$WORKER" "tail -n 200 -F $LOGDIR/$job.log"
}

cmd_stop() {
  local job="${JOB:-train}"
  local pid="$LOGDIR/$job.pid"
  on_workers all "if [ -f $pid ]; then p=\$(cat $pid); kill -TERM -- -\$p 2>/dev/null || true; for i in \$(seq 30); do kill -0 \$p 2>/dev/null || break; sleep 1; done; kill -KILL -- -\$p 2>/dev/null || true; rm -f $pid; echo \"\$(hostname): stopped $job\"; else echo \"\$(hostname): no $job running\"; fi"
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$QR_ID" "${LOC[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOC[@]}" --quiet
  fi
}

case "$COMMAND" in
  create) cmd_create ;;
  wait) cmd_wait ;;
  status) cmd_status ;;
  install) cmd_install ;;
  train | prepare) cmd_start ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
esac
