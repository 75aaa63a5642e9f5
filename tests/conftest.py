"""Run the suite on 8 simulated CPU devices so sharding is really exercised."""

import os
import shutil
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite runs on CPU devices; with libtpu installed (the tpu extra) jax would otherwise probe for a TPU
# at every start (slow, and noisy where there is none). TPU compiles need no TPU (`pcomp compile`).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# A persistent XLA compilation cache for the suite, shared by the xdist workers and the subprocesses
# the tests start (they inherit the environment), kept between runs in .pytest_cache (`make clean`
# removes it): most tests compile a few test-tiny programs, and a hit loads the executable XLA
# compiled before. No result depends on it: jax keys an entry by the program, jaxlib, XLA flags and
# compile options, and the directory is per CPU model and jax version (executables are compiled for
# this host's CPU). A clean clone (CI) starts empty. Set before jax is imported; an explicit
# JAX_COMPILATION_CACHE_DIR is kept (`JAX_COMPILATION_CACHE_DIR=$(mktemp -d) make test` runs cold).
def _xla_cache_dir() -> Path:
    import hashlib
    import importlib.metadata
    import platform

    try:
        cpu = Path("/proc/cpuinfo").read_text()
        cpu = "\n".join(sorted({ln for ln in cpu.splitlines() if ln.startswith(("model name", "flags"))}))
    except OSError:
        cpu = platform.processor()
    key = f"{platform.machine()}|{cpu}|{importlib.metadata.version('jaxlib')}"
    return Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _prune(directory: Path, limit: int) -> None:
    """Delete the oldest files of `directory` until it holds at most `limit` bytes."""
    entries = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in directory.glob("*") if p.is_file())
    excess = sum(size for _, size, _ in entries) - limit
    for _, size, path in entries:
        if excess <= 0:
            break
        path.unlink(missing_ok=True)
        excess -= size


# Every program is kept, however small or quick to compile: the suite's processes compile the same
# small programs (eager ops, a decode step) again and again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_xla_cache_dir())
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # once per session, before any worker starts
        _prune(Path(os.environ["JAX_COMPILATION_CACHE_DIR"]), 2 << 30)


import contextlib  # noqa: E402
import fcntl  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def shared_path(tmp_path_factory, name: str):
    """`name` in a directory every xdist worker of this test session sees (this session's base
    temporary directory without xdist), held under an exclusive file lock: the first worker to need a
    shared artifact makes it while the others wait, then all read it. Never shared across sessions."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield root / name
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """`shared_path` for tests: `with shared("name") as path: ...`."""
    return lambda name: shared_path(tmp_path_factory, name)


@pytest.fixture(scope="session")
def m1_run(tmp_path_factory) -> Path:
    """A trained test-tiny byte M1 (20 steps, BOS first; checkpoints at steps 10 and 20), trained once
    per test session (shared by the xdist workers) for the compressor tests. Read-only for tests."""
    from pcomp.config import Config
    from pcomp.train.trainer import train

    with shared_path(tmp_path_factory, "compress-tests-m1") as run:
        if not (run / "summary.json").is_file():
            shutil.rmtree(run, ignore_errors=True)
            train(Config.preset("test-tiny").override(f"training.workdir={run}", "training.steps=20",
                                                      "training.checkpoint_every=10", "training.progress=false",
                                                      "data.bos_first=true"))
    return run


@pytest.fixture(scope="session")
def random_m1_model():
    """An untrained test-tiny byte model built in memory (no training: instant), trained-context 16
    bytes (data.seq_len), for exactness tests of the M1-driven coders, where only determinism matters."""
    import dataclasses

    from flax import nnx

    from pcomp.config import Config, DataConfig
    from pcomp.data.tokenizers import ByteTokenizer
    from pcomp.models.transformer import Transformer
    from pcomp.train.load import TrainedModel

    cfg = dataclasses.replace(Config.preset("test-tiny").model, max_seq_len=40)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    return TrainedModel(Config(model=cfg, data=DataConfig(bos_first=True, seq_len=16)), ByteTokenizer(), graphdef,
                        params, 0, Path("in-memory"))
