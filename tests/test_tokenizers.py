"""Tokenizers: exact round trips, specials, save/load, errors, determinism."""

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcomp.data import tokenizers
from pcomp.data.embedded import embedded_documents
from pcomp.data.tokenizers import (
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    register_tokenizer,
)
from pcomp.errors import ConfigError, DataError

_WORDS = (
    "the of and to in is that for it as with was on be by at this are from or an not but which have "
    "model token patch window compress train loss byte text data über café naïve 東京 データ 😀 ▁ x\ty"
).split(" ")


def _small_corpus() -> list[bytes]:
    """~60 KB of word salad with unicode, tabs, runs of spaces and blank lines."""
    rng = random.Random(0)
    docs = []
    for _ in range(40):
        lines = []
        for _ in range(rng.randint(5, 30)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(0, 20))]
            lines.append((" " * rng.choice((1, 1, 1, 2, 4))).join(words))
        docs.append("\n".join(lines).encode("utf-8"))
    return docs


@pytest.fixture(scope="module")
def sp_tokenizer() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(_small_corpus(), vocab_size=500)


# --- bytes -------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_byte_round_trip_any_bytes(data):
    for tokenizer in (ByteTokenizer(), ByteTokenizer(specials=False)):
        ids = tokenizer.encode(data)
        assert ids.dtype == np.int32 and ids.shape == (len(data),)
        assert tokenizer.decode(ids) == data
        assert tokenizer.decode(list(ids)) == data


def test_byte_specials():
    tokenizer = ByteTokenizer()
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (258, 256, 257)
    assert tokenizer.decode([256, 104, 105, 257]) == b"hi"
    plain = ByteTokenizer(specials=False)
    assert (plain.vocab_size, plain.bos_id, plain.eos_id) == (256, None, None)
    with pytest.raises(ValueError, match="256"):
        plain.decode([256])
    with pytest.raises(ValueError):
        tokenizer.decode([-1])
    assert tokenizer.decode([]) == b""
    assert tokenizer.encode(b"\xff\x00").tolist() == [255, 0]
    with pytest.raises(TypeError):
        tokenizer.encode("text")


@pytest.mark.parametrize("specials", [True, False])
def test_byte_save_load(tmp_path, specials):
    tokenizer = ByteTokenizer(specials=specials)
    tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, ByteTokenizer)
    assert loaded.to_config() == tokenizer.to_config()
    assert loaded.vocab_size == tokenizer.vocab_size


# --- sentencepiece -------------------------------------------------------------


_TRICKY_TEXT = st.text(alphabet=st.sampled_from(list(" \t\n\r\u2581\u3000\xa0abé東😀\x00.")), max_size=200)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), _TRICKY_TEXT))
def test_sentencepiece_round_trip_any_text(sp_tokenizer, text):
    data = text.encode("utf-8")
    ids = sp_tokenizer.encode(data)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ((ids >= 0) & (ids < sp_tokenizer.vocab_size)).all()
    assert sp_tokenizer.unk_id not in ids.tolist()
    assert sp_tokenizer.decode(ids) == data


@pytest.mark.parametrize(
    "text",
    ["", " ", "   leading", "trailing  \n\n", "\u2581", "a\u2581\u2581 b", "tab\there\r\n", "  two  spaces  "],
)
def test_sentencepiece_round_trip_examples(sp_tokenizer, text):
    data = text.encode("utf-8")
    assert sp_tokenizer.decode(sp_tokenizer.encode(data)) == data


def test_sentencepiece_compresses_and_reports_specials(sp_tokenizer):
    assert sp_tokenizer.vocab_size == 500
    assert (sp_tokenizer.bos_id, sp_tokenizer.eos_id) == (1, 2)
    data = b"the model is in the text and the data"
    ids = sp_tokenizer.encode(data)
    assert len(ids) < len(data) / 2
    assert 1 not in ids.tolist() and 2 not in ids.tolist()
    with_specials = [sp_tokenizer.bos_id, *ids.tolist(), sp_tokenizer.eos_id]
    assert sp_tokenizer.decode(with_specials) == data
    with pytest.raises(ValueError):
        sp_tokenizer.decode([sp_tokenizer.vocab_size])


