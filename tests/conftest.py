"""Run the suite on 8 simulated CPU devices so sharding is really exercised."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def m1_run(tmp_path_factory) -> Path:
    """A trained test-tiny byte M1 (20 steps, BOS first; checkpoints at steps 10 and 20), trained once
    per test session (per xdist worker) for the compressor tests."""
    from pcomp.config import Config
    from pcomp.train.trainer import train

    run = tmp_path_factory.getbasetemp() / "compress-tests-m1"
    if not (run / "summary.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        train(Config.preset("test-tiny").override(f"training.workdir={run}", "training.steps=20",
                                                  "training.checkpoint_every=10", "training.progress=false",
                                                  "data.bos_first=true"))
    return run
