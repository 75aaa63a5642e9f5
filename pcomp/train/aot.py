"""`pcomp compile`: the programs `pcomp train` would run, compiled for a named topology with no device.

A CPU machine with libtpu installed can compile for a TPU slice it does not have:
`jax.experimental.topologies.get_topology_desc("v5e:2x4", platform="tpu")` gives the slice's devices
(compile-only), and `jax.jit(step).lower(abstract arguments).compile()` over a mesh of them runs the
real TPU compiler. `compile_for_topology` plans the run exactly as the trainer does
(`trainer.plan_run`, the mesh over the topology's devices) and compiles each stage's step through the
trainer's own path (`trainer.compile_stage`), then reports per chip what XLA allocates against the
chip's HBM (`memory.TPU_AVAILABLE_BYTES`) and the collectives the partitioned program runs per step
(`collectives`), so a config that cannot fit, or a sharding that moves far more bytes than it should,
shows before a pod is rented. `cpu:N` compiles for N simulated CPU devices instead, and `h100:N` for N
H100 GPUs (8 per host) when the CUDA plugin of this jax is installed (`_gpu_target`).

A multi-host slice compiles the SPMD program every process runs (process 0's); its memory is per chip.
No data is read: the vocabulary comes from the tokenizer settings (or a prepared dataset, which must be
readable here), so a data source that only the workers can read is fine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
import warnings

import jax

from pcomp.config import Config
from pcomp.errors import ConfigError
from pcomp.train import memory
from pcomp.train.quiet import quiet_stderr
from pcomp.train.trainer import compile_stage, plan_run, stage_label

TPU_GENERATIONS = tuple(memory.TPU_HBM_BYTES)  # v4, v5e, v5p, v6e
# chips one host (TPU VM) holds: v5e / v6e slices of up to 8 chips are one host, larger ones 4 chips per
# host; v4 and v5p hosts hold 4 chips (2x2x1)
_SINGLE_HOST_CHIPS = {"v5e": 8, "v6e": 8}
# collective-permute: how the TPU compiler's windowed einsums ("collective matmul") all-gather a weight or
# reduce-scatter a gradient in steps overlapped with the matmul, inside loops named windowed_dot_general_*
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Target:
    """The devices a program is compiled for: a TPU topology's (compile-only) or N CPU devices."""

    name: str  # as given: v5e:2x4, cpu:8
    platform: str  # tpu | cpu
    devices: list
    chips: int
    hbm_bytes: int | None  # per device, what the compiler lets a program use (`memory.TPU_AVAILABLE_BYTES`); None for CPU

    @property
    def hosts(self) -> int:
        return len({d.process_index for d in self.devices})

    def describe(self) -> str:
        if self.platform == "cpu":
            return f"{self.name} ({len(self.devices)} CPU devices)"
        if self.platform == "gpu":
            return f"{self.name} ({_count(self.chips, 'GPU')}, {_count(self.hosts, 'host')})"
        per_chip = len(self.devices) // self.chips
        devices = f", {len(self.devices)} devices" if per_chip != 1 else ""
        return f"{self.name} ({_count(self.chips, 'chip')}{devices}, {_count(self.hosts, 'host')})"


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("s" if n != 1 else "")


_ACCELERATOR = re.compile(r"^(v4|v5p|v5litepod|v5e|v6e)-([1-9][0-9]*)$")


def accelerator_topology(accelerator: str) -> str | None:
    """A Cloud TPU accelerator type as a topology name: v4-32 -> v4:2x2x4, v5litepod-8 -> v5e:2x4,
    v5p-8 -> v5p:2x2x1, v6e-16 -> v6e:4x4 (v4-N and v5p-N count TensorCores, two per chip; v5e and v6e
    count chips); None for anything else. Slices come in powers of two; the axes grow as Cloud TPU
    shapes them (the last of the smallest axes doubles first)."""
    m = _ACCELERATOR.match(accelerator)
    if not m:
        return None
    gen, n = {"v5litepod": "v5e"}.get(m.group(1), m.group(1)), int(m.group(2))
    chips = n // 2 if gen in ("v4", "v5p") else n
    if chips < 1 or chips & (chips - 1):
        return None
    if gen in ("v4", "v5p"):
        dims = [1, 1, 1] if chips == 1 else [2, 1, 1] if chips == 2 else [2, 2, 1]
    else:
        dims = [1, 1] if chips == 1 else [1, 2] if chips == 2 else [2, 2]
    while math.prod(dims) < chips:
        low = min(dims)
        i = max(j for j, d in enumerate(dims) if d == low)
        dims[i] *= 2
    return f"{gen}:" + "x".join(map(str, dims))


