"""Document sources: embedded corpus, local files, JSONL, TFDS, and the train/eval split."""

import gzip
import hashlib
import json
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcomp.data.embedded import embedded_documents
from pcomp.data.sources import (TfdsDocuments, check_source, describe_source, directory_documents, load_documents,
                                same_source, split_documents, whole_documents)
from pcomp.errors import ConfigError, DataError

# --- embedded corpus ---------------------------------------------------------


def _digest(docs) -> str:
    return hashlib.sha256(b"\0".join(docs)).hexdigest()


def test_embedded_corpus_is_deterministic_text():
    docs = embedded_documents()
    assert embedded_documents() == docs
    assert sum(len(doc) for doc in docs) > 500_000
    assert len(docs) > 50 and all(docs)
    for doc in docs:
        doc.decode("utf-8")  # valid UTF-8
    # Same text in a fresh interpreter, which imports nothing with side effects.
    code = (
        "import sys, hashlib; from pcomp.data.embedded import embedded_documents; "
        "print(hashlib.sha256(b'\\0'.join(embedded_documents())).hexdigest()); "
        "print(sorted({'tkinter', 'idlelib', 'antigravity', 'this', 'turtle'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == _digest(docs)
    assert out[1] == "[]"


def test_embedded_corpus_ignores_patches_to_the_standard_library(monkeypatch):
    """Libraries patch stdlib modules on import (transformers adds logging.Logger.warning_advice):
    the corpus is the pristine modules' text whatever this process imported."""
    import logging

    want = _digest(embedded_documents())

    def warning_advice(self, *args):
        """A method some library added to logging.Logger."""

    monkeypatch.setattr(logging.Logger, "warning_advice", warning_advice, raising=False)
    monkeypatch.setattr(inspect, "getfile", lambda obj: "patched")
    embedded_documents.cache_clear()
    try:
        assert _digest(embedded_documents()) == want
    finally:
        embedded_documents.cache_clear()


def test_load_embedded_splits():
    docs = embedded_documents()
    train = load_documents("embedded", "train")
    eval_ = load_documents("embedded", "eval")
    assert b"".join(train) + b"".join(eval_) == b"".join(docs)
    eval_bytes = sum(map(len, eval_))
    assert 0.09 < eval_bytes / sum(map(len, docs)) < 0.11
    assert load_documents("embedded", "train") is train  # cached
    assert describe_source("embedded").startswith(f"embedded corpus: {len(docs)} docs, 1.")


# --- split_documents ---------------------------------------------------------------


def test_split_cuts_after_next_newline():
    docs = [b"aaaa\n", b"bbbb\ncccc\ndddd\n", b"eeee\n"]  # 25 bytes; 0.4 -> cut at 15 (inside "cccc")
    train, eval_ = split_documents(docs, 0.4)
    assert train == (b"aaaa\n", b"bbbb\ncccc\n")
    assert eval_ == (b"dddd\n", b"eeee\n")


def test_split_at_line_start_and_without_newline():
    train, eval_ = split_documents([b"ab\ncd\nef"], 0.5)  # cut at 4 = inside "cd"
    assert (train, eval_) == ((b"ab\ncd\n",), (b"ef",))
    train, eval_ = split_documents([b"ab\ncd"], 0.4)  # cut at 3 = a line start: kept
    assert (train, eval_) == ((b"ab\n",), (b"cd",))
    train, eval_ = split_documents([b"abcdefghij"], 0.3)  # no newline: exact cut
    assert (train, eval_) == ((b"abcdefg",), (b"hij",))
    train, eval_ = split_documents([b"abcdefghi\n"], 0.3)  # only newline is the last byte: exact cut
    assert (train, eval_) == ((b"abcdefg",), (b"hi\n",))
    assert split_documents([b"abc", b"def"], 0.0) == ((b"abc", b"def"), ())


@given(st.lists(st.binary(max_size=50), max_size=10), st.floats(0.0, 0.99))
def test_split_preserves_bytes(docs, eval_fraction):
    train, eval_ = split_documents(docs, eval_fraction)
    assert b"".join(train) + b"".join(eval_) == b"".join(docs)
    assert all(train) and all(eval_)
    total = sum(map(len, docs))
    target = round(total * eval_fraction)
    eval_bytes = sum(map(len, eval_))
    assert eval_bytes <= target
    if target > 0:
        assert eval_bytes > 0


# --- local files -------------------------------------------------------------------


def test_text_file(tmp_path):
    path = tmp_path / "book.md"
    path.write_bytes(b"line one\nline two\nline three\n" * 10)
    train = load_documents(str(path), "train")
    eval_ = load_documents(str(path), "eval")
    assert len(train) == 1 and len(eval_) == 1
    assert train[0] + eval_[0] == path.read_bytes()
    assert eval_[0].startswith(b"line")
    assert tuple(load_documents(str(path), "train", eval_fraction=0.0)) == (path.read_bytes(),)
    assert tuple(load_documents(str(path), "eval", eval_fraction=0.0)) == ()


def test_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_bytes(b"b2\n")
    (tmp_path / "b" / "10.txt").write_bytes(b"b10\n")
    (tmp_path / "a.txt").write_bytes(b"a\n")
    (tmp_path / "c.jsonl").write_bytes(b"raw\n")  # inside a directory every file is plain text
    (tmp_path / ".hidden").write_bytes(b"no\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x").write_bytes(b"no\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    docs = load_documents(str(tmp_path), "train", eval_fraction=0.0)
    assert tuple(docs) == (b"a\n", b"b10\n", b"b2\n", b"raw\n")
    assert describe_source(str(tmp_path)) == f"{tmp_path}: 4 docs, 0.0 MB"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl(tmp_path, suffix):
    lines = [json.dumps({"text": f"doc {i} é\n", "id": i}) for i in range(20)]
    lines.insert(3, "")
    raw = ("\n".join(lines) + "\n").encode()
    path = tmp_path / f"data{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    train = load_documents(str(path), "train", eval_fraction=0.25)
    eval_ = load_documents(str(path), "eval", eval_fraction=0.25)
    assert tuple(train) + tuple(eval_) == tuple(f"doc {i} é\n".encode() for i in range(20))
    assert len(eval_) == 4  # 190 bytes, cut at 142 falls in doc 15: it stays in train


def test_jsonl_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: no field 'text'"):
        load_documents(str(path), "train")
    with pytest.raises(DataError, match=r"bad.jsonl line 1: no field 'body'"):
        load_documents(str(path), "train", text_field="body")
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl line 2: not valid JSON"):
        load_documents(str(path), "train")
    path = tmp_path / "number.jsonl"
    path.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match=r"number.jsonl line 1: field 'text' is a int"):
        load_documents(str(path), "train")


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="no_such_file.txt"):
        load_documents(str(tmp_path / "no_such_file.txt"), "train")
    with pytest.raises(ConfigError, match="eval_fraction"):
        load_documents("embedded", "eval", eval_fraction=1.0)
    with pytest.raises(ConfigError, match="eval_fraction"):
        load_documents("embedded", "eval", eval_fraction=-0.1)
    with pytest.raises(ConfigError, match="'test'"):
        load_documents("embedded", "test")
    with pytest.raises(ConfigError, match="the data source is empty"):  # not the current directory
        load_documents("", "train")


