"""Launch scripts (tpu_scripts/, experiments/device_check.sh) and pcomp.train.distributed.

The scripts are checked through their --dry-run output, parsed back into argv with shlex; a fake
`gcloud` on PATH checks that a real run executes exactly what the dry run prints; the remote
start/stop command lines run locally against a fake pcomp; shellcheck runs when it is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcomp.errors import ConfigError
from pcomp.train import distributed
from pcomp.train.distributed import distributed_args

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu_scripts" / "tpu.sh"
SLURM = ROOT / "tpu_scripts" / "slurm_gpu.sbatch"
GPU = ROOT / "tpu_scripts" / "gpu_launch.sh"
DEVICE_CHECK = ROOT / "experiments" / "device_check.sh"
SCRIPTS = [TPU, SLURM, GPU, DEVICE_CHECK]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

_CONFIG_VARS = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR", "RUNTIME_VERSION", "QUEUED", "QR_ID", "SPOT",
                "BEST_EFFORT", "JOB", "WORKER", "JOB_ENV", "PCOMP_REPO", "PCOMP_BRANCH", "PYTHON_VERSION", "DRY_RUN",
                "PCOMP_HOME", "PCOMP_BIN", "SRUN_ARGS", "INSTALL", "WHEELS", "JAX_CUDA", "OUT_DIR", "SKIP",
                "STEP_TIMEOUT", "TRAIN_ARGS", "PATCH_ARGS", "EQUAL_INFO_ARGS", "PYTEST_ARGS", "PYTHON", "COMPILE_CHECK",
                "COMPILE_ONLY", "COMPILE_ARGS")


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in _CONFIG_VARS and not k.startswith(("SLURM_", "PCOMP_"))}
    env.update(extra or {})
    return env


def run(script: Path, *args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=_env(env), cwd=cwd,
                          timeout=60)


def commands(proc: subprocess.CompletedProcess) -> list[list[str]]:
    """The printed command lines of a successful dry run, as argv lists (comment lines dropped)."""
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip() and not line.startswith("#")]


def one_command(proc) -> list[str]:
    cmds = commands(proc)
    assert len(cmds) == 1, cmds
    return cmds[0]


def flag(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error:" in lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


TPU_ARGS = ("--dry-run", "--name", "my-tpu", "--zone", "us-central2-b", "--project", "my-proj")


# --- tpu_scripts/tpu.sh -------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator, version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5litepod-256", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"), ("v5p-128", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"), ("v6e-64", "v2-alpha-tpuv6e"),
])
def test_create_direct_runtime_version_per_generation(accelerator, version):
    argv = one_command(run(TPU, *TPU_ARGS, "--accelerator", accelerator, "create"))
    assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", "--zone=us-central2-b",
                    "--project=my-proj", f"--accelerator-type={accelerator}", f"--version={version}"]


def test_create_explicit_version_and_spot():
    argv = one_command(run(TPU, *TPU_ARGS, "--accelerator", "v6e-16", "--version", "v2-alpha-tpuv6e-custom",
                           "--spot", "create"))
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
    assert flag(argv, "--version") == "v2-alpha-tpuv6e-custom"
    assert flag(argv, "--accelerator-type") == "v6e-16"
    assert argv[-1] == "--spot"


def test_create_queued_pod_slice_spot():
    argv = one_command(run(TPU, *TPU_ARGS, "--accelerator", "v4-32", "--queued", "--spot", "create"))
    assert argv == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu", "--node-id=my-tpu",
                    "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-32",
                    "--runtime-version=tpu-ubuntu2204-base", "--spot"]


def test_create_queued_best_effort_uses_alpha_and_own_id():
    argv = one_command(run(TPU, *TPU_ARGS, "--accelerator", "v5litepod-16", "--queued", "--qr-id", "my-qr",
                           "--best-effort", "create"))
    assert argv[:6] == ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create"]
    assert argv[6] == "my-qr" and flag(argv, "--node-id") == "my-tpu"
    assert flag(argv, "--runtime-version") == "v2-alpha-tpuv5-lite"
    assert "--best-effort" in argv and "--spot" not in argv


def test_configuration_from_environment_equals_flags():
    env = {"TPU_NAME": "my-tpu", "ZONE": "us-central2-b", "PROJECT": "my-proj", "ACCELERATOR": "v5p-16",
           "QUEUED": "1", "SPOT": "1"}
    from_env = one_command(run(TPU, "--dry-run", "create", env=env))
    from_flags = one_command(run(TPU, *TPU_ARGS, "--accelerator", "v5p-16", "--queued", "--spot", "create"))
    assert from_env == from_flags


def test_project_is_optional():
    argv = one_command(run(TPU, "--dry-run", "--name", "t", "--zone", "europe-west4-a", "delete"))
    assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t", "--zone=europe-west4-a", "--quiet"]


def test_delete_queued_forces_node_deletion():
    argv = one_command(run(TPU, *TPU_ARGS, "--queued", "delete"))
    assert argv == ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-tpu", "--zone=us-central2-b",
                    "--project=my-proj", "--force", "--quiet"]


def test_wait_polls_queued_resource_state():
    argv = one_command(run(TPU, *TPU_ARGS, "--queued", "wait"))
    assert argv == ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-tpu", "--zone=us-central2-b",
                    "--project=my-proj", "--format=value(state.state)"]


def _ssh(argv: list[str], worker: str) -> str:
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert flag(argv, "--zone") == "us-central2-b" and flag(argv, "--project") == "my-proj"
    assert flag(argv, "--worker") == worker
    return flag(argv, "--command")


def test_install_on_all_workers():
    remote = _ssh(one_command(run(TPU, *TPU_ARGS, "--repo", "https://example.com/me/pcomp.git", "--branch", "dev",
                                  "--python", "3.12", "install")), "all")
    words = shlex.split(remote.replace(";", " ; "))
    assert "git clone --depth 1 --branch dev https://example.com/me/pcomp.git ~/pcomp" in remote
    assert "--python 3.12 ~/pcomp/.venv" in remote
    assert "jax[tpu]" in words and "-e" in words  # quoted for the remote shell, one word there


PCOMP_TRAIN = ["--config", "370m", "data.source=tfds:c4/en:3.1.0", "training.checkpoint_dir=gs://b/runs/370m",
               "mesh.fsdp=-1", "training.lr=3e-4", "note=it's a \"test\" $HOME `x` ;&|"]


def _pcomp_argv(remote: str, job: str) -> list[str]:
    m = re.search(r"setsid nohup \.venv/bin/pcomp (.*?) >> ~/pcomp-logs/" + job + r"\.log 2>&1 < /dev/null &",
                  remote)
    assert m, remote
    return shlex.split(m.group(1))


def _compile_then_start(proc) -> list[str]:
    """A dry-run `train`: the local `pcomp compile` for the slice first, then the one start command."""
    cmds = commands(proc)
    assert len(cmds) == 2 and cmds[0][:2] == ["pcomp", "compile"], cmds
    return cmds[1]


def test_train_pod_slice_all_workers_detached():
    proc = run(TPU, *TPU_ARGS, "--accelerator", "v4-32", "train", *PCOMP_TRAIN)
    assert commands(proc)[0] == ["pcomp", "compile", "--topology", "v4-32", *PCOMP_TRAIN]
    remote = _ssh(_compile_then_start(proc), "all")
    assert _pcomp_argv(remote, "train") == ["train", *PCOMP_TRAIN]
    assert "env PCOMP_DISTRIBUTED=1 setsid nohup .venv/bin/pcomp" in remote
    assert "echo $! > ~/pcomp-logs/train.pid" in remote


def test_prepare_job_and_extra_env():
    args = ["--m1", "gs://b/m1", "--data", "tfds:c4/en:3.1.0", "--out", "gs://b/eiw16", "--window-bits", "16"]
    remote = _ssh(one_command(run(TPU, *TPU_ARGS, "--env", "TFDS_DATA_DIR=gs://b/tfds", "--env", "A=b c",
                                  "prepare", *args)), "all")
    assert _pcomp_argv(remote, "prepare") == ["prepare", *args]
    m = re.search(r"env (.*?) setsid nohup", remote)
    assert shlex.split(m.group(1)) == ["PCOMP_DISTRIBUTED=1", "TFDS_DATA_DIR=gs://b/tfds", "A=b c"]


def test_options_after_train_go_to_pcomp():
    proc = run(TPU, *TPU_ARGS, "train", "--dry-run", "--zone", "x")
    assert commands(proc)[0] == ["pcomp", "compile", "--topology", "v4-8", "--dry-run", "--zone", "x"]
    remote = _ssh(_compile_then_start(proc), "all")
    assert _pcomp_argv(remote, "train") == ["train", "--dry-run", "--zone", "x"]


def test_train_compile_check_can_be_skipped_or_pointed_elsewhere():
    remote = _ssh(one_command(run(TPU, *TPU_ARGS, "--no-compile-check", "train", *PCOMP_TRAIN)), "all")
    assert _pcomp_argv(remote, "train") == ["train", *PCOMP_TRAIN]
    assert one_command(run(TPU, *TPU_ARGS, "prepare", "--out", "x"))  # prepare compiles nothing here
    proc = run(TPU, *TPU_ARGS, "--accelerator", "v5litepod-8", "--pcomp", "/opt/pcomp/bin/pcomp", "train", "a=1")
    assert commands(proc)[0] == ["/opt/pcomp/bin/pcomp", "compile", "--topology", "v5litepod-8", "a=1"]


def test_logs_stop_status_use_job_and_worker():
    remote = _ssh(one_command(run(TPU, *TPU_ARGS, "--worker", "3", "--job", "run2", "logs")), "3")
    assert shlex.split(remote) == ["tail", "-n", "200", "-F", "~/pcomp-logs/run2.log"]
    remote = _ssh(one_command(run(TPU, *TPU_ARGS, "--job", "run2", "stop")), "all")
    assert "~/pcomp-logs/run2.pid" in remote and "kill -TERM -- -$p" in remote
    cmds = commands(run(TPU, *TPU_ARGS, "--queued", "status"))
    assert cmds[0] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-tpu",
                       "--zone=us-central2-b", "--project=my-proj"]
    assert "~/pcomp-logs/train.pid" in _ssh(cmds[1], "all")


@pytest.mark.parametrize("args, fragments", [
    (["--accelerator", "v5e-8", "create"], ["'v5e-8'", "v5litepod-N"]),
    (["--accelerator", "v3-8", "create"], ["'v3-8'"]),
    (["--accelerator", "v4-", "create"], ["'v4-'"]),
    (["--accelerator", "v4-x8", "create"], ["'v4-x8'"]),
    (["create", "--bogus"], ["'--bogus'"]),
    (["launch"], ["'launch'"]),
    ([], ["no command"]),
    (["create", "delete"], ["two commands"]),
    (["--best-effort", "create"], ["--queued"]),
    (["--queued", "--spot", "--best-effort", "create"], ["--spot"]),
    (["wait"], ["--queued"]),
    (["--env", "NOEQUALS", "train"], ["'NOEQUALS'"]),
    (["--zone=us-central2-b", "create"], ["--zone VALUE"]),
    (["--worker", "all", "logs"], ["'all'"]),
    (["--name", "My_TPU", "create"], ["'My_TPU'"]),
    (["--job", "a b", "train"], ["'a b'"]),
    (["--name"], ["--name needs a value"]),
])
def test_tpu_bad_input_one_line(args, fragments):
    base = ["--dry-run", "--name", "my-tpu", "--zone", "us-central2-b"]
    assert_one_line_error(run(TPU, *base, *args), *fragments)


@pytest.mark.parametrize("missing, fragment", [("--name", "TPU_NAME"), ("--zone", "ZONE")])
def test_tpu_missing_required(missing, fragment):
    args = {"--name": "my-tpu", "--zone": "us-central2-b"}
    args.pop(missing)
    flat = [x for kv in args.items() for x in kv]
    assert_one_line_error(run(TPU, "--dry-run", *flat, "create"), fragment)


def _fake_gcloud(tmp_path: Path) -> tuple[dict, Path]:
    """A `gcloud` and a local `pcomp` on PATH that append their name and argv (NUL-separated, one call per
    line) to a file; the fake pcomp exits with FAKE_PCOMP_RC (0), after printing FAKE_PCOMP_ERR to stderr."""
    bindir, log = tmp_path / "bin", tmp_path / "gcloud.calls"
    bindir.mkdir()
    for name in ("gcloud", "pcomp"):
        (bindir / name).write_text(textwrap.dedent(f"""\
            #!/usr/bin/env bash
            printf '%s\\0' "$(basename "$0")" "$@" >> {shlex.quote(str(log))}
            printf '\\n' >> {shlex.quote(str(log))}
            printf '%s' "${{FAKE_GCLOUD_OUTPUT:-}}"
            [[ -z "${{FAKE_PCOMP_ERR:-}}" ]] || echo "$FAKE_PCOMP_ERR" >&2
            exit "${{FAKE_PCOMP_RC:-0}}"
            """))
        (bindir / name).chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, log


def _calls(log: Path) -> list[list[str]]:
    """The fakes' calls: each is its name and arguments NUL-terminated, then a newline."""
    if not log.exists():
        return []
    return [chunk.split("\0") for chunk in log.read_text().split("\0\n") if chunk]


