"""`training.profile_steps=N,M`: a JAX profiler trace of exactly global steps N..M in WORKDIR/profile."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pcomp.config import Config
from pcomp.errors import ConfigError

TINY = Config.preset("test-tiny").override("training.progress=false", "data.seq_len=32", "training.steps=4",
                                          "training.checkpoint_every=100", "training.log_every=100")


@pytest.mark.parametrize("value, window", [("", None), ("2,3", (2, 3)), ("5,5", (5, 5)), (" 1, 20", (1, 20))])
def test_profile_steps_parse(value, window):
    cfg = TINY.override(f"training.profile_steps={value}").validate()
    assert cfg.training.profile_window() == window


@pytest.mark.parametrize("value", ["3,2", "a,b", "-1,2", "0,2", "2", "1,2,3", "2,", "1.5,3", "²,3"])
def test_bad_profile_steps_are_one_line_config_errors(value):
    with pytest.raises(ConfigError) as e:
        TINY.override(f"training.profile_steps={value}").validate()
    assert f"training.profile_steps={value!r}" in str(e.value) and "\n" not in str(e.value)


def test_bad_profile_steps_on_the_command_line(tmp_path, capsys):
    from pcomp.cli import main

    run = tmp_path / "run"
    assert main(["train", "--config", "test-tiny", "training.profile_steps=-1,2", f"training.workdir={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pcomp: error: training.profile_steps='-1,2' must be") and len(err.strip().splitlines()) == 1
    assert not run.exists()  # refused before anything was written


def _traces(workdir: Path) -> list[Path]:
    """One `<host>.trace.json.gz` per trace written, oldest first (each trace has its own time-stamped folder)."""
    return sorted((workdir / "profile" / "plugins" / "profile").glob("*/*.trace.json.gz"))


def _train_step_executions(trace: Path) -> int:
    """How many times the jitted train step ran inside the trace (the host-side event of each
    execution; the per-device events carry a `[device]` prefix and are not counted)."""
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    return sum(1 for e in events if e.get("ph") == "X" and e.get("name", "").endswith("Execute (jit_train_step)")
               and not e["name"].startswith("["))


@pytest.mark.slow
def test_profile_traces_exactly_the_window(tmp_path):
    from pcomp.train.trainer import train

    train(TINY.override(f"training.workdir={tmp_path}", "training.profile_steps=2,3"))
    (trace,) = _traces(tmp_path)
    assert list(trace.parent.glob("*.xplane.pb")), "no xplane.pb for TensorBoard / XProf"
    assert _train_step_executions(trace) == 2  # steps 2 and 3, not the compiling step 1 nor step 4


@pytest.mark.slow
def test_profile_stopped_and_resumed_inside_the_window(tmp_path):
    """A run stopped inside the window still writes its trace; the resumed run traces the rest."""
    from pcomp.train.trainer import train

    cfg = TINY.override(f"training.workdir={tmp_path}", "training.profile_steps=2,3")
    assert train(cfg, stop_at=2).stopped_at == 2
    (first,) = _traces(tmp_path)
    assert _train_step_executions(first) == 1  # step 2
    train(cfg)
    traces = _traces(tmp_path)
    assert len(traces) == 2 and traces[0] == first
    assert _train_step_executions(traces[1]) == 1  # step 3 only