def test_empty_sources_say_so(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for split in ("train", "eval"):
        with pytest.raises(DataError, match=f"^data file {re.escape(str(empty))} is empty; expected text$"):
            load_documents(str(empty), split)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"")
    with pytest.raises(DataError, match="data directory .*d holds only empty files"):
        load_documents(str(tmp_path / "d"), "train")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('\n{"text": ""}\n')
    with pytest.raises(DataError, match="blank.jsonl has no non-empty 'text' field"):
        load_documents(str(blank), "eval")


def test_check_source_reports_missing_and_empty_sources_without_reading(tmp_path):
    """The trainer calls it before compiling: the same messages as reading the source would give."""
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"^data source {re.escape(str(missing))} does not exist"):
        check_source(str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"^data file {re.escape(str(empty))} is empty; expected text$"):
        check_source(str(empty))
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="data directory .*d has no \\(non-hidden\\) files"):
        check_source(str(tmp_path / "d"))
    (tmp_path / "d" / "a.txt").write_bytes(b"")
    with pytest.raises(DataError, match="data directory .*d holds only empty files"):
        check_source(str(tmp_path / "d"))
    (tmp_path / "d" / "b.txt").write_bytes(b"text")
    for fine in (str(tmp_path / "d"), str(tmp_path / "d" / "b.txt"), "embedded", "tfds:not_read_here"):
        check_source(fine)


