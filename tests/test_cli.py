"""The `pcomp` CLI: bad input is one clear line and exit status 2; the happy path works end to end."""

from __future__ import annotations

import re

import pytest

from pcomp.cli import main
from pcomp.config import Config
from pcomp.errors import ConfigError

FAST = ["training.progress=false", "data.seq_len=32", "training.steps=3", "training.log_every=1"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--config", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["train", "--config", "test-tiny", "training.no_such_key=1"], "training.no_such_key"),
        (["train", "--config", "test-tiny", "nosection.lr=1"], "nosection.lr"),
        (["train", "--config", "test-tiny", "training.lr=fast"], "bad value 'fast' for training.lr"),
        (["train", "--config", "test-tiny", "model=no-such-model"], "unknown model preset 'no-such-model'"),
        (["train", "--config", "missing.json"], "missing.json"),
        (["train", "--config", "test-tiny", "data.source=/no/such/corpus.txt"], "/no/such/corpus.txt"),
        (["train", "--config", "test-tiny", "data.source=tfds:no_such_dataset_xyz"], "no_such_dataset_xyz"),
        (["train", "--config", "test-tiny", "mesh.fsdp=3"], "does not divide the 8 available devices"),
        (["train", "--config", "test-tiny", "mesh.data=3"], "does not match the 8 available devices"),
        (["train", "--config", "test-tiny", "training.patch_size=0"], "training.patch_size=0"),
        (["train", "--config", "test-tiny", "data.seq_len=4096"], "exceeds model.max_seq_len"),
        (["eval", "--checkpoint", "/no/such/run"], "/no/such/run"),
        (["generate", "--checkpoint", "/no/such/run", "--prompt", "x"], "/no/such/run"),
    ],
)
def test_bad_input_is_a_clear_error(argv, needle, capsys, tmp_path):
    argv = argv + [f"training.workdir={tmp_path}"] if argv[0] == "train" else argv
    if argv[1:3] == ["--config", "missing.json"]:
        argv = ["train", "--config", str(tmp_path / "missing.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pcomp: error: ")
    assert len(err.strip().splitlines()) == 1
    assert needle in err


def test_patch_fraction_outside_unit_interval_is_rejected():
    with pytest.raises(ConfigError, match="patch_fraction=1.5"):
        Config.preset("test-tiny").override("training.patch_fraction=1.5").validate()


def test_train_eval_generate_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "test-tiny", *FAST, f"training.workdir={run}"]) == 0
    assert (run / "config.json").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "metrics.jsonl").is_file() and any((run / "tensorboard").iterdir())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--max-bytes", "3000"]) == 0
    out = capsys.readouterr().out
    bpb = float(re.search(r"bits/byte (\d+\.\d+)", out).group(1))
    assert 0 < bpb < 9  # barely trained byte model: between perfect and log2(258) * tokens/byte
    assert main(["generate", "--checkpoint", str(run), "--prompt", "Hello", "--max-tokens", "12"]) == 0
    assert capsys.readouterr().out.startswith("Hello")
    # config.json of a run is itself a valid --config
    assert Config.load(str(run / "config.json")).model.vocab_size == 258
