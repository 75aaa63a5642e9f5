"""The `pcomp` CLI: bad input is one clear line and exit status 2; the happy path works end to end."""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from pcomp.cli import main
from pcomp.config import Config
from pcomp.errors import ConfigError
from pcomp.models.generate import generate
from pcomp.train.load import load_trained

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


@pytest.mark.slow
def test_train_eval_generate_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "test-tiny", *FAST, "data.eval_max_bytes=3000", f"training.workdir={run}"]) == 0
    assert (run / "config.json").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "metrics.jsonl").is_file() and any((run / "tensorboard").iterdir())
    capsys.readouterr()
    # `pcomp eval` on one device = the trainer's own held-out evaluation on the 8-device mesh, to the
    # printed precision (4 decimals; float32 sums in another order differ by ~1e-7 relative)
    assert main(["eval", "--checkpoint", str(run), "--max-bytes", "3000"]) == 0
    out = capsys.readouterr().out
    ev = json.loads((run / "summary.json").read_text())["eval"]
    m = re.search(r"(\d+) bytes, (\d+(?:\.0)?) tokens, loss (\d+\.\d+) nats/token, bits/byte (\d+\.\d+)", out)
    assert (int(m.group(1)), float(m.group(2))) == (ev["eval/bytes"], ev["eval/tokens"])
    assert float(m.group(3)) == pytest.approx(ev["eval/loss"], abs=5e-5 + 1e-6)
    assert float(m.group(4)) == pytest.approx(ev["eval/bits_per_byte"], abs=5e-5 + 1e-6)
    # the generated text after the (echoed) prompt is the model's own continuation: greedy = an argmax
    # loop over the full forward pass (no KV cache); sampled = pcomp.models.generate with the same seed
    trained = load_trained(run)
    tok, model = trained.tokenizer, trained.model()
    prompt = [tok.bos_id, *tok.encode(b"Hello")]
    greedy = list(prompt)
    for _ in range(12):  # causal: zero padding after the last real position leaves its logits alone
        padded = jnp.asarray([greedy + [0] * (len(prompt) + 12 - len(greedy))], jnp.int32)
        nxt = int(np.argmax(np.asarray(model(padded))[0, len(greedy) - 1]))
        if nxt == tok.eos_id:
            break
        greedy.append(nxt)
    sampled = generate(trained.graphdef, trained.params, prompt, max_new_tokens=12,
                       max_len=trained.cfg.model.max_seq_len, temperature=0.8, top_k=40, seed=3, stop_id=tok.eos_id)
    for flags, tokens in ((["--temperature", "0"], greedy[len(prompt):]), (["--seed", "3"], sampled)):
        assert main(["generate", "--checkpoint", str(run), "--prompt", "Hello", "--max-tokens", "12", *flags]) == 0
        assert capsys.readouterr().out == "Hello" + tok.decode(tokens).decode("utf-8", errors="replace") + "\n"
    # config.json of a run is itself a valid --config
    assert Config.load(str(run / "config.json")).model.vocab_size == 258