@pytest.mark.parametrize("args", [
    ["--accelerator", "v4-32", "--queued", "--spot", "create"],
    ["--accelerator", "v6e-8", "create"],
    ["install"],
    ["train", *PCOMP_TRAIN],
    ["prepare", "--m1", "runs/m1", "--out", "data/x y"],
    ["--job", "prepare", "stop"],
    ["--queued", "delete"],
])
def test_real_run_executes_what_dry_run_prints(tmp_path, args):
    env, log = _fake_gcloud(tmp_path)
    printed = commands(run(TPU, *TPU_ARGS, *args, env=env))
    assert not log.exists()  # the dry run called nothing
    real = run(TPU, *TPU_ARGS[1:], *args, env=env)
    assert real.returncode == 0, real.stderr
    assert _calls(log) == printed


def test_train_that_does_not_compile_never_reaches_the_pod(tmp_path):
    """The local compile's one-line error and status stop `train` before any gcloud call; without a local
    pcomp, one line says how to get one."""
    env, log = _fake_gcloud(tmp_path)
    error = "pcomp: error: the token step of model 7b (batch 1024 x 4096 tokens, model.remat=full) needs ..."
    proc = run(TPU, *TPU_ARGS[1:], "--accelerator", "v5litepod-8", "train", "--config", "7b",
               env={**env, "FAKE_PCOMP_RC": "2", "FAKE_PCOMP_ERR": error})
    assert proc.returncode == 2 and proc.stderr.strip() == error
    assert _calls(log) == [["pcomp", "compile", "--topology", "v5litepod-8", "--config", "7b"]]
    missing = run(TPU, *TPU_ARGS[1:], "--pcomp", str(tmp_path / "nowhere"), "train", "--config", "7b")
    assert_one_line_error(missing, "no local pcomp", "pip install -e '.[tpu]'", "--no-compile-check")