def test_sentencepiece_invalid_utf8_names_offset(sp_tokenizer):
    with pytest.raises(DataError, match="byte offset 3"):
        sp_tokenizer.encode(b"abc\xff\xfedef")
    with pytest.raises(DataError, match="training document 1.*byte offset 1"):
        SentencePieceTokenizer.train([b"fine", b"x\x80"], vocab_size=300)


def test_sentencepiece_save_load(sp_tokenizer, tmp_path):
    sp_tokenizer.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "sp.model").is_file()
    config = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert config["kind"] == "sentencepiece"
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.model_proto == sp_tokenizer.model_proto
    assert loaded.to_config() == sp_tokenizer.to_config()
    for doc in _small_corpus()[:5]:
        np.testing.assert_array_equal(loaded.encode(doc), sp_tokenizer.encode(doc))


def test_sentencepiece_training_is_deterministic(sp_tokenizer):
    again = SentencePieceTokenizer.train(_small_corpus(), vocab_size=500)
    assert again.model_proto == sp_tokenizer.model_proto


def test_sentencepiece_long_documents_are_chunked_for_training():
    long_line = ("é東😀" * 3000).encode("utf-8")  # 27 KB with no newline; multi-byte at every cut
    sentences = list(tokenizers._training_sentences([long_line, b"a\n" * 5000], 4192))
    assert all(len(s.encode("utf-8")) <= 4192 for s in sentences)
    assert "".join(sentences).encode("utf-8") == long_line + b"a\n" * 5000
    tokenizer = SentencePieceTokenizer.train([long_line], vocab_size=300)
    assert tokenizer.decode(tokenizer.encode(long_line)) == long_line


def test_sentencepiece_vocab_too_small():
    with pytest.raises(ConfigError, match="vocab_size"):
        SentencePieceTokenizer.train(_small_corpus(), vocab_size=100)


def test_sentencepiece_trains_on_embedded_corpus():
    docs = embedded_documents()  # ~1 MB
    tokenizer = SentencePieceTokenizer.train(docs, vocab_size=4096)
    assert tokenizer.vocab_size == 4096
    assert tokenizer.decode(tokenizer.encode(docs[0])) == docs[0]
    assert len(tokenizer.encode(docs[0])) < len(docs[0]) / 3


# --- loading, building, registry ---------------------------------------------------


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="missing_dir"):
        load_tokenizer(tmp_path / "missing_dir")
    (tmp_path / "tokenizer.json").write_text('{"kind": "nope"}')
    with pytest.raises(DataError, match="'nope'.*bytes"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(DataError, match="sp.model"):
        load_tokenizer(tmp_path)


def test_register_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizers, "_REGISTRY", dict(tokenizers._REGISTRY))

    @register_tokenizer("reversed-bytes")
    class ReversedBytes(Tokenizer):
        name = "reversed-bytes"
        vocab_size, bos_id, eos_id = 256, None, None

        def encode(self, data):
            return np.frombuffer(data[::-1], np.uint8).astype(np.int32)

        def decode(self, ids):
            return np.asarray(ids, np.uint8).tobytes()[::-1]

        def to_config(self):
            return {"kind": "reversed-bytes"}

        @classmethod
        def from_config(cls, config, directory):
            return cls()

    ReversedBytes().save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ReversedBytes)
    assert loaded.decode(loaded.encode(b"abc")) == b"abc"