# What XLA needs to compile for an H100 (SXM, 80 GB) it cannot see: the GPU's device description, as jax
# issue 28376 gives it (`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)`).
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
H100_BYTES = 84929347584  # device_memory_size above: the 80 GB H100's memory as CUDA reports it
GPUS_PER_HOST = 8


def has_module(name: str) -> bool:
    """Whether `name` (dotted) can be imported, without importing it (a missing parent is False too)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _gpu_target(topology: str, count: str) -> Target:
    """`h100:N`: N H100s, 8 per host, through the CUDA PJRT plugin (jax-cuda12-plugin and -pjrt, the
    jax version's own; no GPU, driver or CUDA library needed, as long as jax itself runs on CPU)."""
    if not (count.isascii() and count.isdigit() and int(count) >= 1):
        raise ConfigError(f"--topology {topology!r}: expected h100:N with N >= 1 GPUs")
    n = int(count)
    if n > GPUS_PER_HOST and n % GPUS_PER_HOST:
        raise ConfigError(f"--topology {topology}: more than {GPUS_PER_HOST} GPUs come in hosts of {GPUS_PER_HOST}")
    if not has_module("jax_plugins.xla_cuda12"):
        raise ConfigError(f"compiling for {topology} needs the CUDA plugin of this jax: pip install "
                          f"jax-cuda12-plugin=={jax.__version__} jax-cuda12-pjrt=={jax.__version__}")
    from jax.experimental import topologies

    hosts, per_host = (n // GPUS_PER_HOST, GPUS_PER_HOST) if n > GPUS_PER_HOST else (1, n)
    with quiet_stderr():  # the plugin's "Could not find cuda drivers" at its loading
        jax.devices("cpu")  # (jax loads its plugins with its first backend)
        try:
            devices = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET_CONFIG,
                                                   topology=f"1x{hosts}x{per_host}").devices
        except Exception as e:  # noqa: BLE001
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--topology {topology}: the CUDA plugin cannot make this topology: {why} "
                              "(it needs JAX_PLATFORMS=cpu on a machine without a GPU)") from None
    return Target(topology, "gpu", list(devices), n, H100_BYTES)


