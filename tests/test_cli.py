"""The `pcomp` CLI: bad input is one clear line and exit status 2; the happy path works end to end."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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
        pytest.param(["train", "--config", "test-tiny", "data.source=tfds:no_such_dataset_xyz"], "no_such_dataset_xyz",
                     marks=pytest.mark.slow),  # imports tensorflow_datasets (seconds)
        (["train", "--config", "test-tiny", "mesh.fsdp=16"], "does not divide the 8 available devices"),
        (["train", "--config", "test-tiny", "mesh.fsdp=3"], "mesh.fsdp=3 does not divide model.d_model=64"),
        (["train", "--config", "test-tiny", "mesh.data=3"], "does not match the 8 available devices"),
        (["train", "--config", "test-tiny", "training.patch_size=0"], "training.patch_size=0"),
        (["train", "--config", "test-tiny", "data.seq_len=4096"], "exceeds model.max_seq_len"),
        (["eval", "--checkpoint", "/no/such/run"], "/no/such/run"),
        (["generate", "--checkpoint", "/no/such/run", "--prompt", "x"], "/no/such/run"),
        # ranges and types, checked before anything is loaded or compiled
        (["train", "--config", "test-tiny", "model.d_model=-3"], "model.d_model=-3 must be >= 1"),
        (["train", "--config", "test-tiny", "mesh.tensor=8"], "mesh.tensor=8 does not divide model.n_heads=4"),
        (["train", "--config", "test-tiny", "training.lr=nan"], "training.lr=nan must be a finite number > 0"),
        (["train", "--config", "test-tiny", "training.lr=-1"], "training.lr=-1.0 must be a finite number > 0"),
        (["train", "--config", "test-tiny", "training.lr=0"], "training.lr=0.0 must be a finite number > 0"),
        (["train", "--config", "test-tiny", "training.steps=1.5"], "bad value '1.5' for training.steps: expected an"),
        (["eval", "--checkpoint", "/no/such/run", "--batch-size", "0"], "--batch-size 0 must be >= 1"),
        (["eval", "--checkpoint", "/no/such/run", "--batch-size", "-4"], "--batch-size -4 must be >= 1"),
        (["eval", "--checkpoint", "/no/such/run", "--max-bytes", "-1"], "--max-bytes -1 must be >= 0"),
        (["eval", "--checkpoint", "/no/such/run", "--batch-size", "abc"], "--batch-size: invalid int value: 'abc'"),
        (["generate", "--checkpoint", "/no/such/run"], "required: --prompt"),
        (["generate", "--checkpoint", "/r", "--prompt", "x", "--max-tokens", "0"], "--max-tokens 0 must be >= 1"),
        (["generate", "--checkpoint", "/r", "--prompt", "x", "--max-tokens", "-2"], "--max-tokens -2 must be >= 1"),
        (["generate", "--checkpoint", "/r", "--prompt", "x", "--temperature", "-1"], "--temperature -1.0 must be a"),
        (["generate", "--checkpoint", "/r", "--prompt", "x", "--temperature", "nan"], "--temperature nan must be a"),
        (["generate", "--checkpoint", "/r", "--prompt", "x", "--temperature", "inf"], "--temperature inf must be a"),
        (["generate", "--checkpoint", "/r", "--prompt", "x", "--top-k", "-1"], "--top-k -1 must be >= 0"),
        (["generate", "--checkpoint", "/r", "--prompt", "x", "--seed", "-1"], "--seed -1 must be in [0, 2**32)"),
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
    tok = trained.tokenizer
    forward = jax.jit(lambda params, ids: nnx.merge(trained.graphdef, params)(ids))  # one compile
    prompt = [tok.bos_id, *tok.encode(b"Hello")]
    greedy = list(prompt)
    for _ in range(12):  # causal: zero padding after the last real position leaves its logits alone
        padded = jnp.asarray([greedy + [0] * (len(prompt) + 12 - len(greedy))], jnp.int32)
        nxt = int(np.argmax(np.asarray(forward(trained.params, padded))[0, len(greedy) - 1]))
        if nxt == tok.eos_id:
            break
        greedy.append(nxt)
    sampled = generate(trained.graphdef, trained.params, prompt, max_new_tokens=12,
                       max_len=trained.cfg.model.max_seq_len, temperature=0.8, top_k=40, seed=3, stop_id=tok.eos_id)
    for flags, tokens in ((["--temperature", "0"], greedy[len(prompt):]), (["--seed", "3"], sampled)):
        assert main(["generate", "--checkpoint", str(run), "--prompt", "Hello", "--max-tokens", "12", *flags]) == 0
        assert capsys.readouterr().out == "Hello" + tok.decode(tokens).decode("utf-8", errors="replace") + "\n"
    # a prompt longer than the context is an error naming both lengths (200 bytes + BOS)
    assert main(["generate", "--checkpoint", str(run), "--prompt", "x" * 200]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pcomp: error: --prompt is 201 tokens including BOS but the model's context is 128 tokens")
    assert len(err.strip().splitlines()) == 1
    # config.json of a run is itself a valid --config
    assert Config.load(str(run / "config.json")).model.vocab_size == 258


# --- data and work-directory problems: one line naming the path ------------------------------------


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("pcomp: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_empty_data_file_says_so(tmp_path, capsys):
    data = tmp_path / "empty.txt"
    data.write_bytes(b"")
    argv = ["train", "--config", "test-tiny", *FAST, f"data.source={data}", f"training.workdir={tmp_path / 'w'}"]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "compiled" not in out.out  # reported before the step is compiled
    assert out.err.strip() == f"pcomp: error: data file {data} is empty; expected text" and "Traceback" not in out.err


def test_data_file_too_small_for_the_held_out_split_gives_the_sizes(tmp_path, capsys):
    data = tmp_path / "tiny.txt"
    data.write_bytes(b"abc\n")  # 10% of 4 bytes rounds to 0 held-out bytes
    argv = ["train", "--config", "test-tiny", *FAST, f"data.source={data}", f"training.workdir={tmp_path / 'w'}"]
    assert main(argv) == 2
    err = _one_line(capsys)
    assert f"data source {data} (4 bytes) is too small to hold out eval_fraction=0.1" in err
    assert "4 bytes to train on and 0 held out" in err
    assert data.read_bytes() == b"abc\n"


def test_work_directory_that_is_a_file(tmp_path, capsys):
    work = tmp_path / "work"
    work.write_bytes(b"precious")
    assert main(["train", "--config", "test-tiny", *FAST, f"training.workdir={work}"]) == 2
    assert _one_line(capsys) == f"pcomp: error: cannot create the work directory {work}: it is a file; expected a directory"
    assert work.read_bytes() == b"precious"


def test_os_error_is_one_line_naming_the_path(tmp_path):
    import errno

    from pcomp.errors import PathError, os_error

    f = tmp_path / "f"
    f.write_text("x")
    cases = [
        (None, FileExistsError(errno.EEXIST, "File exists", str(f)), f"{f}: it is a file; expected a directory"),
        (f, FileExistsError(errno.EEXIST, "File exists"), f"{f}: it is a file; expected a directory"),
        (None, FileExistsError(errno.EEXIST, "File exists", str(tmp_path)), f"{tmp_path}: it already exists"),
        (f, OSError(errno.ENOSPC, "No space left on device"), f"{f}: no space left on device"),
        (f, PermissionError(errno.EACCES, "Permission denied", "/x"), f"{f} -> /x: permission denied"),
        (None, OSError(errno.ENOTDIR, "Not a directory", str(f / "sub")),
         f"{f / 'sub'}: a part of the path is a file, not a directory"),
        (f, OSError(errno.EIO, "Input/output\nerror"), f"{f}: Input/output error"),
        (None, OSError("no errno at all"), "(unknown path): no errno at all"),
    ]
    for path, e, expected in cases:
        err = os_error(path, e)
        assert isinstance(err, PathError) and str(err) == expected
    err = os_error(None, OSError(errno.ENOENT, "No such file", "/a/b"), "create the work directory")
    assert str(err) == "cannot create the work directory /a/b: no such file or directory"
    # the CLI formats any OSError that reaches it the same way
    real = None
    try:
        (f / "sub").mkdir(parents=True)
    except OSError as e:
        real = os_error(None, e)
    assert real is not None and str(real).startswith(str(f)) and "\n" not in str(real)


# --- generate: validation and the sliding context window ------------------------------------------


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(max_new_tokens=0), "max_new_tokens=0 must be >= 1"),
        (dict(temperature=-0.5), "temperature=-0.5 must be a finite number >= 0"),
        (dict(temperature=float("nan")), "temperature=nan"),
        (dict(top_k=-1), "top_k=-1 must be >= 0"),
        (dict(seed=2**32), "seed=4294967296 must be in [0, 2**32)"),
        (dict(prompt_ids=[]), "the prompt is empty"),
        (dict(prompt_ids=list(range(9))), "the prompt is 9 tokens but the model's context is 8 tokens"),
    ],
)
def test_generate_rejects_bad_arguments(kw, needle):
    from pcomp.models.generate import generate

    args = dict(prompt_ids=[1, 2], max_new_tokens=4, max_len=8, temperature=0.0, top_k=0, seed=0) | kw
    with pytest.raises(ConfigError, match=re.escape(needle)):
        generate(None, None, args.pop("prompt_ids"), **args)


@pytest.fixture(scope="module")
def small_model():
    """A 1-layer model with random (sharp) weights and an 8-token context, on one device."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from pcomp.config import ModelConfig
    from pcomp.train.step import abstract_model

    cfg = ModelConfig(vocab_size=23, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=8, attention="blocked")
    graphdef, abstract = abstract_model(dataclasses.replace(cfg))
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.5, a.shape).astype(np.float32)), abstract)
    return graphdef, params