@pytest.mark.parametrize(
    "content, eval_fraction, n_train, n_eval",
    [(b"abc\n", 0.1, 4, 0), (b"x", 0.9, 0, 1), (b"ab", 0.1, 2, 0)],
)
def test_source_too_small_for_both_splits_gives_the_sizes(tmp_path, content, eval_fraction, n_train, n_eval):
    path = tmp_path / "tiny.txt"
    path.write_bytes(content)
    for split in ("train", "eval"):
        with pytest.raises(DataError) as info:
            load_documents(str(path), split, eval_fraction=eval_fraction)
        assert str(info.value).startswith(
            f"data source {path} ({len(content)} bytes) is too small to hold out eval_fraction={eval_fraction}: "
            f"that leaves {n_train} bytes to train on and {n_eval} held out")
    # without a held-out split the same file is fine
    assert tuple(load_documents(str(path), "train", eval_fraction=0.0)) == (content,)


# --- TFDS (a tiny ArrayRecord dataset written without TensorFlow) ----------------------


def _make_builder_classes():
    import tensorflow_datasets as tfds

    def texts(split, n):
        return [f"{split} document {i}: naïve café ✓\n".encode("utf-8") for i in range(n)]

    class _Base(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        SPLIT_SIZES = {}

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text(), "id": tfds.features.Scalar(np.int64)})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, n) for split, n in self.SPLIT_SIZES.items()}

        def _generate_examples(self, split, n):
            for i, text in enumerate(texts(split, n)):
                yield i, {"text": text.decode("utf-8"), "id": i}

    with tfds.core.registered.skip_registration():  # read back from files only, like a copied data_dir

        class PcompTinyText(_Base):
            SPLIT_SIZES = {"train": 12, "validation": 4, "test": 3}

        class PcompTinyNoValidation(_Base):
            SPLIT_SIZES = {"train": 5, "test": 2}

    return texts, (PcompTinyText, PcompTinyNoValidation)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data_dir = tmp_path_factory.mktemp("tfds")
    texts, builder_classes = _make_builder_classes()
    for builder_class in builder_classes:
        builder_class(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir), texts


def test_tfds_documents(tfds_dir):
    data_dir, texts = tfds_dir
    train = load_documents("tfds:pcomp_tiny_text", "train", data_dir=data_dir)
    assert isinstance(train, TfdsDocuments)  # lazy wrapper, not a materialised list
    assert len(train) == 12
    assert sorted(train) == sorted(texts("train", 12))
    assert train[-1] == train[11] and train[2:4] == [train[2], train[3]]
    assert train.__getitems__([0, 5]) == [train[0], train[5]]
    with pytest.raises(IndexError):
        train[12]
    eval_ = load_documents("tfds:pcomp_tiny_text:1.0.0", "eval", data_dir=data_dir)
    assert sorted(eval_) == sorted(texts("validation", 4))
    no_val = load_documents("tfds:pcomp_tiny_no_validation", "eval", data_dir=data_dir)
    assert sorted(no_val) == sorted(texts("test", 2))
    assert "train 12 docs" in describe_source("tfds:pcomp_tiny_text", data_dir=data_dir)