def test_build_tokenizer(tmp_path):
    assert isinstance(build_tokenizer("bytes", None, vocab_size=None), ByteTokenizer)
    sp = build_tokenizer("sentencepiece", _small_corpus(), vocab_size=400)
    assert isinstance(sp, SentencePieceTokenizer) and sp.vocab_size == 400
    sp.save(tmp_path / "saved")
    loaded = build_tokenizer(str(tmp_path / "saved"), None, vocab_size=None)
    assert loaded.model_proto == sp.model_proto
    with pytest.raises(ConfigError, match="'bytes', 'sentencepiece'"):
        build_tokenizer("wordpiece", [], vocab_size=100)
    with pytest.raises(DataError, match="nowhere"):
        build_tokenizer(str(tmp_path / "nowhere"), [], vocab_size=100)
    with pytest.raises(ConfigError):
        build_tokenizer("sentencepiece", None, vocab_size=None)


# --- SentencePiece training sample ---------------------------------------------


def _numbered_docs(n=400, seed=1) -> list[bytes]:
    rng = random.Random(seed)
    return [(f"doc {i:04d}\n" + "".join(f"w{rng.randint(0, 99)} " for _ in range(rng.randint(5, 60)))).encode()
            for i in range(n)]


class _CountingDocs:
    """A random-access corpus that counts the bytes read from it."""

    def __init__(self, docs):
        self.docs, self.read = docs, 0

    def __len__(self):
        return len(self.docs)

    def __getitem__(self, i):
        self.read += len(self.docs[i])
        return self.docs[i]


@pytest.mark.parametrize("lazy", [False, True])
def test_training_sample_is_deterministic_bounded_and_from_across_the_corpus(lazy):
    docs = _numbered_docs()
    total = sum(map(len, docs))
    budget = total // 10
    source = (lambda: iter(docs)) if lazy else (lambda: docs)
    sample = tokenizers.sample_training_documents(source(), budget)
    assert sample == tokenizers.sample_training_documents(source(), budget)  # deterministic
    assert sample != tokenizers.sample_training_documents(source(), budget, seed=1)
    assert budget - max(map(len, docs)) <= sum(len(d) for _, d in sample) <= budget  # bounded, and filled
    indices = [i for i, _ in sample]
    assert indices == sorted(set(indices))  # corpus order, no repeats
    whole = [i for i, d in sample if d == docs[i]]
    assert len(whole) >= len(sample) - 1  # only the one crossing the budget is cut
    quarters = {i * 4 // len(docs) for i in indices}
    assert quarters == {0, 1, 2, 3}  # drawn from across the corpus, not a prefix


def test_training_sample_reads_about_the_budget_from_a_random_access_corpus():
    docs = _numbered_docs(2000)
    counting = _CountingDocs(docs)
    budget = sum(map(len, docs)) // 20
    tokenizers.sample_training_documents(counting, budget)
    assert counting.read <= budget + max(map(len, docs))


def test_training_sample_of_a_corpus_that_fits_is_the_corpus():
    docs = _small_corpus()
    for source in (docs, iter(docs)):
        assert tokenizers.sample_training_documents(source, 10**9) == list(enumerate(docs))


def test_training_sample_of_one_large_document_spans_it():
    doc = "".join(f"line {i:05d} of one long document\n" for i in range(5000)).encode()
    (i, got), = tokenizers.sample_training_documents([doc], len(doc) // 10)
    assert i == 0 and len(got) <= len(doc) // 10
    lines = got.decode().splitlines()
    assert lines and set(lines) <= set(doc.decode().splitlines())
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers[0] < 500 and numbers[-1] >= 4500  # from the whole document, not its start


def test_sentencepiece_trains_on_exactly_the_sample():
    docs = _numbered_docs(300)
    budget = sum(map(len, docs)) // 4
    sample = [d for _, d in tokenizers.sample_training_documents(docs, budget)]
    bounded = SentencePieceTokenizer.train(docs, vocab_size=300, max_train_bytes=budget)
    assert bounded.model_proto == SentencePieceTokenizer.train(sample, vocab_size=300).model_proto
    assert bounded.model_proto != SentencePieceTokenizer.train(docs, vocab_size=300).model_proto
