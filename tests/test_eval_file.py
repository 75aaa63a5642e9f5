"""`pcomp eval --data`: a file the run never saw is scored whole, several files (or a directory) one line
each and a total, while the run's own source keeps its train/held-out cut. Every bits/byte is checked
against an independent scoring written here: the token stream built by hand, windows of seq_len with
stride seq_len - 1 in a plain loop, log-softmax of the model's logits in float64."""

from __future__ import annotations

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pcomp.cli import main
from pcomp.data.sources import load_documents
from pcomp.train.load import load_trained

pytestmark = pytest.mark.slow  # the session's trained M1 (conftest.py `m1_run`)

LINE = re.compile(r"^(.+) \[(.+)\]: (\d+) bytes, (\d+) tokens, loss (\d+\.\d+) nats/token, bits/byte (\d+\.\d+)$")
PRINTED = 5e-5 + 1e-6  # 4 printed decimals


@pytest.fixture(scope="module")
def run(m1_run):
    return load_trained(m1_run)


@pytest.fixture(scope="module")
def forward(run):
    return jax.jit(lambda params, ids: nnx.merge(run.graphdef, params)(ids))


def naive_bits(run, forward, docs: list[bytes]) -> tuple[float, int]:
    """(total bits, scored tokens) of `docs` under the run: each document as [BOS] bytes [EOS] (the byte
    tokenizer: id = byte + its offset, found by encoding each byte value alone), the documents one
    stream, every token but the first predicted once. Window k predicts targets stream[1 + k(L-1) :
    1 + (k+1)(L-1)]: from [BOS] + those targets when the model was trained with BOS first, else from the
    stream itself starting one token earlier."""
    tok = run.tokenizer
    byte_id = [int(tok.encode(bytes([b]))[0]) for b in range(256)]
    stream = []
    for doc in docs:
        stream += [tok.bos_id] + [byte_id[b] for b in doc] + [tok.eos_id]
    stride = run.cfg.data.seq_len - 1
    total, scored = 0.0, 0
    for start in range(1, len(stream), stride):
        targets = stream[start : start + stride]
        context = [tok.bos_id] + targets if run.cfg.data.bos_first else stream[start - 1 : start + stride]
        logits = np.asarray(forward(run.params, jnp.asarray([context[:-1]], jnp.int32))[0], np.float64)
        for pos, target in enumerate(targets):
            row = logits[pos] - logits[pos].max()
            total += (np.log(np.exp(row).sum()) - row[target]) / np.log(2)
            scored += 1
    return total, scored


def naive_unigram_bits(run, docs: list[bytes], train_docs) -> float:
    """Bits of `docs`' scored targets (bytes, then EOS, per document) under add-one-smoothed counts of
    the train documents' bytes (a dict count: the byte tokenizer has an id per byte value)."""
    tok, vocab = run.tokenizer, run.cfg.model.vocab_size
    counts: dict[int, int] = {}
    n = 0
    for doc in train_docs:
        for b, c in zip(*np.unique(np.frombuffer(doc, np.uint8), return_counts=True)):
            counts[int(b)] = counts.get(int(b), 0) + int(c)
            n += int(c)
    byte_id = {int(tok.encode(bytes([b]))[0]): b for b in range(256)}
    targets = []
    for i, doc in enumerate(docs):
        targets += ([tok.bos_id] if i else []) + [int(t) for t in tok.encode(doc)] + [tok.eos_id]
    bits = 0.0
    for t in targets:
        count = counts.get(byte_id[t], 0) if t in byte_id else 0  # BOS / EOS never occur in train text
        bits -= np.log2((count + 1) / (n + vocab))
    return bits


def text(n: int, seed: int) -> bytes:
    """n bytes of English-like text with a 2-byte UTF-8 character now and then."""
    rng = np.random.default_rng(seed)
    words = ["the", "model", "reads", "bytes", "and", "a", "file", "of", "text", "naïve", "window", "scores"]
    out = b""
    while len(out) < n:
        out += (" ".join(rng.choice(words, 12)) + ".\n").encode()
    return out[:n].decode("utf-8", "ignore").encode()  # ends on a whole character


def eval_lines(capsys, argv) -> list[tuple]:
    assert main(["eval", *argv]) == 0
    out = capsys.readouterr().out
    lines = [LINE.match(line) for line in out.splitlines()]
    return [(m[1], m[2], int(m[3]), int(m[4]), float(m[6])) for m in lines if m], out


def prefix(docs, max_bytes: int) -> list[bytes]:
    """Whole documents until `max_bytes`, the last one cut before any character it would split."""
    out, n = [], 0
    for doc in docs:
        if n + len(doc) > max_bytes:
            doc = doc[: max_bytes - n].decode("utf-8", "ignore").encode()  # drops a split character's start
            if doc:
                out.append(doc)
            break
        out.append(doc)
        n += len(doc)
    return out


def test_a_file_the_run_never_saw_is_scored_whole(run, forward, m1_run, tmp_path, capsys):
    f = tmp_path / "some.txt"
    f.write_bytes(text(3000, 0))
    size = len(f.read_bytes())
    lines, out = eval_lines(capsys, ["--checkpoint", str(m1_run), "--data", str(f), "--batch-size", "4"])
    bits, scored = naive_bits(run, forward, [f.read_bytes()])
    assert lines == [(str(f), "whole file", size, scored, pytest.approx(bits / size, abs=PRINTED))]
    assert scored == size + 1  # every byte and the EOS; BOS is context only
    # the unigram reference is the run's own train split (the embedded corpus, cut at its eval_fraction),
    # not the scored file
    train = load_documents("embedded", "train", eval_fraction=run.cfg.data.eval_fraction)
    unigram = naive_unigram_bits(run, [f.read_bytes()], train)
    m = re.search(r"unigram (\d+\.\d+), train-split counts", out)
    assert float(m[1]) == pytest.approx(unigram / size, abs=PRINTED)
    in_sample = naive_unigram_bits(run, [f.read_bytes()], [f.read_bytes()]) / size
    assert abs(in_sample - unigram / size) > 1e-3  # fitting on the file itself would read otherwise