def test_tfds_errors(tfds_dir, tmp_path):
    data_dir, _ = tfds_dir
    with pytest.raises(DataError, match="'body'.*'id', 'text'"):
        load_documents("tfds:pcomp_tiny_text", "train", text_field="body", data_dir=data_dir)
    with pytest.raises(DataError, match="no_such_dataset_xyz.*tfds build no_such_dataset_xyz"):
        load_documents("tfds:no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="'tiny_shakespeare' is not prepared.*tfds build tiny_shakespeare"):
        load_documents("tfds:tiny_shakespeare", "train", data_dir=str(tmp_path))


@pytest.mark.slow
def test_streaming_training_from_tfds_resumes_across_the_stage_boundary(tfds_dir, tmp_path):
    """TFDS sources train through the streaming packer; a run stopped at the end of the patch stage
    and resumed ends with the same parameters as an uninterrupted run."""
    import jax

    from pcomp.config import Config
    from pcomp.train.trainer import train

    data_dir, _ = tfds_dir
    base = Config.preset("test-tiny").override(
        "data.source=tfds:pcomp_tiny_text", f"data.data_dir={data_dir}", "data.seq_len=32", "training.patch_size=4",
        "training.steps=24", "training.progress=false", "training.checkpoint_every=100")
    # (the model, batch, patch size and mesh of test_patching's stage-boundary test: the same programs)
    a = train(base.override(f"training.workdir={tmp_path / 'a'}"))
    patch_steps = a.stages[0]["steps"]
    assert [s["name"] for s in a.stages] == ["patch", "token"]
    b = base.override(f"training.workdir={tmp_path / 'b'}")
    assert train(b, stop_at=patch_steps).stopped_at == patch_steps
    b = train(b)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- lazy local sources: the same split as in memory, reading only what is accessed ---------------


def _naive_split(docs: list[bytes], fraction: float) -> tuple[list[bytes], list[bytes]]:
    """The held-out cut over the concatenated text, byte by byte (reference for `split_documents`)."""
    docs = [d for d in docs if d]
    text = b"".join(docs)
    starts = np.cumsum([0] + [len(d) for d in docs])
    cut = len(text) - round(len(text) * fraction)
    if cut < len(text):
        k = int(np.searchsorted(starts, cut, side="right")) - 1  # the document holding byte `cut`
        if cut > starts[k] and text[cut - 1] != ord("\n"):
            for j in range(cut, starts[k + 1]):
                if text[j] == ord("\n"):
                    if j + 1 < len(text):  # not the very last byte
                        cut = j + 1
                    break
    train, eval_ = [], []
    for d, s in zip(docs, starts):
        head, tail = d[: max(0, cut - s)], d[max(0, cut - s):]
        train += [head] if head else []
        eval_ += [tail] if tail else []
    return train, eval_


LINES = st.lists(st.sampled_from([b"ab", b"\n", b"c\n", "é".encode(), b"xyz\n"]), max_size=6).map(b"".join)


@settings(max_examples=40, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=8), st.floats(0.0, 0.95), st.integers(1, 3), st.integers(0, 2))
def test_lazy_directory_and_jsonl_split_like_the_naive_reference(docs, fraction, step, start):
    if not any(docs):
        return
    want = _naive_split(docs, fraction)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dir"
        root.mkdir()
        for i, d in enumerate(docs):
            (root / f"{i:03d}.txt").write_bytes(d)
        jsonl = Path(tmp) / "docs.jsonl"
        jsonl.write_text("".join(json.dumps({"text": d.decode()}) + "\n" for d in docs))
        for source in (str(root), str(jsonl)):
            if fraction > 0 and not (want[0] and want[1]):  # too small for both splits: refused
                with pytest.raises(DataError, match="too small to hold out"):
                    load_documents(source, "train", eval_fraction=fraction)
                continue
            got = [load_documents(source, split, eval_fraction=fraction) for split in ("train", "eval")]
            assert [list(g) for g in got] == list(want)
            # a slice is a lazy view with the same documents and byte counts
            part = got[0][start::step]
            assert list(part) == want[0][start::step]
            assert part.num_bytes == sum(map(len, want[0][start::step]))


def test_a_process_opens_only_its_shard_of_a_directory(tmp_path, monkeypatch):
    """Process 0 of 2 reads its own training files, the held-out ones and the one the cut falls in;
    never a file of process 1's shard."""
    import builtins

    from pcomp.config import DataConfig
    from pcomp.data.run_data import RunData

    root = tmp_path / "docs"
    root.mkdir()
    for i in range(40):
        (root / f"{i:03d}.txt").write_bytes(f"doc {i:03d}\n".encode() * 20)  # 160 bytes each
    opened: list[str] = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        if str(file).startswith(str(root)):
            opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    cfg = DataConfig(source=str(root), seq_len=16, tokenizer="bytes", eval_fraction=0.1, read_threads=1)
    RunData.load(cfg, saved_tokenizer=tmp_path / "none", global_batch=4, block_tokens=16, process_index=0,
                 process_count=2)
    # 40 equal files, 10% held out: files 0..35 train, 36..39 held out (the cut at a file boundary)
    assert set(opened) == {f"{i:03d}.txt" for i in range(0, 36, 2)} | {f"{i:03d}.txt" for i in range(36, 40)}


