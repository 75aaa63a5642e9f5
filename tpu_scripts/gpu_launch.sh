#!/usr/bin/env bash
# pcomp on GPU machines without a scheduler (for Slurm see slurm_gpu.sbatch).
#
#   One node, all its GPUs in one process (simplest; no jax.distributed needed):
#     tpu_scripts/gpu_launch.sh train --config 125m mesh.data=-1
#   One node, one process per GPU (N processes started here, coordinator 127.0.0.1:PORT):
#     tpu_scripts/gpu_launch.sh --local-processes 8 train --config 125m mesh.data=-1
#   Several nodes, one process per node (run on every node with its own --process-id):
#     tpu_scripts/gpu_launch.sh --coordinator node0:12345 --num-processes 4 --process-id 0 train ...
#
# The flags become PCOMP_COORDINATOR / PCOMP_NUM_PROCESSES / PCOMP_PROCESS_ID /
# PCOMP_LOCAL_DEVICE_IDS, which pcomp.train.distributed turns into jax.distributed.initialize(...).
set -euo pipefail

PROG=gpu_launch.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
usage: tpu_scripts/gpu_launch.sh [OPTIONS] train|prepare [PCOMP ARGS...]

Options
  --coordinator HOST:PORT   address of process 0 [PCOMP_COORDINATOR]
  --num-processes N         processes in the whole job [PCOMP_NUM_PROCESSES]
  --process-id I            this process, 0 <= I < N [PCOMP_PROCESS_ID]
  --local-device-ids LIST   GPUs of this process, e.g. 0,1,2,3 [PCOMP_LOCAL_DEVICE_IDS]
  --local-processes N       start N processes on this node, process i on GPU i, coordinator
                            127.0.0.1:PORT (excludes the four options above)
  --port PORT               coordinator port for --local-processes (default 12355)
  --pcomp PATH              the pcomp executable (default: .venv/bin/pcomp if present, else pcomp)
  --dry-run                 print the commands with their environment, run nothing
  -h, --help                this help

Without any of the first five options pcomp runs as one process that uses every visible GPU.
EOF
}

COORDINATOR="" NUM="" PID="" DEVICES="" LOCAL="" PORT=12355 DRY_RUN=0
PCOMP=""
if [[ -x .venv/bin/pcomp ]]; then PCOMP=.venv/bin/pcomp; else PCOMP=pcomp; fi
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --coordinator) need_value "$@"; COORDINATOR="$2"; shift ;;
    --num-processes) need_value "$@"; NUM="$2"; shift ;;
    --process-id) need_value "$@"; PID="$2"; shift ;;
    --local-device-ids) need_value "$@"; DEVICES="$2"; shift ;;
    --local-processes) need_value "$@"; LOCAL="$2"; shift ;;
    --port) need_value "$@"; PORT="$2"; shift ;;
    --pcomp) need_value "$@"; PCOMP="$2"; shift ;;
    -*) die "unknown option '$1' (see --help)" ;;
    train | prepare) break ;;
    *) die "unknown pcomp command '$1': expected train or prepare" ;;
  esac
  shift
done
[[ $# -gt 0 ]] || die "no pcomp command given: expected train or prepare (see --help)"

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
[[ -z "$NUM" ]] || { is_uint "$NUM" && ((NUM >= 1)); } || die "--num-processes '$NUM': expected an integer >= 1"
[[ -z "$PID" ]] || is_uint "$PID" || die "--process-id '$PID': expected an integer >= 0"
[[ -z "$NUM" || -z "$PID" ]] || ((PID < NUM)) || die "--process-id $PID is not below --num-processes $NUM"
[[ -z "$DEVICES" || "$DEVICES" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--local-device-ids '$DEVICES': expected e.g. 0 or 0,1,2,3"
[[ -z "$COORDINATOR" || "$COORDINATOR" =~ ^.+:[0-9]+$ ]] || die "--coordinator '$COORDINATOR': expected HOST:PORT"
{ is_uint "$PORT" && ((PORT >= 1 && PORT <= 65535)); } || die "--port '$PORT': expected 1..65535"

launch() {  # launch ENV_ASSIGNMENTS... -- ARGS...
  local envs=()
  while [[ "$1" != -- ]]; do envs+=("$1"); shift; done
  shift
  if [[ "$DRY_RUN" == 1 ]]; then
    qargs env "${envs[@]+"${envs[@]}"}" "$PCOMP" "$@"
    printf '\n'
  else
    env "${envs[@]+"${envs[@]}"}" "$PCOMP" "$@"
  fi
}

if [[ -n "$LOCAL" ]]; then
  [[ -z "$COORDINATOR$NUM$PID$DEVICES" ]] ||
    die "--local-processes sets coordinator, process count, ids and devices itself: drop the other options"
  { is_uint "$LOCAL" && ((LOCAL >= 1)); } || die "--local-processes '$LOCAL': expected an integer >= 1"
  pids=()
  for ((i = 0; i < LOCAL; i++)); do
    envs=(PCOMP_COORDINATOR="127.0.0.1:$PORT" PCOMP_NUM_PROCESSES="$LOCAL" PCOMP_PROCESS_ID="$i"
      PCOMP_LOCAL_DEVICE_IDS="$i")
    if [[ "$DRY_RUN" == 1 ]]; then
      launch "${envs[@]}" -- "$@"
    else
      env "${envs[@]}" "$PCOMP" "$@" &  # not through a function: $! must be the process itself
      pids+=($!)
    fi
  done
  # the first failure stops the others, so none waits in a collective for a dead peer
  status=0
  for ((k = 0; k < ${#pids[@]}; k++)); do
    if ! wait -n; then
      if ((status == 0)); then
        status=1
        kill "${pids[@]}" 2>/dev/null || true
      fi
    fi
  done
  exit "$status"
fi

envs=()
[[ -z "$COORDINATOR" ]] || envs+=(PCOMP_COORDINATOR="$COORDINATOR")
[[ -z "$NUM" ]] || envs+=(PCOMP_NUM_PROCESSES="$NUM")
[[ -z "$PID" ]] || envs+=(PCOMP_PROCESS_ID="$PID")
[[ -z "$DEVICES" ]] || envs+=(PCOMP_LOCAL_DEVICE_IDS="$DEVICES")
if [[ -n "$NUM" && "$NUM" -gt 1 && (-z "$COORDINATOR" || -z "$PID") ]]; then
  die "--num-processes $NUM needs --coordinator HOST:PORT and --process-id too"
fi
if [[ "$DRY_RUN" == 1 ]]; then
  launch "${envs[@]+"${envs[@]}"}" -- "$@"
else
  exec env "${envs[@]+"${envs[@]}"}" "$PCOMP" "$@"
fi