def _greedy_reference(graphdef, params, prompt, n_new, max_len, bos):
    """Naive greedy decoding: a full forward pass over the current window for every token; the window
    is the whole sequence until it would pass max_len, then BOS (if the prompt starts with it) and the
    last max_len // 2 - 1 (with BOS) or max_len // 2 (without) tokens."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    # causal: the logits at position i do not depend on the padding after it (one compile for all lengths)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    vocab = nnx.merge(graphdef, params).cfg.vocab_size
    seq, window = list(prompt), list(prompt)
    head = [prompt[0]] if bos is not None and prompt[0] == bos else []
    keep = max_len // 2
    while len(seq) - len(prompt) < n_new:
        padded = np.zeros((1, max_len), np.int32)
        padded[0, : len(window)] = window
        logits = np.asarray(forward(params, jnp.asarray(padded)))[0, len(window) - 1, :vocab]
        token = int(np.argmax(logits))
        seq.append(token)
        window.append(token)
        if len(window) > max_len:
            window = head + seq[len(seq) - (keep - len(head)):]
    return seq[len(prompt):]


@pytest.mark.slow
@pytest.mark.parametrize("bos", [None, 22])
def test_generate_past_the_context_slides_the_window(small_model, bos):
    from pcomp.models.generate import generate

    graphdef, params = small_model
    prompt = [22, 5, 9] if bos is not None else [5, 9, 13]
    expected = _greedy_reference(graphdef, params, prompt, 21, 8, bos)
    out = generate(graphdef, params, prompt, max_new_tokens=21, max_len=8, temperature=0.0, top_k=0, bos_id=bos)
    assert out.tolist() == expected  # 21 tokens from an 8-token context: three slides
    assert len(set(expected)) > 1
    # stop_id ends generation before the first occurrence of that token
    stop = expected[6]
    out = generate(graphdef, params, prompt, max_new_tokens=21, max_len=8, temperature=0.0, top_k=0, bos_id=bos,
                   stop_id=stop)
    assert out.tolist() == expected[: expected.index(stop)]