def test_a_file_changed_after_opening_is_an_error_not_other_text(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.txt").write_bytes(b"line\n" * 4)
    docs = load_documents(str(root), "train", eval_fraction=0.0)
    (root / "1.txt").write_bytes(b"longer line\n" * 4)
    assert docs[0] == b"line\n" * 4
    with pytest.raises(DataError, match=r"document 1 of a local data source changed after it was opened \(20 bytes then, 48 now\)"):
        docs[1]


def test_jsonl_documents_are_read_through_one_descriptor_from_many_threads(tmp_path, monkeypatch):
    """A lazy JSONL source opens its file once per process and reads lines with pread, so reader
    threads share it without a file position to race on."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"document {i} " * (i % 7 + 1) + "\n" for i in range(200)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    opens: list[str] = []
    real_os_open = os.open

    def recording_os_open(file, *args, **kwargs):
        opens.append(str(file))
        return real_os_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_os_open)
    docs = load_documents(str(path), "train", eval_fraction=0.0)
    order = list(range(len(texts))) * 5
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(docs.__getitem__, order))
    assert got == [texts[i].encode() for i in order]
    assert opens.count(str(path)) == 1


def test_a_jsonl_file_changed_after_opening_is_an_error_not_other_text(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one\n", "two\n", "three\n"]))
    docs = load_documents(str(path), "train", eval_fraction=0.0)
    assert docs[0] == b"one\n"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one\n", "TWO!\n", "three\n"]))
    with pytest.raises(DataError, match=r"document 1 of a local data source changed after it was opened \(4 bytes then, 5 now\)"):
        docs[1]


# --- naming a source: the run's own, a directory's documents -----------------------------------------


def test_same_source_resolves_local_spellings_only(tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_text("text\n")
    link = tmp_path / "link.txt"
    link.symlink_to(f)
    monkeypatch.chdir(tmp_path)
    assert same_source("a.txt", str(f)) and same_source("./a.txt", str(link)) and same_source("embedded", "embedded")
    assert not same_source("embedded", str(f)) and not same_source("a.txt", str(tmp_path / "b.txt"))
    (tmp_path / "embedded").write_text("a file named like the corpus\n")
    assert not same_source("embedded", str(tmp_path / "embedded"))  # the name means the corpus, not the file
    assert same_source("tfds:x", "tfds:x") and not same_source("tfds:x", "tfds:y")


def test_directory_documents_name_the_documents_load_documents_gives(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    files = (("b.txt", b"bee\n"), ("sub/a.txt", b"ay\n"), ("empty", b""), (".hidden", b"no\n"), ("a.txt", b"a\n"))
    for rel, text in files:
        (tmp_path / "d" / rel).write_bytes(text)
    names = directory_documents(str(tmp_path / "d"))
    docs = load_documents(str(tmp_path / "d"), "train", eval_fraction=0.0)
    assert [Path(n).read_bytes() for n in names] == list(docs) == [b"a\n", b"bee\n", b"ay\n"]
    assert [Path(n).relative_to(tmp_path / "d").as_posix() for n in names] == ["a.txt", "b.txt", "sub/a.txt"]
    assert directory_documents(str(tmp_path / "d" / "a.txt")) is None and directory_documents("embedded") is None


def test_whole_documents_are_a_local_source_without_its_cut(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"line one\nline two\n" * 50)
    assert list(whole_documents(str(f))) == [f.read_bytes()]
    assert b"".join(load_documents(str(f), "train")) != f.read_bytes()  # the default cut would drop a tenth
    with pytest.raises(ConfigError, match="read by split"):
        whole_documents("tfds:c4/en")