def resolve(topology: str) -> Target:
    """`v5e:2x4`-style TPU topologies (generation:chips per axis), Cloud TPU accelerator types (v5litepod-8,
    v4-32: `accelerator_topology`) and `cpu:N`; a bad name, a shape the generation does not come in, too
    few CPU devices or a missing libtpu is a one-line ConfigError."""
    named = topology
    topology = accelerator_topology(topology) or topology
    gen, sep, shape = topology.partition(":")
    if gen == "h100" and sep:
        return _gpu_target(topology, shape)
    if gen == "cpu" and sep:
        if not (shape.isascii() and shape.isdigit() and int(shape) >= 1):
            raise ConfigError(f"--topology {topology!r}: expected cpu:N with N >= 1 simulated CPU devices")
        n, cpus = int(shape), jax.devices("cpu")
        if len(cpus) < n:
            raise ConfigError(f"--topology {topology}: jax has {len(cpus)} CPU devices; start with "
                              f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
        return Target(topology, "cpu", cpus[:n], n, None)
    dims = shape.split("x")
    if gen not in TPU_GENERATIONS or not sep or not all(d.isascii() and d.isdigit() and int(d) >= 1 for d in dims):
        raise ConfigError(f"--topology {topology!r}: expected GENERATION:SHAPE with GENERATION one of "
                          f"{', '.join(TPU_GENERATIONS)} (e.g. v5e:2x4, v5p:2x2x1), an accelerator type (v5litepod-8, "
                          "v4-32, v5p-8, v6e-16), or cpu:N")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ConfigError(f"compiling for TPU topology {topology} needs libtpu; pip install 'pcomp[tpu]'") from None
    chips = math.prod(int(d) for d in dims)
    kwargs = {}
    if chips <= _SINGLE_HOST_CHIPS.get(gen, 0):
        kwargs["chips_per_host_bounds"] = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    from jax.experimental import topologies

    # libtpu takes a lock file (/tmp/libtpu_lockfile) for its process; a compile opens no TPU, so several
    # may run at once (parallel tests, or a compile on a TPU VM whose chips a training job holds)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with quiet_stderr():
        try:
            devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
        except Exception as e:  # noqa: BLE001  (libtpu's own error types)
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--topology {topology}: libtpu cannot make this topology: {why}") from None
    per_device = memory.TPU_AVAILABLE_BYTES[gen] * chips // len(devices)
    name = topology if named == topology else f"{named} = {topology}"
    return Target(name, "tpu", list(devices), chips, per_device)


# --- collectives in the compiled HLO -----------------------------------------------------------------
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
                "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_OPS = "|".join(f"{c}(?:-start|-done)?" for c in COLLECTIVES)
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (.*?) (" + _OPS + r")\(")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"\b(condition|body|to_apply|calls|branch_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_RS_FUSION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (.*?) fusion\(.*\bcalls=%?all-reduce-scatter\b")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Collective:
    count: int  # executions per step (a loop's body counted once per iteration)
    bytes: int  # the bytes of their results on one device, summed over executions


def collectives(hlo: str) -> dict[str, Collective]:
    """The collectives of a compiled program's HLO text (`compiled.as_text()`) per step, by kind
    (COLLECTIVES): how many run and the bytes of their results on one device (an all-gather's gathered
    array, a reduce-scatter's shard, an all-reduce's array, a collective-permute's block). On TPU, FSDP's
    gathers and gradient reductions may run as windowed einsums: loops of collective-permutes. An instruction inside a while loop (the
    scanned layers) counts once per iteration: XLA's `known_trip_count`, else the loop condition's
    `i < N` constant. Asynchronous pairs count once (at `-done`, whose shape is the result); the TPU's
    reduce-scatter (a kCustom fusion of an all-reduce, `all-reduce-scatter`) counts as one reduce-scatter
    of its scattered result."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and "=" not in line.split("{")[0].split("(")[0]:
            current = m.group(2).lstrip("%")
            comps[current] = []
            if m.group(1):
                entry = current
            continue
        if current is not None:
            if line.strip() == "}":
                current = None
            else:
                comps[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    memo: dict[str, dict[str, list[int]]] = {}

    def trips(line: str) -> int:
        m = _TRIP.search(line)
        if m:
            return int(m.group(1))
        cond = re.search(r"condition=%?([\w.\-]+)", line)
        consts = [int(c) for c in re.findall(r"s(?:32|64)\[\][^=]*constant\((\d+)\)",
                                             "\n".join(comps.get(cond.group(1), [])))] if cond else []
        return consts[0] if len(consts) == 1 else 1

    def count(name: str) -> dict[str, list[int]]:
        if name in memo:
            return memo[name]
        memo[name] = {}  # (recursion guard; HLO has no cycles)
        out = {c: [0, 0] for c in COLLECTIVES}
        for line in comps.get(name, []):
            fused = _RS_FUSION.match(line)
            if fused:  # the TPU's reduce-scatter: an all-reduce fused with the slicing, kCustom
                out["reduce-scatter"][0] += 1
                out["reduce-scatter"][1] += _bytes(fused.group(1))
                continue
            m = _INSTR.match(line)
            if m and not m.group(2).endswith("-start"):
                kind = m.group(2).removesuffix("-done")
                out[kind][0] += 1
                out[kind][1] += _bytes(m.group(1))
            for key, callees in _CALLS.findall(line):
                factor = trips(line) if key == "body" else 1
                for callee in callees.strip("{}").split(","):
                    for kind, (n, b) in count(callee.strip().lstrip("%")).items():
                        out[kind][0] += factor * n
                        out[kind][1] += factor * b
        memo[name] = out
        return out

    return {kind: Collective(n, b) for kind, (n, b) in count(entry).items()}


def _bytes(shape: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of arrays; layouts ignored)."""
    return int(sum(_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
                   for t, dims in _ARRAY.findall(shape)))


# --- the command --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StageReport:
    """One stage's step compiled for a target: what `pcomp compile` prints and the fit table records."""

    stage: str
    patch_size: int
    mesh: dict[str, int]
    rows: int
    seq_tokens: int
    seconds: float
    memory: memory.MemoryUse | None
    hbm_bytes: int | None
    collectives: dict[str, Collective]
    attention: str  # the kernel model.attention picked on this target
    error: str | None  # check_fits's one-line error when it does not fit

    @property
    def fits(self) -> bool:
        return self.error is None

    def line(self, target: Target) -> str:
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        m = self.memory
        use = (f"arguments {memory.gib(m.argument_bytes)}, outputs {memory.gib(m.output_bytes)}, temporaries "
               f"{memory.gib(m.temp_bytes)}, peak {memory.gib(m.peak_bytes)}" if m else "no memory analysis")
        of = f" of {memory.gib(self.hbm_bytes)} available HBM" if self.hbm_bytes else ""
        verdict = "fits" if self.fits else "does NOT fit"
        coll = ", ".join(f"{k} {c.count} ({memory.gib(c.bytes)})" for k, c in self.collectives.items()) or "-"
        return (f"pcomp: {self.stage} step (K={self.patch_size}) on {target.describe()}: mesh {mesh}, global batch "
                f"{self.rows} x {self.seq_tokens} tokens, attention {self.attention}, compiled in {self.seconds:.1f} s; "
                f"per chip {use}{of}: {verdict}; collectives per step: {coll}")

    def to_dict(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k not in ("memory", "collectives")},
                "memory": dataclasses.asdict(self.memory) if self.memory else None,
                "peak_bytes": self.memory.peak_bytes if self.memory else None, "fits": self.fits,
                "collectives": {k: dataclasses.asdict(c) for k, c in self.collectives.items()}}


def compile_for_topology(cfg: Config, target: Target, *, on_stage=None, on_hlo=None) -> list[StageReport]:
    """Every stage's train step of `cfg`, planned and compiled as `pcomp train` would (`plan_run`,
    `compile_stage`) over `target`'s devices, each checked against the chip's HBM with the trainer's
    own `memory.check_fits` (its one-line error kept in `StageReport.error`). `on_stage(report)` is
    called as each stage finishes (the CLI prints it then: a large compile takes minutes); `on_hlo(stage name,
    compiled HLO text)` too, for a look at what the collectives were counted from."""
    from pcomp.models.attention import choose

    planned, mesh, stages = plan_run(cfg, target.devices, check_data=False)  # the data may be on the workers
    with jax.set_mesh(mesh):  # the kernel the traced model picks (it reads the mesh's platform)
        kind = choose(planned.model.attention, planned.data.seq_len, planned.model.dtype)
    reports = []
    for i, stage in enumerate(stages):
        start = time.perf_counter()
        seconds, use, coll, error = 0.0, None, {}, None
        try:
            with warnings.catch_warnings():
                if target.platform != "cpu":  # jax cannot load a compile-only executable from its persistent
                    # cache (JAX_COMPILATION_CACHE_DIR): it warns, then compiles again, as without a cache
                    warnings.filterwarnings("ignore", "Error reading persistent compilation cache entry", UserWarning)
                step = compile_stage(planned, mesh, stages, i).step
            hlo = step.executable.as_text()
            seconds, use, coll = step.seconds, step.memory, collectives(hlo)
            if on_hlo is not None:
                on_hlo(stage.name, hlo)
            memory.check_fits(use, target.hbm_bytes, stage_label(planned, stage))
        except memory.DoesNotFit as e:  # check_fits's, or the compiler's own refusal (then there is no program)
            error = str(e)
            seconds = seconds or time.perf_counter() - start
        report = StageReport(stage.name, stage.patch_size, dict(mesh.shape), planned.training.batch_size,
                             stage.seq_tokens, seconds, use, target.hbm_bytes, coll, kind, error)
        if on_stage is not None:
            on_stage(report)
        reports.append(report)
    return reports
