"""Model FLOPs, device peak rates (MFU), and the metrics writer (JSONL + TensorBoard + console)."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from pcomp.config import ModelConfig
from pcomp.errors import os_error
from pcomp.models.transformer import count_params

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
}


def flops_per_position(cfg: ModelConfig, seq_len: int, *, training: bool = True) -> float:
    """Analytic model FLOPs per sequence position (PaLM appendix B): 6N + 12 L d T for training
    (forward + backward), a third of it for the forward only. N counts every matmul weight,
    LM head included, embedding lookup excluded. A patch position costs the same as a token
    position; it just carries K tokens.
    """
    n_matmul = count_params(cfg, embeddings=False) - (2 * cfg.n_layers + 1) * cfg.d_model
    n_matmul += cfg.d_model * cfg.padded_vocab  # LM head (tied or not)
    per_pos = 6 * n_matmul + 12 * cfg.n_layers * cfg.d_model * seq_len
    return per_pos if training else per_pos / 3


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(dtype: str = "float32", n: int = 2048, windows: int = 3, window_s: float = 0.5) -> float:
    """Dense matmul rate of one local device, measured (the practical peak on CPU).

    Best of `windows` back-to-back runs of ~`window_s` seconds each: a train step lasts about that
    long, and a single 2048^3 matmul (~50 ms) swings by +-25% on a shared CPU, so best-of-single-calls
    would compare a lucky instant against a step's average.
    """
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    t = time.perf_counter()
    f(a, a).block_until_ready()
    reps = max(1, round(window_s / max(time.perf_counter() - t, 1e-6)))
    best = float("inf")
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a, a)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best


def peak_flops_per_device(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    device = jax.local_devices()[0]
    kind = device.device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak, f"{kind} spec"
    return measured_matmul_flops(dtype), f"{kind} measured {dtype} matmul"


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch. tensorboardX imports torch whenever it
    is installed (4 s on a CPU machine, paid by every `pcomp train`) only to accept torch tensors;
    pcomp writes floats. Where torch is already imported, nothing changes."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Writes scalars to workdir/metrics.jsonl and TensorBoard (process 0 only).

    A run resumed from step `resume_step` first drops what an earlier attempt logged after that step
    (it is about to be logged again), so every step appears once."""

    def __init__(self, workdir: str | Path, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if enabled:
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "metrics.jsonl"
            if path.exists():
                keep = [line for line in path.read_text().splitlines(keepends=True)
                        if line.strip() and _logged_step(line) <= resume_step]
                path.write_text("".join(keep))
            self._jsonl = open(path, "a")
            self._tb = _summary_writer()(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
            self._tb_dir = workdir / "tensorboard"
            _watch_tensorboard_thread()

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        if _tb_failures:  # TensorBoard's writer thread died (a full disk): say so once, here
            raise os_error(self._tb_dir, _tb_failures.pop(), "write TensorBoard events to")
        clean = {k: (float(v) if not isinstance(v, str) else v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            if not isinstance(v, str):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled and self._jsonl is not None:
            self._jsonl, jsonl = None, self._jsonl
            self._tb, tb = None, self._tb
            jsonl.close()
            tb.close()


_tb_failures: list[OSError] = []  # OSErrors that ended tensorboardX's writer thread


def _watch_tensorboard_thread() -> None:
    """tensorboardX writes events on a thread; an OSError there (ENOSPC) would print a thread traceback
    and TensorBoard would silently stop. Instead it is kept, and the next `MetricsWriter.write`
    raises it as one line naming the directory; other threads' errors go to the previous hook."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "pcomp_tensorboard", False):
        return

    def hook(args):
        if issubclass(args.exc_type, OSError) and type(args.thread).__module__.startswith("tensorboardX"):
            _tb_failures.append(args.exc_value)
        else:
            previous(args)

    hook.pcomp_tensorboard = True
    threading.excepthook = hook


def _logged_step(line: str) -> int:
    """The step of one metrics.jsonl line (a torn last line from a killed run counts as after any step)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