def test_wait_returns_when_active_and_fails_on_failed(tmp_path):
    env, log = _fake_gcloud(tmp_path)
    ok = run(TPU, *TPU_ARGS[1:], "--queued", "wait", env={**env, "FAKE_GCLOUD_OUTPUT": "ACTIVE"})
    assert ok.returncode == 0 and "my-tpu is ACTIVE" in ok.stdout
    assert _calls(log) == commands(run(TPU, *TPU_ARGS, "--queued", "wait"))
    bad = run(TPU, *TPU_ARGS[1:], "--queued", "wait", env={**env, "FAKE_GCLOUD_OUTPUT": "FAILED"})
    assert_one_line_error(bad, "my-tpu is FAILED")


@pytest.mark.skipif(not all(shutil.which(t) for t in ("setsid", "nohup", "hostname")),
                    reason="needs setsid, nohup and hostname")
def test_remote_start_status_stop_commands_work(tmp_path):
    """Run the worker-side command lines here, against a fake ~/pcomp/.venv/bin/pcomp."""
    home = tmp_path / "home"
    venv_bin = home / "pcomp" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "pcomp").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        printf 'arg:%s\\n' "$@"
        echo "distributed:$PCOMP_DISTRIBUTED"
        echo "extra:$EXTRA"
        echo "session:$(cut -d' ' -f6 /proc/$$/stat)"
        exec sleep 120
        """))
    (venv_bin / "pcomp").chmod(0o755)
    start = flag(_compile_then_start(run(TPU, *TPU_ARGS, "--env", "EXTRA=x y", "train", *PCOMP_TRAIN)), "--command")
    status = flag(commands(run(TPU, *TPU_ARGS, "status"))[1], "--command")
    stop = flag(one_command(run(TPU, *TPU_ARGS, "stop")), "--command")
    # one shell plays the worker's: the job is its child, so it is reaped once stopped
    script = "\n".join([
        start, 'echo "start-rc=$?"',
        'for i in $(seq 100); do grep -q session: ~/pcomp-logs/train.log 2>/dev/null && break; sleep 0.1; done',
        f"( {start} )", 'echo "again-rc=$?"',
        status, stop, 'echo "stop-rc=$?"', status,
    ])
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_env({"HOME": str(home)}),
                          timeout=60)
    out = proc.stdout
    assert "start-rc=0" in out and "again-rc=1" in out and "stop-rc=0" in out, (out, proc.stderr)
    assert "train is already running" in proc.stderr
    log = (home / "pcomp-logs" / "train.log").read_text()
    args = [line[4:] for line in log.splitlines() if line.startswith("arg:")]
    assert args == ["train", *PCOMP_TRAIN]
    assert "distributed:1" in log and "extra:x y" in log
    pid = int(re.search(r"started train \(pid (\d+)\)", out).group(1))
    assert f"session:{pid}" in log  # its own session: not tied to the ssh session that started it
    assert re.search(rf"train running \(pid {pid}\)", out) and out.rstrip().endswith("train not running")
    assert not (home / "pcomp-logs" / "train.pid").exists()
    assert not Path(f"/proc/{pid}").exists()


# --- GPU: slurm_gpu.sbatch, gpu_launch.sh -------------------------------------------------------------

SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "gpu[001-002]", "SLURM_SUBMIT_DIR": "/shared/pcomp"}


def test_slurm_dry_run_srun_command():
    proc = run(SLURM, "--dry-run", "train", "--config", "125m", "training.workdir=/shared/runs/a b", env=SLURM_ENV)
    assert one_command(proc) == ["srun", "--kill-on-bad-exit=1", "/shared/pcomp/.venv/bin/pcomp", "train",
                                 "--config", "125m", "training.workdir=/shared/runs/a b"]
    assert "job 4242: 2 node(s) gpu[001-002], 16 task(s)" in proc.stdout


def test_slurm_pcomp_bin_and_srun_args():
    env = {**SLURM_ENV, "PCOMP_BIN": "/opt/pcomp/bin/pcomp", "SRUN_ARGS": "--mpi=none --cpu-bind=none"}
    assert one_command(run(SLURM, "--dry-run", "prepare", "--out", "x", env=env)) == [
        "srun", "--kill-on-bad-exit=1", "--mpi=none", "--cpu-bind=none", "/opt/pcomp/bin/pcomp", "prepare", "--out",
        "x"]


def test_slurm_header_runs_one_task_per_gpu():
    text = SLURM.read_text()
    tasks = re.search(r"^#SBATCH --ntasks-per-node=(\d+)$", text, re.M).group(1)
    gpus = re.search(r"^#SBATCH --gpus-per-node=(\d+)$", text, re.M).group(1)
    assert tasks == gpus


@pytest.mark.parametrize("args, fragment", [
    ([], "no pcomp command"), (["eval"], "'eval'"), (["--bogus", "train"], "'--bogus'"),
])
def test_slurm_bad_input(args, fragment):
    assert_one_line_error(run(SLURM, "--dry-run", *args, env=SLURM_ENV), fragment)


def test_slurm_outside_allocation_refuses():
    assert_one_line_error(run(SLURM, "train"), "sbatch")


def _env_and_argv(argv: list[str]) -> tuple[dict, list[str]]:
    assert argv[0] == "env"
    i = 1
    env = {}
    while "=" in argv[i] and not argv[i].startswith("-"):
        k, v = argv[i].split("=", 1)
        env[k] = v
        i += 1
    return env, argv[i:]


def test_gpu_local_processes_agree_with_distributed_args():
    cmds = commands(run(GPU, "--dry-run", "--pcomp", "pcomp", "--local-processes", "4", "--port", "23456",
                        "train", "--config", "125m"))
    assert len(cmds) == 4
    for i, argv in enumerate(cmds):
        env, rest = _env_and_argv(argv)
        assert rest == ["pcomp", "train", "--config", "125m"]
        assert distributed_args(env) == {"coordinator_address": "127.0.0.1:23456", "num_processes": 4,
                                         "process_id": i, "local_device_ids": [i]}


def test_gpu_multi_node_flags_agree_with_distributed_args():
    argv = one_command(run(GPU, "--dry-run", "--pcomp", "pcomp", "--coordinator", "node0:1234", "--num-processes",
                           "4", "--process-id", "2", "--local-device-ids", "0,1", "train", "x=1"))
    env, rest = _env_and_argv(argv)
    assert rest == ["pcomp", "train", "x=1"]
    assert distributed_args(env) == {"coordinator_address": "node0:1234", "num_processes": 4, "process_id": 2,
                                     "local_device_ids": [0, 1]}


def test_gpu_single_process_sets_nothing():
    env, rest = _env_and_argv(one_command(run(GPU, "--dry-run", "--pcomp", "pcomp", "train", "--config", "25m")))
    assert env == {} and rest == ["pcomp", "train", "--config", "25m"]
    assert distributed_args(env) is None


@pytest.mark.parametrize("args, fragment", [
    (["--num-processes", "4", "train"], "--coordinator"),
    (["--num-processes", "4", "--process-id", "4", "--coordinator", "h:1", "train"], "not below"),
    (["--num-processes", "0", "train"], "'0'"),
    (["--coordinator", "nohost", "train"], "'nohost'"),
    (["--local-processes", "2", "--process-id", "0", "train"], "--local-processes"),
    (["--local-processes", "x", "train"], "'x'"),
    (["--port", "70000", "--local-processes", "2", "train"], "'70000'"),
    (["eval"], "'eval'"),
    ([], "no pcomp command"),
])
def test_gpu_bad_input(args, fragment):
    assert_one_line_error(run(GPU, "--dry-run", *args), fragment)


def test_gpu_local_processes_first_failure_stops_the_rest(tmp_path):
    fake = tmp_path / "pcomp"
    fake.write_text("#!/usr/bin/env bash\n"
                    'echo "$PCOMP_PROCESS_ID:$PCOMP_LOCAL_DEVICE_IDS:$*"\n'
                    '[ "$PCOMP_PROCESS_ID" = 1 ] && exit 3\n'
                    "exec sleep 600\n")
    fake.chmod(0o755)
    # a survivor left running would sleep 600 s and hit run()'s 60 s timeout
    proc = run(GPU, "--pcomp", str(fake), "--local-processes", "3", "train", "a")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert "1:1:train a" in lines and set(lines) <= {"0:0:train a", "1:1:train a", "2:2:train a"}


# --- experiments/device_check.sh ----------------------------------------------------------------------


def test_device_check_dry_run():
    cmds = commands(run(DEVICE_CHECK, "--dry-run", "--python", "python3", "--jax-cuda", "cuda13"))
    assert cmds[0] == ["python3", "-m", "pip", "install", "-q", "-e", ".[dev,bench]", "jax[cuda13]"]
    env, rest = _env_and_argv(cmds[1])
    assert env == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert rest[:3] == ["python3", "-m", "pytest"] and rest[-1] == "tests"
    assert rest[rest.index("-m", 3) + 1] == "not slow"
    train = cmds[2]
    assert train[:2] == ["python3", "experiments/bench_train.py"]
    assert train[train.index("--models") + 1] == "125m" and train[train.index("--dtype") + 1] == "bfloat16"
    assert cmds[3][:2] == ["python3", "experiments/bench_patch.py"] and "--json" in cmds[3]
    assert cmds[4][:2] == ["python3", "experiments/bench_equal_info.py"]
    assert cmds[5] == ["python3", "-", "results/device_check"]


def test_device_check_compile_only():
    """No accelerator: the tpu extra instead of CUDA JAX, the tests, `pcomp compile` for a TPU slice and
    the TPU tests; none of the GPU benchmarks."""
    cmds = commands(run(DEVICE_CHECK, "--dry-run", "--python", "python3", "--compile-only"))
    assert cmds[0] == ["python3", "-m", "pip", "install", "-q", "-e", ".[dev,bench,tpu]"]
    assert _env_and_argv(cmds[2]) == ({"JAX_PLATFORMS": "cpu"}, ["python3", "-m", "pcomp", "compile", "--topology",
                                                                  "v5e:2x4", "--config", "125m", "mesh.data=1",
                                                                  "mesh.fsdp=-1"])
    env, rest = _env_and_argv(cmds[3])
    assert env["JAX_PLATFORMS"] == "cpu" and rest == ["python3", "-m", "pytest", "-q", "tests/test_tpu.py"]
    assert not any("bench_" in " ".join(c) for c in cmds)
    custom = commands(run(DEVICE_CHECK, "--dry-run", "--compile-only", "--skip", "tests",
                          env={"COMPILE_ARGS": "--topology v5p:2x2x1 --config 1b"}))
    assert _env_and_argv(custom[1])[1][-4:] == ["--topology", "v5p:2x2x1", "--config", "1b"]


def test_device_check_offline_and_skips():
    cmds = commands(run(DEVICE_CHECK, "--dry-run", "--python", "py", "--wheels", "/w", "--jax-cuda", "cuda12",
                        "--skip", "tests,patch"))
    assert cmds[0] == ["py", "-m", "pip", "install", "-q", "-e", ".[dev,bench]", "--no-index", "--find-links", "/w",
                       "--no-build-isolation", "jax[cuda12]"]
    scripts = [c[1] for c in cmds[1:]]
    assert scripts == ["experiments/bench_train.py", "experiments/bench_equal_info.py", "-"]
    cmds = commands(run(DEVICE_CHECK, "--dry-run", "--install", "none", "--skip", "tests,train,patch,equal_info"))
    assert len(cmds) == 1 and cmds[0][1] == "-"


@pytest.mark.parametrize("args, fragment", [
    (["--install", "maybe"], "'maybe'"), (["--install", "offline"], "--wheels"),
    (["--jax-cuda", "cuda11"], "'cuda11'"), (["--skip", "bench"], "'bench'"),
    (["--step-timeout", "0"], "'0'"), (["--frobnicate"], "'--frobnicate'"),
])
def test_device_check_bad_input(args, fragment):
    assert_one_line_error(run(DEVICE_CHECK, "--dry-run", *args), fragment)


def test_device_check_needs_repo_root(tmp_path):
    assert_one_line_error(run(DEVICE_CHECK, "--dry-run", cwd=tmp_path), "repository root")


# --- all scripts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_exits_zero(script):
    proc = run(script, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "usage:" in proc.stdout and "--dry-run" in proc.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS + [ROOT / "tpu_scripts" / "common.sh"], ids=lambda p: p.name)
def test_shellcheck_clean(script):
    proc = subprocess.run(["shellcheck", "-x", "--shell=bash", str(script)], cwd=script.parent, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- pcomp.train.distributed --------------------------------------------------------------------------

SLURM_STEP = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[001-002]", "SLURM_NTASKS": "16",
              "SLURM_PROCID": "5", "SLURM_LOCALID": "5"}


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"PCOMP_DISTRIBUTED": "0"}, None),
    ({"PCOMP_DISTRIBUTED": "1"}, {}),
    ({"PCOMP_DISTRIBUTED": " 1 "}, {}),
    (SLURM_STEP, {}),
    ({**SLURM_STEP, "PCOMP_DISTRIBUTED": "0"}, None),
    ({**SLURM_STEP, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1"}, None),  # a one-task batch script
    ({**SLURM_STEP, "PCOMP_COORDINATOR": "gpu001:9999"}, {"coordinator_address": "gpu001:9999"}),
    ({**SLURM_STEP, "PCOMP_LOCAL_DEVICE_IDS": "0,1,2,3"}, {"local_device_ids": [0, 1, 2, 3]}),
    ({"PCOMP_COORDINATOR": "10.0.0.1:1234", "PCOMP_NUM_PROCESSES": "2", "PCOMP_PROCESS_ID": "1"},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}),
    ({"PCOMP_COORDINATOR": "[fe80::1]:1234", "PCOMP_NUM_PROCESSES": "2", "PCOMP_PROCESS_ID": "0"},
     {"coordinator_address": "[fe80::1]:1234", "num_processes": 2, "process_id": 0}),
    ({"PCOMP_NUM_PROCESSES": "1"}, None),
    ({"PCOMP_NUM_PROCESSES": "1", "PCOMP_PROCESS_ID": "0", "PCOMP_COORDINATOR": "h:1"}, None),
    ({"PCOMP_DISTRIBUTED": "1", "PCOMP_COORDINATOR": "w0:8476"}, {"coordinator_address": "w0:8476"}),
    ({"PCOMP_DISTRIBUTED": "1", "PCOMP_NUM_PROCESSES": "4"}, {"num_processes": 4}),
])
def test_distributed_args(env, expected):
    assert distributed_args(env) == expected


@pytest.mark.parametrize("env, fragments", [
    ({"PCOMP_DISTRIBUTED": "yes"}, ["PCOMP_DISTRIBUTED='yes'"]),
    ({"PCOMP_NUM_PROCESSES": "4"}, ["PCOMP_PROCESS_ID is not set"]),
    ({"PCOMP_NUM_PROCESSES": "4", "PCOMP_PROCESS_ID": "1"}, ["PCOMP_COORDINATOR is not set"]),
    ({"PCOMP_COORDINATOR": "h:1", "PCOMP_PROCESS_ID": "1"}, ["PCOMP_NUM_PROCESSES is not set"]),
    ({"PCOMP_COORDINATOR": "h:1", "PCOMP_NUM_PROCESSES": "4", "PCOMP_PROCESS_ID": "4"}, ["PCOMP_PROCESS_ID=4", "4"]),
    ({"PCOMP_NUM_PROCESSES": "0"}, ["PCOMP_NUM_PROCESSES='0'"]),
    ({"PCOMP_NUM_PROCESSES": "two"}, ["PCOMP_NUM_PROCESSES='two'"]),
    ({"PCOMP_PROCESS_ID": "-1"}, ["PCOMP_PROCESS_ID='-1'"]),
    ({"PCOMP_COORDINATOR": "node0"}, ["PCOMP_COORDINATOR='node0'"]),
    ({"PCOMP_COORDINATOR": "node0:http"}, ["PCOMP_COORDINATOR='node0:http'"]),
    ({"PCOMP_COORDINATOR": ":1234"}, ["PCOMP_COORDINATOR=':1234'"]),
    ({"PCOMP_COORDINATOR": "h:65536"}, ["PCOMP_COORDINATOR='h:65536'"]),
    ({"PCOMP_LOCAL_DEVICE_IDS": "0,0"}, ["PCOMP_LOCAL_DEVICE_IDS='0,0'"]),
    ({"PCOMP_LOCAL_DEVICE_IDS": "gpu0"}, ["PCOMP_LOCAL_DEVICE_IDS='gpu0'"]),
    ({**SLURM_STEP, "SLURM_PROCID": "16"}, ["SLURM_PROCID=16", "SLURM_NTASKS=16"]),
    ({**SLURM_STEP, "PCOMP_PROCESS_ID": "16"}, ["PCOMP_PROCESS_ID=16", "16"]),
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, ["SLURM_STEP_NODELIST", "srun"]),
    ({**SLURM_STEP, "SLURM_NTASKS": "x"}, ["SLURM_NTASKS='x'"]),
])
def test_distributed_args_inconsistent_env_is_one_line_config_error(env, fragments):
    with pytest.raises(ConfigError) as e:
        distributed_args(env)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


_VALUES = {
    "PCOMP_DISTRIBUTED": st.sampled_from(["", "0", "1"]),
    "PCOMP_COORDINATOR": st.sampled_from(["", "h:1", "10.0.0.1:8476"]),
    "PCOMP_NUM_PROCESSES": st.sampled_from(["", "1", "2", "8"]),
    "PCOMP_PROCESS_ID": st.sampled_from(["", "0", "1", "7", "8"]),
    "SLURM_JOB_ID": st.sampled_from(["", "5"]),
    "SLURM_NTASKS": st.sampled_from(["", "1", "4"]),
    "SLURM_PROCID": st.sampled_from(["", "0", "3", "4"]),
    "SLURM_STEP_NODELIST": st.sampled_from(["", "n[1-2]"]),
    "SLURM_LOCALID": st.sampled_from(["", "0"]),
}


def _reference(env: dict) -> tuple[str, dict | None]:
    """Naive restatement of the rules: ("error", None) | ("none", None) | ("init", explicit args)."""
    get = lambda k: env.get(k, "")  # noqa: E731
    if get("PCOMP_DISTRIBUTED") == "0":
        return "none", None
    n = int(get("PCOMP_NUM_PROCESSES")) if get("PCOMP_NUM_PROCESSES") else None
    pid = int(get("PCOMP_PROCESS_ID")) if get("PCOMP_PROCESS_ID") else None
    coord = get("PCOMP_COORDINATOR") or None
    slurm_n = int(get("SLURM_NTASKS")) if get("SLURM_JOB_ID") and get("SLURM_NTASKS") else None
    in_slurm = slurm_n is not None and slurm_n > 1
    if in_slurm:
        if not all(get(v) for v in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")):
            return "error", None
        if int(get("SLURM_PROCID")) >= slurm_n:
            return "error", None
    count = n if n is not None else (slurm_n if in_slurm else None)
    if pid is not None and count is not None and pid >= count:
        return "error", None
    if count == 1:
        return "none", None
    explicit = {k: v for k, v in (("coordinator_address", coord), ("num_processes", n), ("process_id", pid))
                if v is not None}
    if not in_slurm and get("PCOMP_DISTRIBUTED") != "1":
        if not explicit:
            return "none", None
        if len(explicit) < 3:
            return "error", None
    return "init", explicit


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional=_VALUES))
def test_distributed_args_matches_reference(env):
    env = {k: v for k, v in env.items() if v != ""}
    kind, args = _reference(env)
    if kind == "error":
        with pytest.raises(ConfigError):
            distributed_args(env)
        return
    got = distributed_args(env)
    if kind == "none":
        assert got is None
    else:
        assert got == args
        if "process_id" in got and "num_processes" in got:
            assert 0 <= got["process_id"] < got["num_processes"]


def test_initialize_calls_jax_only_when_needed(monkeypatch):
    import jax

    calls = []
    state = {"initialized": False}
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: state["initialized"])
    assert distributed.initialize({}) is None
    assert distributed.initialize({**SLURM_STEP, "PCOMP_DISTRIBUTED": "0"}) is None
    assert calls == []
    env = {"PCOMP_COORDINATOR": "h:1", "PCOMP_NUM_PROCESSES": "2", "PCOMP_PROCESS_ID": "1"}
    assert distributed.initialize(env) == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    assert calls == [{"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}]
    state["initialized"] = True  # a second call in the same process does nothing
    distributed.initialize(env)
    assert len(calls) == 1
    monkeypatch.setenv("PCOMP_DISTRIBUTED", "1")  # default: os.environ
    state["initialized"] = False
    for var in [v for v in os.environ if v.startswith(("SLURM_", "PCOMP_")) and v != "PCOMP_DISTRIBUTED"]:
        monkeypatch.delenv(var)
    assert distributed.initialize() == {}
    assert calls[-1] == {}


# --- two real JAX processes on this machine (CPU) -----------------------------------------------------

PROBE = """\
import os
from pcomp.train.distributed import initialize
args = initialize()
import jax
os.write(1, f"RESULT {sorted(args or {})} {jax.process_index()} {jax.process_count()}\\n".encode())  # one write
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe_env(tmp_path: Path) -> tuple[dict, Path]:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath, "XLA_FLAGS": ""}, probe


