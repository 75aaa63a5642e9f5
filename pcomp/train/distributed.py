"""Multi-process start-up: whether and how to call `jax.distributed.initialize`, decided from the environment.

The same `pcomp train ...` command runs on a laptop, on every worker of a Cloud TPU pod slice, in
every task of a Slurm job and on hand-started GPU processes; only the environment differs:

=======================================  ============================================================
environment                              what happens
=======================================  ============================================================
``PCOMP_DISTRIBUTED=0``                  one process, never initialize (even inside a Slurm step)
``PCOMP_DISTRIBUTED=1``                  ``jax.distributed.initialize()``: whatever is not given below
                                         JAX detects itself (TPU VM pod slices through the metadata
                                         server, Slurm, Open MPI); ``tpu_scripts/tpu.sh`` sets this
a Slurm step with ``SLURM_NTASKS > 1``   ``jax.distributed.initialize()`` with JAX's Slurm detection:
                                         coordinator = first node of ``SLURM_STEP_NODELIST``, process
                                         count/id = ``SLURM_NTASKS``/``SLURM_PROCID``, one GPU per task
                                         (``SLURM_LOCALID``)
``PCOMP_COORDINATOR=host:port``,         explicit arguments (GPU nodes without a scheduler); inside
``PCOMP_NUM_PROCESSES``,                 Slurm or with ``PCOMP_DISTRIBUTED=1`` they override what JAX
``PCOMP_PROCESS_ID``,                    would detect, elsewhere all three are required
``PCOMP_LOCAL_DEVICE_IDS=0,1,..``
anything else                            one process, no initialize
=======================================  ============================================================

`distributed_args` is the pure decision (unit-tested over env dicts); `initialize` applies it and
must run before anything touches a JAX device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pcomp.errors import ConfigError

ENV_FLAG = "PCOMP_DISTRIBUTED"
ENV_COORDINATOR = "PCOMP_COORDINATOR"
ENV_NUM_PROCESSES = "PCOMP_NUM_PROCESSES"
ENV_PROCESS_ID = "PCOMP_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "PCOMP_LOCAL_DEVICE_IDS"

# what JAX's Slurm detection (jax._src.clusters.SlurmCluster) reads; all must be present for it to fire
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return value


def _coordinator(env: Mapping[str, str]) -> str | None:
    raw = env.get(ENV_COORDINATOR, "").strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{ENV_COORDINATOR}={raw!r}: expected HOST:PORT of process 0 (e.g. node001:1234)")
    return raw


def _local_device_ids(env: Mapping[str, str]) -> list[int] | None:
    raw = env.get(ENV_LOCAL_DEVICE_IDS, "").strip()
    if not raw:
        return None
    parts = [p.strip() for p in raw.split(",")]
    if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"{ENV_LOCAL_DEVICE_IDS}={raw!r}: expected distinct device numbers, e.g. 0 or 0,1,2,3")
    return [int(p) for p in parts]


def _slurm_tasks(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(SLURM_NTASKS, SLURM_PROCID) inside a Slurm job step with more than one task, else None."""
    if "SLURM_JOB_ID" not in env or "SLURM_NTASKS" not in env:
        return None
    ntasks = _int(env, "SLURM_NTASKS", 1)
    if ntasks == 1:
        return None
    missing = [v for v in SLURM_VARS if not env.get(v, "").strip()]
    if missing:
        raise ConfigError(f"SLURM_NTASKS={ntasks} but {', '.join(missing)} not set: start every task with "
                          f"srun (see tpu_scripts/slurm_gpu.sbatch), or set {ENV_FLAG}=0 for one process")
    procid = _int(env, "SLURM_PROCID", 0)
    if procid >= ntasks:
        raise ConfigError(f"SLURM_PROCID={procid} is not below SLURM_NTASKS={ntasks}")
    return ntasks, procid


def distributed_args(env: Mapping[str, str]) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize` in this environment, or None for one process.

    An empty dict means "call it with no arguments" (JAX detects the cluster). Raises ConfigError,
    naming the variable, for an inconsistent environment.
    """
    flag = env.get(ENV_FLAG, "").strip()
    if flag not in ("", "0", "1"):
        raise ConfigError(f"{ENV_FLAG}={flag!r}: expected 0 (one process) or 1 (initialize jax.distributed)")
    if flag == "0":
        return None
    coordinator = _coordinator(env)
    num_processes = _int(env, ENV_NUM_PROCESSES, 1)
    process_id = _int(env, ENV_PROCESS_ID, 0)
    local_ids = _local_device_ids(env)
    slurm = _slurm_tasks(env)

    count = num_processes if num_processes is not None else (slurm[0] if slurm else None)
    if process_id is not None and count is not None and process_id >= count:
        raise ConfigError(f"{ENV_PROCESS_ID}={process_id} is not below the process count {count}")
    if count == 1:
        return None  # one process: nothing to coordinate
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if slurm is None and flag != "1":
        if not explicit:
            return None
        # no cluster for JAX to detect the rest from: everything must be given
        for name, value in ((ENV_NUM_PROCESSES, num_processes), (ENV_PROCESS_ID, process_id),
                            (ENV_COORDINATOR, coordinator)):
            if value is None:
                raise ConfigError(f"{name} is not set: outside Slurm and TPU pods (PCOMP_DISTRIBUTED=1) a "
                                  f"multi-process run needs {ENV_COORDINATOR}=HOST:PORT, {ENV_NUM_PROCESSES} "
                                  f"and {ENV_PROCESS_ID}")
    args: dict = {}
    if coordinator is not None:
        args["coordinator_address"] = coordinator
    if num_processes is not None:
        args["num_processes"] = num_processes
    if process_id is not None:
        args["process_id"] = process_id
    if local_ids is not None:
        args["local_device_ids"] = local_ids
    return args


def initialize(env: Mapping[str, str] | None = None) -> dict | None:
    """Call `jax.distributed.initialize` when `distributed_args(env)` (default: os.environ) says so.

    Must run before any JAX computation or device query. A second call in the same process does
    nothing. Returns the arguments used (None: single process).
    """
    args = distributed_args(os.environ if env is None else env)
    if args is None:
        return None
    import jax

    if not jax.distributed.is_initialized():
        try:
            jax.distributed.initialize(**args)
        except ValueError as e:  # JAX found no cluster to fill in what is missing
            raise ConfigError(f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in args.items())}) "
                              f"failed: {e} (outside TPU pods and Slurm set {ENV_COORDINATOR}, "
                              f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})") from e
    return args
