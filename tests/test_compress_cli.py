"""`pcomp compress`, `pcomp decompress` and `pcomp prepare`, run in-process through `pcomp.cli.main`.

Bad input of any kind must end in exit status 2 with one line `pcomp: error: ...` naming the
problem, and must never write (or leave behind) the output file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from pcomp.cli import main
from pcomp.compress import fileformat
from pcomp.config import Config
from pcomp.data.embedded import embedded_documents
from pcomp.data.prepared import PreparedDataset
from pcomp.data.sources import load_documents
from pcomp.data.tokenizers import load_tokenizer

M1_BATCH = "16"  # M1 rows per step: small, so CPU steps are cheap
INVALID_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\xed\xa0\x80\xc0\xaf\x80"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def other_m1_run(m1_run, tmp_path_factory):
    """Another M1: the same run as of its step-10 checkpoint (same config, other parameters)."""
    other = tmp_path_factory.mktemp("other-m1") / "run"
    shutil.copytree(m1_run, other)
    shutil.rmtree(other / "checkpoints" / "20")
    return other


@pytest.fixture(scope="module")
def payload():
    """A few KB of text with invalid UTF-8 inside and at the end."""
    text = b"".join(embedded_documents()[5:7])[:2500]
    return text[:1200] + INVALID_UTF8 + text[1200:] + b"\x00\x00\xff"


@pytest.fixture(scope="module")
def compressed(m1_run, payload, tmp_path_factory):
    """(path of the original, path of its compressed file made with b=16 N=16)."""
    d = tmp_path_factory.mktemp("compressed")
    src, dst = d / "input.bin", d / "input.pcomp"
    src.write_bytes(payload)
    assert main(["compress", "--m1", str(m1_run), "--batch", M1_BATCH, "--segment-bytes", "256", str(src),
                 str(dst)]) == 0
    return src, dst


PROGRESS_BAR = re.compile(r"^(de)?compress: ")  # tqdm progress output (opened before some checks run)


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("pcomp: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def no_output(out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(out.name + "*")), "a partial output file was left behind"


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("b, n", [(16, 16), (24, 8)])
def test_compress_then_decompress(m1_run, payload, tmp_path, capsys, b, n):
    src, comp, back = tmp_path / "in.txt", tmp_path / "in.pcomp", tmp_path / "back.txt"
    src.write_bytes(payload)
    assert main(["compress", "--m1", str(m1_run), "--window-bits", str(b), "--token-bits", str(n),
                 "--batch", M1_BATCH, "--segment-bytes", "256", str(src), str(comp)]) == 0
    assert f"{len(payload)} -> " in capsys.readouterr().out
    header, codes = fileformat.read(comp)
    assert (header["window_bits"], header["token_bits"], header["m1_batch"]) == (b, n, int(M1_BATCH))
    assert header["m1_context"] == min(2 * b + 1, 128)  # M1's KV cache sized to the windows (test-tiny: 128)
    assert header["original_length"] == len(payload) and header["original_crc32"] == zlib.crc32(payload)
    assert len(codes) == header["n_windows"] > 0 and int(codes.max()) < 1 << b
    assert main(["decompress", "--m1", str(m1_run), str(comp), str(back)]) == 0
    assert "checksum ok" in capsys.readouterr().out
    assert back.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.txt", "in.pcomp", "in.txt"]


def test_compress_empty_file(m1_run, tmp_path):
    src, comp, back = tmp_path / "empty", tmp_path / "empty.pcomp", tmp_path / "back"
    src.write_bytes(b"")
    assert main(["compress", "--m1", str(m1_run), "--batch", M1_BATCH, str(src), str(comp)]) == 0
    assert fileformat.read(comp)[0]["n_windows"] == 0
    assert main(["decompress", "--m1", str(m1_run), str(comp), str(back)]) == 0
    assert back.read_bytes() == b""


@pytest.mark.parametrize("b", [16, 24, 32, 64])
def test_fileformat_pack_unpack(b):
    rng = np.random.default_rng(b)
    codes = np.asarray([0, (1 << b) - 1, 1 << (b - 1)] + [int(x) >> (64 - b) for x in rng.integers(0, 2**64 - 1, 20,
                                                                                               np.uint64)], np.uint64)
    header = {"window_bits": b, "window_rule": "unique-prefix-codewords/1", "token_bits": 8, "precision": 14, "m1_fingerprint": "f" * 64, "m1_batch": 16, "m1_context": 33,
              "original_length": 3, "original_crc32": 7}
    blob = fileformat.pack(header, codes)
    assert blob[:8] == b"PCOMPEIW" and struct.unpack(">I", blob[-4:])[0] == zlib.crc32(blob[:-4])
    assert len(blob) == 14 + struct.unpack(">I", blob[10:14])[0] + len(codes) * b // 8 + 4
    got_header, got = fileformat.unpack(blob)
    assert got_header == {**header, "mode": "windows", "n_windows": len(codes)}
    assert got.dtype == np.uint64 and got.tolist() == codes.tolist()


# ----------------------------------------------------------------------------- malformed input
def _truncate(at):
    def f(blob):
        hlen = struct.unpack(">I", blob[10:14])[0]
        header_end = 14 + hlen
        cut = {"magic": 5, "fixed": 12, "header": 14 + hlen // 2, "payload": (header_end + len(blob) - 4) // 2,
               "trailer": len(blob) - 2, "last-byte": len(blob) - 1}[at]
        return blob[:cut]
    return f


def _flip(where):
    def f(blob):
        hlen = struct.unpack(">I", blob[10:14])[0]
        i = {"payload": 14 + hlen + 5, "header": 14 + hlen // 2, "crc": len(blob) - 1}[where]
        return blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1 :]
    return f


BAD_FILES = {
    "truncated-in-magic": (_truncate("magic"), ["bad magic"]),
    "truncated-in-fixed-part": (_truncate("fixed"), ["truncated"]),
    "truncated-in-header": (_truncate("header"), ["truncated"]),
    "truncated-in-payload": (_truncate("payload"), ["truncated"]),
    "truncated-in-trailer": (_truncate("trailer"), ["truncated"]),
    "truncated-last-byte": (_truncate("last-byte"), ["truncated"]),
    "corrupted-payload-byte": (_flip("payload"), ["CRC32"]),
    "corrupted-header-byte": (_flip("header"), ["corrupted"]),
    "corrupted-crc": (_flip("crc"), ["CRC32"]),
    "trailing-bytes": (lambda blob: blob + b"\x00\x01", ["trailing bytes"]),
    "random-bytes": (lambda blob: np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes(),
                     ["not a pcomp compressed file"]),
    "text-file": (lambda blob: b"just some text\n" * 40, ["not a pcomp compressed file"]),
    "empty-file": (lambda blob: b"", ["not a pcomp compressed file"]),
    "other-version": (lambda blob: blob[:8] + struct.pack(">H", 7) + blob[10:], ["version 7"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_decompress_bad_file(m1_run, compressed, tmp_path, capsys, case):
    make, needles = BAD_FILES[case]
    bad, out = tmp_path / "bad.pcomp", tmp_path / "out.txt"
    bad.write_bytes(make(compressed[1].read_bytes()))
    assert main(["decompress", "--m1", str(m1_run), str(bad), str(out)]) == 2
    one_error_line(capsys, str(bad), *needles)
    no_output(out)


def test_decompress_with_another_m1(m1_run, other_m1_run, compressed, tmp_path, capsys):
    header, _ = fileformat.read(compressed[1])
    out = tmp_path / "out.txt"
    assert main(["decompress", "--m1", str(other_m1_run), str(compressed[1]), str(out)]) == 2
    one_error_line(capsys, "M1", header["m1_fingerprint"][:16], "same M1")
    no_output(out)
    # the same file still decompresses with its own M1
    assert main(["decompress", "--m1", str(m1_run), str(compressed[1]), str(out)]) == 0
    assert out.read_bytes() == compressed[0].read_bytes()


@pytest.mark.parametrize("case", ["compress-missing-input", "decompress-missing-input", "compress-no-m1",
                                  "decompress-no-m1", "window-bits-8", "window-bits-20-token-bits-16",
                                  "window-bits-72"])
def test_bad_arguments(m1_run, compressed, tmp_path, capsys, case):
    src, comp = compressed
    out = tmp_path / "out.bin"
    missing, no_m1 = tmp_path / "no-such-input.txt", tmp_path / "no-such-m1-run"
    argv, needles = {
        "compress-missing-input": (["compress", "--m1", str(m1_run), str(missing), str(out)],
                                   [str(missing), "does not exist"]),
        "decompress-missing-input": (["decompress", "--m1", str(m1_run), str(missing), str(out)],
                                     [str(missing), "does not exist"]),
        "compress-no-m1": (["compress", "--m1", str(no_m1), str(src), str(out)], [str(no_m1)]),
        "decompress-no-m1": (["decompress", "--m1", str(no_m1), str(comp), str(out)], [str(no_m1)]),
        "window-bits-8": (["compress", "--m1", str(m1_run), "--window-bits", "8", "--token-bits", "8",
                           "--batch", M1_BATCH, str(src), str(out)], ["b=8", "precision + 2 = 16"]),
        "window-bits-20-token-bits-16": (["compress", "--m1", str(m1_run), "--window-bits", "20", "--token-bits",
                                          "16", "--batch", M1_BATCH, str(src), str(out)],
                                         ["b=20", "not a multiple", "N=16"]),
        "window-bits-72": (["compress", "--m1", str(m1_run), "--window-bits", "72", "--token-bits", "8",
                            "--batch", M1_BATCH, str(src), str(out)], ["b=72"]),
    }[case]
    assert main(argv) == 2
    one_error_line(capsys, *needles)
    no_output(out)


def _rewrite_header(blob, **changes):
    """The file with header fields changed and a valid CRC32 (a crafted, self-consistent file)."""
    header, codes = fileformat.unpack(blob)
    header = {**header, **changes}
    del header["n_windows"]
    return fileformat.pack(header, codes)


@pytest.mark.parametrize("changes, needles", [
    ({"window_bits": 8}, ["b=8"]),
    ({"window_bits": 24}, []),
    ({"precision": 99}, ["precision=99"]),
    ({"original_length": 5}, ["do not match the original"]),
    ({"original_crc32": 12345}, ["do not match the original"]),
    ({"m1_fingerprint": 5}, ["m1_fingerprint=5"]),
    ({"m1_batch": -1}, ["m1_batch=-1"]),
    ({"m1_context": 1}, ["m1_context=1"]),
    ({"window_rule": "shortest-match/0"}, ["window rule 'shortest-match/0'"]),
    ({"original_length": "x"}, ["original_length='x'"]),
], ids=["window-bits-8", "window-bits-24", "precision-99", "length", "crc", "fingerprint-int", "batch-negative",
        "context-1", "rule", "length-str"])
def test_decompress_crafted_header(m1_run, compressed, tmp_path, capsys, changes, needles):
    bad, out = tmp_path / "crafted.pcomp", tmp_path / "out.txt"
    bad.write_bytes(_rewrite_header(compressed[1].read_bytes(), **changes))
    assert main(["decompress", "--m1", str(m1_run), str(bad), str(out)]) == 2
    one_error_line(capsys, *needles)
    no_output(out)


@pytest.mark.slow
def test_decompress_with_another_cache_length_never_gives_garbage(m1_run, compressed, tmp_path, capsys):
    """A header naming another M1 context (KV-cache length) either fails loudly or, when the logits
    happen to agree, still reproduces the original exactly (the checksum is verified)."""
    original, comp = compressed[0].read_bytes(), compressed[1]
    for context in (3, 5, 100):
        bad, out = tmp_path / f"ctx{context}.pcomp", tmp_path / f"out{context}.txt"
        bad.write_bytes(_rewrite_header(comp.read_bytes(), m1_context=context))
        code = main(["decompress", "--m1", str(m1_run), str(bad), str(out)])
        if code == 0:
            assert out.read_bytes() == original
        else:
            assert code == 2
            one_error_line(capsys)
            no_output(out)


def test_compress_into_missing_directory(m1_run, tmp_path, capsys):
    src, out = tmp_path / "in.txt", tmp_path / "no-such-dir" / "out.pcomp"
    src.write_bytes(b"abc")
    assert main(["compress", "--m1", str(m1_run), "--batch", M1_BATCH, str(src), str(out)]) == 2
    one_error_line(capsys, str(out.parent))


# ----------------------------------------------------------------------------- prepare
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory of 9 small text documents (one per file, some non-ASCII)."""
    d = tmp_path_factory.mktemp("corpus")
    docs = embedded_documents()
    for i in range(9):
        (d / f"doc{i:02d}.txt").write_bytes(docs[10 + i][:260] + "  Grüße ✓ ünïcödé\n".encode())
    return d