def _results(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith("RESULT"))


@pytest.mark.slow  # starts two JAX processes
def test_two_processes_through_gpu_launch(tmp_path):
    env, probe = _probe_env(tmp_path)
    fake = tmp_path / "pcomp"
    fake.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(probe))}\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(GPU), "--pcomp", str(fake), "--local-processes", "2", "--port",
                           str(_free_port()), "train"], capture_output=True, text=True, env=_env(env), timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    keys = "['coordinator_address', 'local_device_ids', 'num_processes', 'process_id']"
    assert _results(proc.stdout) == [f"RESULT {keys} 0 2", f"RESULT {keys} 1 2"]


@pytest.mark.slow  # starts two JAX processes
def test_two_processes_through_jax_slurm_detection(tmp_path):
    env, probe = _probe_env(tmp_path)
    env.update({"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
                "JAX_COORDINATOR_PORT": str(_free_port())})
    procs = [subprocess.Popen([sys.executable, str(probe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env({**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}))
             for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert _results("".join(o for o, _ in outs)) == ["RESULT [] 0 2", "RESULT [] 1 2"]


def test_initialize_without_a_detectable_cluster_is_a_config_error(monkeypatch):
    import jax

    def no_cluster(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    with pytest.raises(ConfigError) as e:
        distributed.initialize({"PCOMP_DISTRIBUTED": "1"})
    msg = str(e.value)
    assert "\n" not in msg and "coordinator_address should be defined" in msg and "PCOMP_COORDINATOR" in msg
