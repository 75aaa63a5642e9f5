"""Nothing lost, nothing silent (issue #9, training side): divergence, one run per work directory,
set-up that leaves nothing behind, SIGTERM / SIGINT with exact resume, metrics logged once per step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from pcomp.config import Config
from pcomp.errors import CheckpointError, ConfigError, DataError, DivergenceError
from pcomp.train.checkpoint import Checkpointer
from pcomp.train.load import load_trained
from pcomp.train.lock import WorkdirLock
from pcomp.train.trainer import train

TINY = Config.preset("test-tiny").override("training.progress=false")
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONUNBUFFERED": "1"}


def _params(workdir) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(load_trained(workdir).params)]


@pytest.mark.slow
def test_divergence_stops_at_once_and_never_checkpoints_nan(tmp_path):
    cfg = TINY.override("training.lr=1e4", "training.steps=60", "training.checkpoint_every=2",
                        f"training.workdir={tmp_path / 'w'}")
    with pytest.raises(DivergenceError) as err:
        train(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    ckpt = Checkpointer(tmp_path / "w" / "checkpoints", 3)
    steps = ckpt.all_steps()
    ckpt.close()
    diverged_at = int(msg.split("diverged at step ")[1].split(":")[0])
    # training stopped at the first non-finite step; every checkpoint on disk is before it and finite
    assert steps and max(steps) < diverged_at <= 60
    assert f"last good checkpoint is step {max(steps)}" in msg
    for leaf in _params(tmp_path / "w"):
        assert np.isfinite(leaf).all()
    rows = [json.loads(r) for r in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train/grad_norm"]) for r in rows if "train/grad_norm" in r)


def test_second_run_on_a_locked_workdir_fails_without_writing(tmp_path):
    workdir = tmp_path / "w"
    with WorkdirLock(workdir):
        with pytest.raises(CheckpointError, match=f"in use by another pcomp run \\(pid {os.getpid()}\\)"):
            train(TINY.override(f"training.workdir={workdir}"))
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # no config, tokenizer, checkpoints


def test_a_dead_runs_lock_is_taken_over(tmp_path):
    workdir = tmp_path / "w"
    code = f"from pcomp.train.lock import WorkdirLock; import os\nWorkdirLock({str(workdir)!r}).__enter__(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
    assert (workdir / ".lock").exists()
    with WorkdirLock(workdir):  # the holder died: its flock went with it
        pass


def test_failed_setup_leaves_nothing_a_later_run_would_reuse(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    workdir = tmp_path / "w"
    with pytest.raises((DataError, ConfigError)):
        train(TINY.override(f"data.source={empty}", f"training.workdir={workdir}"))
    assert not (workdir / "tokenizer").exists() and not (workdir / "config.json").exists()


def test_resume_with_another_tokenizer_is_refused(tmp_path):
    from pcomp.data.tokenizers import ByteTokenizer

    workdir = tmp_path / "w"
    ByteTokenizer().save(workdir / "tokenizer")  # left by an older run
    with pytest.raises(ConfigError, match="holds a 'bytes' tokenizer, but this run asks for "
                                          "data.tokenizer='sentencepiece'"):
        train(TINY.override("data.tokenizer=sentencepiece", f"training.workdir={workdir}"))


@pytest.mark.slow
def test_resume_with_another_config_names_both_values(tmp_path):
    cfg = TINY.override("training.steps=2", f"training.workdir={tmp_path / 'w'}")
    train(cfg)
    with pytest.raises(CheckpointError, match=r"model\.d_ff=128, but this run asks for model\.d_ff=256"):
        train(cfg.override("model.d_ff=256"))


@pytest.mark.slow
def test_resume_with_another_schedule_is_refused_but_logging_may_change(tmp_path):
    cfg = TINY.override("training.steps=2", "training.checkpoint_every=1", f"training.workdir={tmp_path / 'w'}")
    train(cfg)
    # the steps (and so the LR schedule) of a run are fixed: a resumed run continues bit for bit
    with pytest.raises(CheckpointError, match=r"training\.steps=2, but this run asks for training\.steps=4"):
        train(cfg.override("training.steps=4"))
    with pytest.raises(CheckpointError, match=r"training\.lr=0\.003, but this run asks for training\.lr=0\.001"):
        train(cfg.override("training.lr=1e-3"))
    summary = train(cfg.override("training.log_every=1", "training.checkpoint_every=5", "training.keep_checkpoints=2",
                                 "model.scan_unroll=1"))
    assert sum(s["steps"] for s in summary.stages) == 2


STEPS = 80  # long enough that a signal sent at step 3 lands mid-training on an idle machine (seconds of steps left)
# checkpointing every step makes each step slow (so the signal still lands mid-run) and the resumed part
# writes one checkpoint per step: fewer steps keep that case short
STEPS_EVERY_STEP = 20


def _train_cmd(workdir: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "pcomp", "train", "--config", "test-tiny", f"training.steps={steps}",
            "training.log_every=1", "training.progress=false", "data.eval_max_bytes=2000",
            f"training.workdir={workdir}", *extra]


def _wait_for_step(workdir: Path, step: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(r).get("step", 0) >= step for r in metrics.read_text().splitlines()
                                    if r.strip().endswith("}")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step}")


@pytest.fixture(scope="module")
def straight_params(tmp_path_factory):
    """steps -> the final parameters of the uninterrupted run (checkpointing does not change training)."""
    cache = {}

    def params(steps: int):
        if steps not in cache:
            workdir = tmp_path_factory.mktemp("straight") / "w"
            train(TINY.override(f"training.steps={steps}", "data.eval_max_bytes=2000", f"training.workdir={workdir}"))
            cache[steps] = _params(workdir)
        return cache[steps]

    return params


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,every,steps", [
    (signal.SIGTERM, 0, 200, STEPS),  # mid-training
    (signal.SIGINT, 130, 200, STEPS),
    (signal.SIGTERM, 0, 1, STEPS_EVERY_STEP),  # while checkpoints are being written (one every step)
])
def test_signal_saves_and_resumes_bit_for_bit(tmp_path, straight_params, sig, code, every, steps):
    stopped = tmp_path / "stopped"
    extra = f"training.checkpoint_every={every}"
    proc = subprocess.Popen(_train_cmd(stopped, extra, steps=steps), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_step(stopped, 3, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "Traceback" not in err + out
    assert f"pcomp: stopped by {sig.name} at step" in out
    ckpt = Checkpointer(stopped / "checkpoints", 3)
    latest = ckpt.latest()
    ckpt.close()
    assert latest is not None and 3 <= latest < steps
    # the resume runs in this process (the same run, config and code as the command line's)
    train(TINY.override(f"training.steps={steps}", "training.log_every=1", "data.eval_max_bytes=2000",
                        f"training.workdir={stopped}", extra))
    for x, y in zip(straight_params(steps), _params(stopped)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_second_signal_exits_at_once_and_keeps_the_last_checkpoint(tmp_path):
    workdir = tmp_path / "w"
    proc = subprocess.Popen(_train_cmd(workdir, "training.checkpoint_every=1"), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(workdir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    first = ""  # wait until the first signal was handled (signals sent back to back may coalesce)
    while "SIGTERM: finishing this step" not in first:
        line = proc.stderr.readline()
        assert line, "the run ended without handling SIGTERM"
        first += line
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, first + err
    assert "Traceback" not in err
    for leaf in _params(workdir):  # the latest finished checkpoint restores
        assert np.isfinite(leaf).all()


# --- issue #20: damaged checkpoints, corrupt shards, a full disk ----------------------------------------------
def _damage(run: Path, how: str) -> None:
    state = run / "checkpoints" / "20" / "state"
    if how == "manifest":
        (state / "manifest.ocdbt").unlink()
    elif how == "data-files":
        for d in state.rglob("d"):
            for f in d.iterdir():
                f.unlink()
    else:  # config.json edited to another model width
        cfg = json.loads((run / "config.json").read_text())
        cfg["model"]["d_model"] = 96
        (run / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("how", ["manifest", "data-files", "d_model"])
def test_damaged_checkpoint_is_one_line_naming_the_step_and_cause(m1_run, tmp_path, capsys, how):
    """eval / generate on a run whose latest checkpoint is damaged: one line naming step 20, the cause and
    (for missing files) the older checkpoint; they used to print 146-161 lines of orbax traceback."""
    from pcomp.cli import main

    run = tmp_path / "run"
    shutil.copytree(m1_run, run)
    _damage(run, how)
    for argv in (["generate", "--checkpoint", str(run), "--prompt", "The ", "--max-tokens", "3"],
                 ["eval", "--checkpoint", str(run), "--max-bytes", "200"]):
        assert main(argv) == 2
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
        assert len(err) == 1, err
        assert err[0].startswith(f"pcomp: error: cannot restore checkpoint step 20 from {run / 'checkpoints'}: "), err
        if how == "d_model":
            assert "do not fit the model the run's config.json describes" in err[0] and "stored shape" in err[0]
        else:
            assert "damaged or incomplete" in err[0]
            assert f"the older checkpoint step 10 is on disk: to use it, move {run / 'checkpoints' / '20'} out" in err[0]
    if how != "d_model":  # the advice works: without step 20, step 10 loads
        shutil.move(run / "checkpoints" / "20", tmp_path / "step20")
        assert load_trained(run).step == 10


@pytest.mark.slow
def test_damaged_checkpoint_in_a_subprocess_prints_no_traceback(m1_run, tmp_path):
    """The whole stderr of `pcomp generate` is the one line (orbax's background echoes included)."""
    run = tmp_path / "run"
    shutil.copytree(m1_run, run)
    _damage(run, "manifest")
    proc = subprocess.run([sys.executable, "-m", "pcomp", "generate", "--checkpoint", str(run), "--prompt", "a"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("pcomp: error: cannot restore checkpoint step 20")


@pytest.mark.slow
def test_train_on_a_damaged_latest_checkpoint_is_one_line(m1_run, tmp_path, capsys):
    from pcomp.cli import main

    run = tmp_path / "run"
    shutil.copytree(m1_run, run)
    _damage(run, "manifest")
    assert main(["train", "--config", str(run / "config.json"), f"training.workdir={run}"]) == 2
    err = capsys.readouterr().err
    assert "pcomp: error: cannot restore checkpoint step 20" in err and "step 10 is on disk" in err
    assert "Traceback" not in err


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount tmpfs file systems of a given size under tmp_path (root only; skipped elsewhere)."""
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        d = tmp_path / f"fs-{size}"
        d.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["400k", "4m"])
def test_full_disk_names_the_failed_and_the_last_complete_checkpoint(small_tmpfs, size):
    """Training on a file system that fills up: one line naming the checkpoint that failed (the one left
    half-written on disk) and the last complete one; no traceback, no 'done', no summary.json. (400k
    used to print 36 'Event loop is closed' tracebacks and name step 20 for a failed step 10; 4m printed
    'pcomp: done' and wrote summary.json, then named step 20 for a failed step 30.)"""
    workdir = small_tmpfs(size) / "run"
    proc = subprocess.run(_train_cmd(workdir, "training.checkpoint_every=10", steps=40), env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("pcomp: error: "), err
    assert "pcomp: done" not in proc.stdout and not (workdir / "summary.json").exists()
    names = [p.name for p in (workdir / "checkpoints").iterdir()]
    half = [int(n.split(".")[0]) for n in names if not n.isdigit()]
    complete = sorted(int(n) for n in names if n.isdigit())
    assert len(half) <= 1, names
    if half:  # the checkpoint the disk filled up in
        assert f"cannot write checkpoint step {half[0]} to {workdir / 'checkpoints'}: no space left on device" in err[0]
    else:  # the metrics met the full disk first (before a checkpoint was being written)
        assert f"{workdir}" in err[0] and "no space left on device" in err[0], err[0]
    assert err[0].endswith(f"; the last complete checkpoint is step {complete[-1]}" if complete
                           else "; no checkpoint is complete"), err[0]
