"""Ahead-of-time compilation and device memory: the trainer compiles every stage's step before step 1,
logs compile seconds and per-device memory, and stops a config that cannot fit with one line before any
data is read; the memory accounting; the vocabulary known before reading; checkpoints of the old
(per-layer) format are a one-line CheckpointError."""

from __future__ import annotations

import json
import re

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pcomp.cli import main
from pcomp.config import Config, DataConfig
from pcomp.data import run_data
from pcomp.data.prepared import DATASET_FILE
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.errors import CheckpointError, ConfigError
from pcomp.models.transformer import count_params
from pcomp.train import checkpoint, memory
from pcomp.train.checkpoint import CHECKPOINT_FORMAT, Checkpointer
from pcomp.train.load import load_trained
from pcomp.train.memory import MemoryUse, check_fits, device_memory_bytes

FAST = ["training.progress=false", "data.seq_len=32", "training.steps=2", "training.log_every=1"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("pcomp: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# --- memory accounting ---------------------------------------------------------------------------------
def test_check_fits_names_the_needed_and_the_available_bytes():
    use = MemoryUse(argument_bytes=1000, output_bytes=800, temp_bytes=500, alias_bytes=700)
    assert use.peak_bytes == 1000 + 800 - 700 + 500  # donated outputs counted once
    check_fits(use, 1600, "the step")  # fits exactly
    check_fits(use, None, "the step")  # the device does not say: nothing to check
    check_fits(None, 10, "the step")  # no analysis: nothing to check
    with pytest.raises(ConfigError) as info:
        check_fits(use, 1599, "the token step")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("the token step needs 1,600 bytes (1.56 KiB) per device at its peak")
    assert "the device has 1,599 bytes" in msg and "model.remat=full" in msg


def test_memory_use_of_a_compiled_function():
    """XLA's accounting of a small function: two float32 [64, 64] arguments, outputs [64, 64] and [],
    the first argument donated to the [64, 64] output."""
    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    compiled = jax.jit(lambda a, b: (a @ b, a.sum()), donate_argnums=0).lower(x, x).compile()
    use = MemoryUse.of(compiled)
    assert use.argument_bytes == 2 * 64 * 64 * 4
    assert 0 <= use.output_bytes - (64 * 64 * 4 + 4) <= 64  # + the output tuple's table of pointers
    assert use.alias_bytes == 64 * 64 * 4
    assert use.peak_bytes == use.argument_bytes + use.output_bytes - use.alias_bytes + use.temp_bytes


class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_device_memory_bytes_reads_the_allocator_limit():
    assert device_memory_bytes(_Device({"bytes_limit": 123_456, "bytes_in_use": 7})) == 123_456
    assert device_memory_bytes(_Device(None)) is None  # CPU
    assert device_memory_bytes(_Device({"bytes_in_use": 7})) is None


# --- the vocabulary before reading the data --------------------------------------------------------------
def test_vocab_size_before_reading(tmp_path):
    none = tmp_path / "no-tokenizer"
    assert run_data.vocab_size_before_reading(DataConfig(), none) == ByteTokenizer().vocab_size == 258
    sp = DataConfig(tokenizer="sentencepiece", vocab_size=1000)
    assert run_data.vocab_size_before_reading(sp, none) == 1000  # at most what training asks for
    saved = tmp_path / "saved"
    ByteTokenizer(specials=False).save(saved)  # a resumed run keeps its own tokenizer
    assert run_data.vocab_size_before_reading(sp, saved) == 256
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / DATASET_FILE).write_text(json.dumps({"seq_len": 8, "vocab_size": 65536}))
    assert run_data.vocab_size_before_reading(DataConfig(source=str(prepared)), none) == 65536


# --- the trainer: compile before step 1, fail before reading data -----------------------------------------
@pytest.mark.slow
def test_a_config_that_cannot_fit_fails_before_reading_any_data(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device=None: 10_000)

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(run_data.RunData, "load", no_data)
    assert main(["train", "--config", "test-tiny", *FAST, f"training.workdir={run}"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("pcomp: error: the token step of model test-tiny (batch 8 x 32 tokens, model.remat=none) "
                          "needs ") and len(err.splitlines()) == 1, err
    needed = int(re.search(r"needs ([\d,]+) bytes", err).group(1).replace(",", ""))
    assert "the device has 10,000 bytes" in err
    # at least the replicated parameters and their two Adam moments (data-parallel mesh of 8)
    cfg = Config.preset("test-tiny").model
    assert needed >= 3 * 4 * count_params(cfg)
    assert "compiled the token step" in captured.out  # the log line came first
    assert not (run / "config.json").exists() and not (run / "tokenizer").exists()


@pytest.mark.slow
def test_every_stage_is_compiled_and_logged_before_step_1(tmp_path, monkeypatch, capsys):
    """A two-stage (patch, then token) run compiles both steps up front and logs each against a
    (simulated) 16 GiB device; then it trains as usual."""
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device=None: 16 << 30)
    run = tmp_path / "run"
    argv = ["train", "--config", "test-tiny", *FAST, "training.steps=3", "training.patch_size=2",
            "training.patch_fraction=0.5", f"training.workdir={run}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("pcomp: compiled the ")]
    assert len(lines) == 2, out
    assert lines[0].startswith("pcomp: compiled the patch step (test-tiny, batch 8 x 64 tokens, model.remat=none) in ")
    assert lines[1].startswith("pcomp: compiled the token step (test-tiny, batch 8 x 32 tokens, model.remat=none) in ")
    for line in lines:
        assert re.search(r"temporaries [\d.]+ [KMG]?i?B, peak [\d.]+ [KMG]iB per device of 16.00 GiB on cpu$", line), line
    assert out.index("compiled the token step") < out.index("pcomp: test-tiny model, 2 stage(s)")
    assert json.loads((run / "summary.json").read_text())["eval"]["eval/bits_per_byte"] > 0


# --- checkpoint format ---------------------------------------------------------------------------------------
def _iterator():
    return iter(grain.MapDataset.range(4).to_iter_dataset())


def test_checkpoints_record_their_format(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1)
    ckpt.save(3, {"w": jnp.arange(4.0)}, _iterator(), {"stage": 0})
    ckpt.wait()
    assert ckpt.restore_meta(3) == {"stage": 0, "format": CHECKPOINT_FORMAT}
    ckpt.close()


def test_a_format_2_checkpoint_restores_without_its_rng_key(tmp_path, monkeypatch):
    # format 2 held an rng key nothing read; format 3 dropped it: a run written before still resumes
    state = {"w": jnp.arange(4.0), "step": jnp.asarray(5, jnp.int32)}
    old = Checkpointer(tmp_path / "ckpt", keep=1)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_FORMAT", 2)
    saved_it = _iterator()
    next(saved_it), next(saved_it)
    old.save(5, {**state, "rng": jax.random.key_data(jax.random.key(0))}, saved_it, {"stage": 0})
    old.close()
    monkeypatch.undo()
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    it = _iterator()
    restored, meta = ckpt.restore(5, abstract, it)
    assert sorted(restored) == ["step", "w"] and meta == {"stage": 0, "format": 2}
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert int(restored["step"]) == 5 and next(it) == 2
    assert sorted(ckpt.restore_params(5, abstract)) == ["step", "w"]
    ckpt.close()


def _old_run(tmp_path):
    """A run directory as the pcomp before nnx.scan wrote it: one parameter set per layer, no format in
    the checkpoint's metadata."""
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.json").write_text(Config.preset("test-tiny").override(f"training.workdir={run}").to_json())
    ByteTokenizer().save(run / "tokenizer")
    layer = {"attn": {"wq": np.zeros((64, 4, 16), np.float32)}, "attn_norm": {"scale": np.ones(64, np.float32)}}
    state = {"params": {"blocks": {"0": layer, "1": layer}, "embed": np.zeros((384, 64), np.float32)},
             "step": np.zeros((), np.int32)}
    mngr = ocp.CheckpointManager(run / "checkpoints", item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(create=True))
    mngr.save(10, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave({"stage": 0, "stage_step": 10})))
    mngr.wait_until_finished()
    mngr.close()
    return run


def test_an_old_format_checkpoint_is_a_one_line_checkpoint_error(tmp_path, capsys):
    run = _old_run(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_trained(run)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"checkpoint step 10 in {run / 'checkpoints'} has format 1 (one set of parameters per layer)" in msg
    assert f"this pcomp reads format {CHECKPOINT_FORMAT}" in msg and "pcomp import-hf" in msg
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "has format 1" in _one_line(capsys)