def test_split_on_another_file_applies_the_runs_cut_only_when_asked(run, forward, m1_run, tmp_path, capsys):
    f = tmp_path / "some.txt"
    f.write_bytes(text(3000, 1))
    data = f.read_bytes()
    fraction = run.cfg.data.eval_fraction
    for split, part in (("eval", "held-out part"), ("train", "train part")):
        docs = list(load_documents(str(f), split, eval_fraction=fraction))
        lines, _ = eval_lines(capsys, ["--checkpoint", str(m1_run), "--data", str(f), "--split", split,
                                       "--max-bytes", "1000"])
        scored = prefix(docs, 1000)
        bits, n_tokens = naive_bits(run, forward, scored)
        n_bytes = sum(map(len, scored))
        assert lines == [(str(f), part, n_bytes, n_tokens, pytest.approx(bits / n_bytes, abs=PRINTED))]
    held = b"".join(load_documents(str(f), "eval", eval_fraction=fraction))
    assert 0 < len(held) < len(data) and data.endswith(held)  # the cut really is a part of the file


def test_the_runs_own_source_keeps_its_split(run, forward, m1_run, capsys):
    assert run.cfg.data.source == "embedded"
    fraction = run.cfg.data.eval_fraction
    cases = [([], "eval"), (["--data", "embedded"], "eval"), (["--data", "embedded", "--split", "train"], "train")]
    for flags, split in cases:
        lines, _ = eval_lines(capsys, ["--checkpoint", str(m1_run), *flags, "--max-bytes", "1500"])
        docs = prefix(load_documents("embedded", split, eval_fraction=fraction), 1500)
        bits, n_tokens = naive_bits(run, forward, docs)
        n_bytes = sum(map(len, docs))
        part = {"eval": "held-out part", "train": "train part"}[split]
        assert lines == [("embedded", part, n_bytes, n_tokens, pytest.approx(bits / n_bytes, abs=PRINTED))]


def test_several_files_and_a_directory_give_a_line_each_and_a_total(run, forward, m1_run, tmp_path, capsys):
    d = tmp_path / "testset"
    (d / "sub").mkdir(parents=True)
    a, b = d / "a.txt", d / "sub" / "b.txt"
    a.write_bytes(text(1200, 2))
    b.write_bytes(text(700, 3))
    (d / "empty.txt").write_bytes(b"")  # no text: no line, as the directory loader drops it
    (d / ".hidden").write_bytes(b"not a document")
    bits = {p: naive_bits(run, forward, [p.read_bytes()]) for p in (a, b)}
    sizes = {p: len(p.read_bytes()) for p in (a, b)}
    expected = [(str(p), "whole file", sizes[p], bits[p][1], pytest.approx(bits[p][0] / sizes[p], abs=PRINTED))
                for p in (a, b)]
    n = sum(sizes.values())
    total = ("total", "2 texts", n, sum(t for _, t in bits.values()),
             pytest.approx(sum(x for x, _ in bits.values()) / n, abs=PRINTED))
    # a data.key=value override after --data is an override, not a file
    lines, _ = eval_lines(capsys, ["--checkpoint", str(m1_run), "--data", str(a), str(b), "data.text_field=text"])
    assert lines == [*expected, total]
    lines, _ = eval_lines(capsys, ["--checkpoint", str(m1_run), "--data", str(d)])
    assert lines == [*expected, total]
    # --max-bytes caps each file
    lines, _ = eval_lines(capsys, ["--checkpoint", str(m1_run), "--data", str(d), "--max-bytes", "1000"])
    [a_cut] = prefix([a.read_bytes()], 1000)
    cut, cut_tokens = naive_bits(run, forward, [a_cut])
    assert [line[:4] for line in lines] == [(str(a), "whole file", len(a_cut), cut_tokens), expected[1][:4],
                                            ("total", "2 texts", len(a_cut) + sizes[b], cut_tokens + bits[b][1])]
    assert lines[0][4] == pytest.approx(cut / len(a_cut), abs=PRINTED)


def test_a_run_away_from_its_training_data_still_scores_a_file(m1_run, tmp_path, capsys):
    """The unigram reference needs the run's train split; without it the bits/byte are printed anyway,
    the reference is n/a after one warning line."""
    moved = tmp_path / "moved"
    shutil.copytree(m1_run, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["data"]["source"] = str(tmp_path / "gone.txt")
    (moved / "config.json").write_text(json.dumps(cfg))
    f = tmp_path / "some.txt"
    f.write_bytes(text(500, 4))
    lines, out = eval_lines(capsys, ["--checkpoint", str(m1_run), "--data", str(f)])
    moved_lines, moved_out = eval_lines(capsys, ["--checkpoint", str(moved), "--data", str(f)])
    assert moved_lines == lines and "unigram n/a" in moved_out and "unigram n/a" not in out
    assert main(["eval", "--checkpoint", str(moved), "--data", str(f)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pcomp: warning: no unigram reference") and "gone.txt" in err[0]


def test_bad_data_is_one_error_line(m1_run, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for data, needle in ((tmp_path / "missing.txt", "does not exist"), (empty, "is empty")):
        assert main(["eval", "--checkpoint", str(m1_run), "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pcomp: error: data") and needle in err and str(data) in err, err
        assert len(err.strip().splitlines()) == 1