def _prepare_argv(m1_run, corpus, out, *extra):
    return ["prepare", "--m1", str(m1_run), "--data", str(corpus), "--out", str(out), "--window-bits", "16",
            "--token-bits", "8", "--seq-len", "32", "--shard-docs", "2", "--batch", M1_BATCH, *extra]


@pytest.fixture(scope="module")
def prepared(m1_run, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "ds"
    assert main(_prepare_argv(m1_run, corpus, out)) == 0
    return out


def _mtimes(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_prepare_writes_dataset(prepared, corpus, m1_run):
    n_train = -(-len(load_documents(str(corpus), "train")) // 2)
    n_eval = -(-len(load_documents(str(corpus), "eval")) // 2)
    names = sorted(p.name for p in prepared.iterdir())
    expected = sorted(["dataset.json", "tokenizer"]
                      + [f"{s}-{i:05d}.{ext}" for s, n in (("train", n_train), ("eval", n_eval))
                         for i in range(n)for ext in ("array_record", "json")])
    assert names == expected
    params = json.loads((prepared / "dataset.json").read_text())
    tok_config = json.loads((prepared / "tokenizer" / "tokenizer.json").read_text())
    assert (params["window_bits"], params["token_bits"], params["vocab_size"], params["seq_len"]) == (16, 8, 256, 32)
    assert tok_config["kind"] == "equal_info" and tok_config["fingerprint"] == params["m1_fingerprint"]
    assert (tok_config["window_bits"], tok_config["token_bits"], tok_config["batch"]) == (16, 8, int(M1_BATCH))
    ds = PreparedDataset(prepared)
    for split in ("train", "eval"):
        records = ds.records(split)
        metas = [json.loads(p.read_text()) for p in sorted(prepared.glob(f"{split}-*.json"))]
        assert len(records) == sum(m["records"] for m in metas)
        for i in range(len(records)):
            assert records[i].shape == (32,) and records[i].dtype == np.int32
            assert records[i].min() >= 0 and records[i].max() < 256
        for m in metas:
            assert m["tokens"] == 2 * m["windows"] and m["records"] == -(-m["tokens"] // 32)


@pytest.mark.parametrize("split", ["eval", "train"])
def test_prepared_stream_decodes_to_the_split_text(prepared, corpus, split):
    tokens, n_bytes = PreparedDataset(prepared).stream(split)
    text = b"".join(load_documents(str(corpus), split))
    assert n_bytes == len(text) > 0
    assert len(tokens) % 2 == 0  # whole windows of b/N = 2 tokens
    assert load_tokenizer(prepared / "tokenizer").decode(tokens) == text


def test_prepare_is_resumable(prepared, m1_run, corpus, capsys):
    before = _mtimes(prepared)
    assert main(_prepare_argv(m1_run, corpus, prepared)) == 0
    assert _mtimes(prepared) == before, "a finished dataset was rewritten"
    shard_meta = prepared / "train-00001.json"
    meta, records = shard_meta.read_text(), [r.tobytes() for r in PreparedDataset(prepared).records("train")]
    shard_meta.unlink()  # as if the run had been interrupted while writing shard 1
    assert main(_prepare_argv(m1_run, corpus, prepared)) == 0
    after = _mtimes(prepared)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == ["train-00001.array_record", "train-00001.json"]
    assert shard_meta.read_text() == meta
    assert [r.tobytes() for r in PreparedDataset(prepared).records("train")] == records
    # other settings into the same directory: refused, nothing touched
    capsys.readouterr()
    assert main(_prepare_argv(m1_run, corpus, prepared)[:-2] + ["--seq-len", "64", "--batch", M1_BATCH]) == 2
    one_error_line(capsys, "other settings", "seq_len")
    assert _mtimes(prepared) == after


@pytest.mark.parametrize("extra, needles", [
    (["--window-bits", "24", "--token-bits", "8", "--seq-len", "32"], ["--seq-len 32", "24/8"]),
    (["--window-bits", "20", "--token-bits", "16"], ["b=20 is not a multiple of the token bits N=16"]),
    (["--window-bits", "8", "--token-bits", "8"], ["b=8"]),
    (["--shard-docs", "0"], ["--shard-docs 0"]),
])
def test_prepare_bad_arguments(m1_run, corpus, tmp_path, capsys, extra, needles):
    out = tmp_path / "ds"
    argv = ["prepare", "--m1", str(m1_run), "--data", str(corpus), "--out", str(out), "--batch", M1_BATCH, *extra]
    assert main(argv) == 2
    one_error_line(capsys, *needles)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_m2_trains_on_prepared_tokens(prepared, tmp_path, capsys):
    from pcomp.train.trainer import train

    run = tmp_path / "m2"
    summary = train(Config.preset("test-tiny").override(f"data.source={prepared}", "data.seq_len=32",
                                                        "training.steps=3", f"training.workdir={run}",
                                                        "training.progress=false"))
    bpb = summary.eval["eval/bits_per_byte"]
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == 256
    assert load_tokenizer(run / "tokenizer").to_config() == load_tokenizer(prepared / "tokenizer").to_config()
    # `pcomp eval` of the M2 run scores the prepared dataset's own held-out tokens (not its files as
    # text): the trainer's number, to the printed precision
    assert main(["eval", "--checkpoint", str(run), "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert f"bits/byte {bpb:.4f}" in out, out
    eval_bytes = sum(json.loads(m.read_text())["bytes"] for m in prepared.glob("eval-*.json"))
    assert f"{eval_bytes} bytes" in out
    # beside it the paper's accounting: uniform = 8 token bits x scored tokens / bytes
    tokens, n_bytes = PreparedDataset(prepared).stream("eval")
    assert f"(uniform {8 * (len(tokens) - 1) / n_bytes:.4f} = 8 token bits" in out, out
    assert "unigram " in out and "inference FLOPs/byte" in out and "+ 2*N(M1)=" in out
    # generation through M1 from the run alone: its tokenizer carries its own copy of M1
    assert (run / "tokenizer" / "m1" / "config.json").is_file()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "The ", "--max-tokens", "6", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("The ")
    for line in captured.err.splitlines():  # only the documented report of undecodable windows
        assert line.startswith("pcomp: warning: sampled window ") and line.endswith("; skipped"), line


def test_prepare_lists_every_tokenizer_kind():
    """`pcomp prepare --tokenizer` accepts exactly the kinds `prepare` makes (one list, in pcomp.config),
    and anything else is a one-line usage error."""
    from pcomp.cli import build_parser
    from pcomp.config import TOKENIZER_KINDS

    assert set(TOKENIZER_KINDS) == {"equal_info", "gzip", "static_ac", "ac", "bytes", "sentencepiece"}
    for kind in TOKENIZER_KINDS:
        assert build_parser().parse_args(["prepare", "--tokenizer", kind, "--out", "x"]).tokenizer == kind
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["prepare", "--tokenizer", "bpe", "--out", "x"])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind, extra", [("gzip", []), ("static_ac", []), ("ac", []), ("bytes", []),
                                         ("sentencepiece", ["--vocab-size", "512"])])
def test_prepare_every_tokenizer_and_train_on_it(kind, extra, m1_run, corpus, tmp_path, capsys):
    from pcomp.train.trainer import train

    out = tmp_path / "ds"
    argv = ["prepare", "--tokenizer", kind, "--data", str(corpus), "--out", str(out), "--token-bits", "8",
            "--seq-len", "32", "--shard-docs", "4", "--batch", M1_BATCH, *extra]
    if kind == "ac":
        argv += ["--m1", str(m1_run)]
    assert main(argv) == 0
    params = json.loads((out / "dataset.json").read_text())
    tok = load_tokenizer(out / "tokenizer")
    assert params["tokenizer"] == kind and params["tokenizer_kind"] == tok.name
    assert params["vocab_size"] == tok.vocab_size and (params["m1_fingerprint"] is not None) == (kind == "ac")
    # the first training document's tokens open the train stream and decode back to it
    doc = load_documents(str(corpus), "train")[0]
    ids = [t for t in ([tok.bos_id] if tok.bos_id is not None else []) + list(tok.encode(doc))]
    stream, _ = PreparedDataset(out).stream("train")
    assert list(stream[: len(ids)]) == ids
    assert tok.decode(np.asarray(ids[1:] if tok.bos_id is not None else ids)) == doc
    # resumable: a second run finds every shard done and changes nothing
    before = _mtimes(out)
    assert main(argv) == 0
    assert _mtimes(out) == before
    # the trainer reads it: M2 sized from the metadata, trained two steps, evaluated with the accounting
    run = tmp_path / "m2"
    train(Config.preset("test-tiny").override(f"data.source={out}", "data.seq_len=32", "training.steps=2",
                                              f"training.workdir={run}", "training.progress=false"))
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == tok.vocab_size
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--batch-size", "8"]) == 0
    assert "(uniform " in capsys.readouterr().out
    if kind in ("gzip", "static_ac", "ac"):  # stream codes: the sampled stream is decoded as it grows
        assert main(["generate", "--checkpoint", str(run), "--prompt", "The ", "--max-tokens", "40"]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("The ") and "Traceback" not in err
        warned = [line for line in err.splitlines() if line.startswith("pcomp: warning:")]
        assert len(warned) <= (1 if kind == "gzip" else 0)  # only gzip streams can turn invalid
        assert all("valid DEFLATE stream" in line for line in warned)


def test_prepare_needs_m1_for_the_kinds_that_run_it(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["prepare", "--tokenizer", "ac", "--data", str(corpus), "--out", str(out)]) == 2
    one_error_line(capsys, "--tokenizer ac runs M1", "--m1")
    assert not (out / "dataset.json").exists()
    # a sentencepiece vocabulary smaller than the characters it must cover: one line, nothing written
    assert main(["prepare", "--tokenizer", "sentencepiece", "--vocab-size", "300", "--data", str(corpus),
                 "--out", str(out)]) == 2
    one_error_line(capsys, "--vocab-size 300: sentencepiece cannot train")
    assert not (out / "dataset.json").exists()


# ----------------------------------------------------------------------------- nothing lost (issue #9)
def _compress_argv(m1_run, *paths, extra=()):
    return ["compress", "--m1", str(m1_run), "--batch", M1_BATCH, "--segment-bytes", "256", *extra,
            *map(str, paths)]


def _files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.parametrize("how", ["same-path", "other-path", "hard-link", "symlink"])
def test_output_that_is_the_input_is_refused(m1_run, payload, tmp_path, capsys, how):
    src = tmp_path / "f.txt"
    src.write_bytes(payload)
    out = {"same-path": src, "other-path": tmp_path / "sub" / ".." / "f.txt",
           "hard-link": tmp_path / "link.txt", "symlink": tmp_path / "sym.txt"}[how]
    (tmp_path / "sub").mkdir()
    if how == "hard-link":
        out.hardlink_to(src)
    if how == "symlink":
        out.symlink_to(src)
    before = _files(tmp_path)
    for force in ((), ("--force",)):  # --force does not make it acceptable
        assert main(_compress_argv(m1_run, src, out, extra=force)) == 2
        assert "same file" in one_error_line(capsys, str(out))
        assert _files(tmp_path) == before and src.read_bytes() == payload
    comp = tmp_path / "f.pcomp"
    assert main(_compress_argv(m1_run, src, comp)) == 0
    capsys.readouterr()
    assert main(["decompress", "--m1", str(m1_run), str(comp), str(comp)]) == 2
    assert "same file" in one_error_line(capsys, str(comp))
    assert fileformat.read(comp)[0]["original_length"] == len(payload)


def test_existing_output_needs_force_and_temporary_names_are_unique(m1_run, payload, tmp_path, capsys):
    """`compress doc.partial doc` (the old temporary name as input) keeps its input; an existing output is
    kept unless --force, and replaced whole with it."""
    src, out, back = tmp_path / "doc.partial", tmp_path / "doc", tmp_path / "back"
    src.write_bytes(payload)
    assert main(_compress_argv(m1_run, src, out)) == 0
    assert src.read_bytes() == payload and fileformat.read(out)[0]["original_length"] == len(payload)
    capsys.readouterr()
    first = out.read_bytes()
    src.write_bytes(payload[:100])
    assert main(_compress_argv(m1_run, src, out)) == 2
    one_error_line(capsys, str(out), "already exists", "--force")
    assert out.read_bytes() == first
    assert main(_compress_argv(m1_run, src, out, extra=["--force"])) == 0
    assert fileformat.read(out)[0]["original_length"] == 100
    back.write_bytes(b"keep me")
    capsys.readouterr()
    assert main(["decompress", "--m1", str(m1_run), str(out), str(back)]) == 2
    one_error_line(capsys, str(back), "already exists")
    assert back.read_bytes() == b"keep me"
    assert main(["decompress", "--m1", str(m1_run), "--force", str(out), str(back)]) == 0
    assert back.read_bytes() == payload[:100]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "doc", "doc.partial"]
    umask = os.umask(0)
    os.umask(umask)
    assert back.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_full_disk_leaves_no_partial_file(m1_run, compressed, tmp_path, capsys, monkeypatch, command):
    """A write that fails with ENOSPC (simulated) is one line naming the output; the input is unchanged and
    nothing is left in the output directory."""
    src, comp = compressed
    inp = src if command == "compress" else comp
    before = inp.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_write = os.write

    def full_disk(fd, data):
        if fd > 2 and len(data) > 10:  # after the first few bytes: a partial file exists when it fails
            real_write(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    argv = (_compress_argv(m1_run, inp, out_dir / "out") if command == "compress"
            else ["decompress", "--m1", str(m1_run), str(inp), str(out_dir / "out")])
    assert main(argv) == 2
    monkeypatch.undo()
    one_error_line(capsys, str(out_dir / "out"), "No space left on device")
    assert list(out_dir.iterdir()) == []
    assert inp.read_bytes() == before


@pytest.mark.parametrize("argv, needles", [
    (["--precision", "0"], ["precision=0", "[2, 24]"]),
    (["--precision", "25"], ["precision=25", "[2, 24]"]),
    (["--window-bits", "0"], ["window_bits", "b=0", "16, 64"]),
    (["--window-bits", "-16"], ["window_bits", "b=-16"]),
    (["--batch", "0"], ["m1_batch=0"]),
    (["--segment-bytes", "0"], ["segment_bytes=0"]),
    (["--max-window-bytes", "-1"], ["--max-window-bytes -1"]),
], ids=["precision-0", "precision-25", "window-bits-0", "window-bits-negative", "batch-0", "segment-0",
        "max-window-negative"])
def test_bad_settings_are_one_line_errors(m1_run, payload, tmp_path, capsys, argv, needles):
    src, out = tmp_path / "in.txt", tmp_path / "out.pcomp"
    src.write_bytes(payload)
    assert main(["compress", "--m1", str(m1_run), *argv, str(src), str(out)]) == 2
    line = one_error_line(capsys, *needles)
    assert "M1 context" not in line and "Traceback" not in capsys.readouterr().err
    no_output(out)
    assert src.read_bytes() == payload


def test_directory_as_input_says_so(m1_run, tmp_path, capsys):
    out = tmp_path / "out.pcomp"
    for command in ("compress", "decompress"):
        assert main([command, "--m1", str(m1_run), str(tmp_path), str(out)]) == 2
        line = one_error_line(capsys, str(tmp_path), "is a directory")
        assert "does not exist" not in line
        no_output(out)


def test_prepare_rejects_zero_seq_len_and_empty_corpus(m1_run, corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(_prepare_argv(m1_run, corpus, out)[:-2] + ["--batch", M1_BATCH, "--seq-len", "0"]) == 2
    one_error_line(capsys, "--seq-len 0")
    assert not out.exists()
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert main(_prepare_argv(m1_run, empty, out)) == 2
    one_error_line(capsys, str(empty), "is empty")
    assert not out.exists() or not any(out.iterdir())


def _trained_in_memory(*, nan: bool = False, bos_first: bool = True):
    import dataclasses

    import jax
    from flax import nnx

    from pcomp.config import DataConfig
    from pcomp.data.tokenizers import ByteTokenizer
    from pcomp.models.transformer import Transformer
    from pcomp.train.load import TrainedModel

    cfg = dataclasses.replace(Config.preset("test-tiny").model, max_seq_len=40)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    if nan:
        params = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.nan) if x.ndim == 2 else x, params)
    return TrainedModel(Config(model=cfg, data=DataConfig(bos_first=bos_first)), ByteTokenizer(), graphdef, params,
                        0, Path("in-memory"))


def test_m1_with_non_finite_parameters_is_refused():
    from pcomp.compress.m1 import M1
    from pcomp.errors import CheckpointError

    with pytest.raises(CheckpointError, match="non-finite parameters"):
        M1.for_windows(_trained_in_memory(nan=True), 16, batch=4)
    assert M1.for_windows(_trained_in_memory(), 16, batch=4).context == 33  # BOS + 2b


def test_m1_trained_without_bos_first_warns_in_one_line(m1_run, payload, tmp_path, capsys):
    """Such an M1 still codes exactly (the round trip works), so it is a one-line warning, not an error."""
    import warnings

    from pcomp.compress.m1 import M1, M1Warning

    with pytest.warns(M1Warning, match="bos_first"):
        M1.for_windows(_trained_in_memory(bos_first=False), 16, batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", M1Warning)
        M1.for_windows(_trained_in_memory(bos_first=True), 16, batch=4)
    run = tmp_path / "m1-no-bos"
    shutil.copytree(m1_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["bos_first"] = False
    (run / "config.json").write_text(json.dumps(cfg))
    src, comp, back = tmp_path / "in.txt", tmp_path / "in.pcomp", tmp_path / "back.txt"
    src.write_bytes(payload[:300])
    assert main(_compress_argv(run, src, comp)) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcomp: warning:")]
    assert len(warned) == 1 and "data.bos_first" in warned[0]
    assert main(["decompress", "--m1", str(run), str(comp), str(back)]) == 0
    assert back.read_bytes() == payload[:300]


def test_compress_reports_tokens_and_the_real_header_size(m1_run, payload, tmp_path, capsys):
    src, comp = tmp_path / "in.txt", tmp_path / "in.pcomp"
    src.write_bytes(payload)
    assert main(_compress_argv(m1_run, src, comp)) == 0
    out = capsys.readouterr().out
    header, codes = fileformat.read(comp)
    blob = comp.read_bytes()
    framing = len(blob) - len(codes) * 2  # b = 16: two payload bytes per window
    tokens = len(codes)  # N = 16: one token per window
    assert f"{tokens} tokens of 16 bits ({len(payload) / tokens:.2f} bytes/token)" in out
    assert f"+ {framing} bytes of header and framing" in out
    assert framing == 8 + 2 + 4 + struct.unpack(">I", blob[10:14])[0] + 4


@pytest.mark.slow
def test_readme_compression_example_runs(m1_run, monkeypatch):
    """docs/compression.md's Python API block, with its M1 (runs/m1) replaced by the test M1 and a small batch."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "compression.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "M1.for_windows" in b)
    block = block.replace('"runs/m1"', repr(str(m1_run))).replace("batch=cfg.m1_batch", "batch=8")
    scope = {}
    exec(compile(block, "docs/compression.md", "exec"), scope)
    assert scope["tok"].decode(scope["ids"]) == b"hello world" and scope["data"] == b"some textmore text"


def test_corrupt_prepared_shard_is_one_line_before_the_run_writes_anything(prepared, tmp_path, capsys):
    """400 bytes XOR-ed inside a training shard (issue #20): `pcomp train` on the dataset says which shard
    and how to rewrite it, in one line, and leaves no run directory behind (it used to die on a Riegeli
    'chunk header hash mismatch' traceback after writing config.json)."""
    ds = tmp_path / "ds"
    shutil.copytree(prepared, ds)
    shard = ds / "train-00001.array_record"
    data = bytearray(shard.read_bytes())
    start = 100  # inside the records (a small shard's file is mostly padding after them)
    for i in range(start, start + 400):
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    run = tmp_path / "run"
    assert main(["train", "--config", "test-tiny", f"data.source={ds}", "data.seq_len=32", "training.steps=2",
                 "training.progress=false", f"training.workdir={run}"]) == 2
    line = one_error_line(capsys, str(shard), "damaged", "train-00001.json", "pcomp prepare")
    assert "\n" not in line
    assert not (run / "config.json").exists() and not (run / "checkpoints").exists()


@pytest.mark.slow
def test_sigterm_during_prepare_is_one_line_and_keeps_finished_shards(m1_run, tmp_path):
    """SIGTERM while `pcomp prepare` compresses (issue #20): one line, exit 143, no traceback; the shards
    finished so far stay whole (each .json beside its records), so the same command resumes. It used to
    die silently (exit -15)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "ds"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pcomp", "prepare", "--m1", str(m1_run), "--data", "embedded", "--out", str(out),
            "--window-bits", "16", "--token-bits", "8", "--seq-len", "32", "--shard-docs", "1", "--batch", M1_BATCH]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "train-00000.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1] if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    lines = [ln for ln in re.split(r"[\r\n]|(?=pcomp: )", err) if ln.strip() and not ln.startswith("prepare ")]
    assert lines == ["pcomp: terminated by SIGTERM"], err
    for meta in out.glob("train-*.json"):
        assert meta.with_suffix(".array_record").is_file()
    PreparedDataset(out)  # dataset.json is whole
