"""Compressed-text tokenizers (`pcomp.compress.tokenizers`): GZip, StaticAC, ArithmeticCoding and
EqualInfo (the last two driven by a trained M1 run directory), and the bits/codes <-> tokens packing."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pcomp.compress import plain_ac, windows
from pcomp.compress.packing import bits_to_tokens, codes_to_tokens, tokens_to_bits, tokens_to_codes
from pcomp.compress.tokenizers import (ArithmeticCodingTokenizer, EqualInfoTokenizer, GZipTokenizer,
                                       StaticACTokenizer)
from pcomp.compress.windows import decode_windows, encode_windows
from pcomp.data.embedded import embedded_documents
from pcomp.data.tokenizers import load_tokenizer
from pcomp.errors import CheckpointError, CompressedFormatError, ConfigError, DataError

M1_BATCH = 16  # M1 rows per step: small, so CPU steps are cheap
INVALID_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\xed\xa0\x80\xc0\xaf\x80"
UNICODE = "Grüße, 東京! — ünïcödé ✓ 🙂\n".encode()
EQUAL_INFO = [(16, 16, 2048), (16, 8, 128), (24, 8, 128)]  # (b, N, segment_bytes)
WINDOW_TOKEN_BITS = [(b, n) for b in (16, 24, 32, 40, 48, 56, 64) for n in (8, 16) if b % n == 0]

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def text():
    return b"".join(embedded_documents()[3:5])[:2000]


@pytest.fixture(scope="module")
def docs(text):
    return [b"", b"a", INVALID_UTF8, UNICODE * 2, text[:300]]


def check_ids(ids, token_bits):
    ids = np.asarray(ids)
    assert ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer)
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < 1 << token_bits)


def check_common(tok, token_bits):
    assert tok.vocab_size == 1 << token_bits and tok.token_bits == token_bits
    assert tok.bos_id is None and tok.eos_id is None


def check_saved(tok, directory, samples):
    tok.save(directory)
    loaded = load_tokenizer(directory)
    assert type(loaded) is type(tok) and loaded.to_config() == tok.to_config()
    for x in samples:
        assert np.array_equal(loaded.encode(x), tok.encode(x))
    return loaded


# ----------------------------------------------------------------------------- GZip
@FEW
@given(data=st.binary(max_size=3000), token_bits=st.sampled_from([8, 16]))
@example(data=b"", token_bits=16)
@example(data=INVALID_UTF8, token_bits=8)
def test_gzip_round_trip(data, token_bits):
    tok = GZipTokenizer(token_bits)
    check_common(tok, token_bits)
    ids = tok.encode(data)
    check_ids(ids, token_bits)
    assert tok.decode(ids) == data
    # the tokens are the raw DEFLATE stream (level 9, no header), big-endian, zero-padded
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = c.compress(data) + c.flush()
    assert len(ids) == -(-8 * len(raw) // token_bits)
    assert np.packbits(tokens_to_bits(ids, token_bits)).tobytes()[: len(raw)] == raw


def test_gzip_save_load(tmp_path, text):
    for n in (8, 16):
        check_saved(GZipTokenizer(n), tmp_path / f"gz{n}", [b"", text[:300], INVALID_UTF8])


# ----------------------------------------------------------------------------- StaticAC
@pytest.fixture(scope="module")
def static_fit_docs(text):
    return [text, UNICODE, b"aaaa"]


@FEW
@given(data=st.binary(max_size=2000), token_bits=st.sampled_from([8, 16]))
@example(data=b"", token_bits=8)
@example(data=bytes(range(256)), token_bits=16)  # mostly bytes never seen in the fit documents
def test_static_ac_round_trip(static_fit_docs, data, token_bits):
    tok = StaticACTokenizer.fit(static_fit_docs, token_bits)
    check_common(tok, token_bits)
    assert tok.freqs.shape == (257,) and tok.freqs.min() >= 1 and tok.freqs.sum() == 1 << 14
    ids = tok.encode(data)
    check_ids(ids, token_bits)
    assert tok.decode(ids) == data


def test_static_ac_fit_and_save_load(tmp_path, static_fit_docs, text):
    tok = StaticACTokenizer.fit(static_fit_docs, 16)
    loaded = check_saved(tok, tmp_path / "sac", [b"", text[:500], INVALID_UTF8])
    assert np.array_equal(loaded.freqs, tok.freqs) and loaded.precision == tok.precision
    f = tok.freqs
    assert f[ord("e")] > 10 * f[0x01]  # fitted: frequent text bytes cost less
    assert len(tok.encode(text[:500])) * 16 < 8 * 500  # and text compresses


def test_static_ac_rejects_bad_frequencies():
    good = StaticACTokenizer.fit([b"abc"], 8).freqs
    for bad in (good[:-1], np.where(np.arange(257) == 0, 0, good), good * 2):
        with pytest.raises(ConfigError, match="257 frequencies"):
            StaticACTokenizer(bad, 8)


# ----------------------------------------------------------------------------- ArithmeticCoding (M1)
@pytest.mark.parametrize("token_bits", [8, 16])
def test_arithmetic_coding_tokenizer(m1_run, docs, tmp_path, token_bits):
    tok = ArithmeticCodingTokenizer(m1_run, token_bits, batch=M1_BATCH)
    check_common(tok, token_bits)
    batch = tok.encode_batch(docs)
    streams = plain_ac.encode_docs(tok.m1, docs)
    for doc, ids, bits in zip(docs, batch, streams):
        check_ids(ids, token_bits)
        assert np.array_equal(ids, bits_to_tokens(bits, token_bits))
        assert np.array_equal(tok.encode(doc), ids)
        assert tok.decode(ids) == doc
    check_saved(tok, tmp_path / "ac", [docs[2], docs[3]])
    # saved by pcomp <= 0.1, whose name for this kind was "arith": it still loads, as "ac"
    path = tmp_path / "ac" / "tokenizer.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "kind": "arith"}))
    old = load_tokenizer(tmp_path / "ac")
    assert type(old) is ArithmeticCodingTokenizer and old.to_config() == {**tok.to_config(), "kind": "ac"}
    assert old.name == "ac" and old.decode(batch[2]) == docs[2]


# ----------------------------------------------------------------------------- EqualInfo (M1)
@pytest.mark.parametrize("b, token_bits, segment_bytes", EQUAL_INFO)
def test_equal_info_tokenizer(m1_run, docs, tmp_path, b, token_bits, segment_bytes):
    tok = EqualInfoTokenizer(m1_run, b, token_bits, segment_bytes=segment_bytes, batch=M1_BATCH)
    check_common(tok, token_bits)
    assert tok.window_bits == b
    batch = tok.encode_batch(docs)
    enc = encode_windows(tok.m1, docs, b, segment_bytes=segment_bytes)
    for i, (doc, ids) in enumerate(zip(docs, batch)):
        check_ids(ids, token_bits)
        n_windows = enc.doc_windows[i + 1] - enc.doc_windows[i]
        assert len(ids) == n_windows * b // token_bits
        assert np.array_equal(ids, codes_to_tokens(enc.doc_codes(i), b, token_bits))
        assert tok.decode(ids) == doc
    assert np.array_equal(tok.encode(docs[3]), batch[3])  # a document alone encodes the same
    # the concatenation of documents' tokens decodes to the concatenated documents
    assert tok.decode(np.concatenate(batch)) == b"".join(docs)
    check_saved(tok, tmp_path / "ei", [docs[2], docs[3]])


@pytest.mark.parametrize("kind", ["ac", "equal_info"])
def test_other_m1_fingerprint_is_a_checkpoint_error_on_use(m1_run, tmp_path, kind):
    if kind == "ac":
        tok = ArithmeticCodingTokenizer(m1_run, 16, batch=M1_BATCH)
    else:
        tok = EqualInfoTokenizer(m1_run, 16, 8, batch=M1_BATCH)
    ids = tok.encode(b"some text")
    tok.save(tmp_path / "tok")
    path = tmp_path / "tok" / "tokenizer.json"
    config = json.loads(path.read_text())
    assert config["fingerprint"] == tok.m1.fingerprint and len(config["fingerprint"]) == 64
    config["fingerprint"] = "0123456789abcdef" * 4  # as if the M1 at m1_path had been replaced
    path.write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path / "tok")  # loading is lazy ...
    with pytest.raises(CheckpointError, match="fingerprint 0123456789abcdef"):
        loaded.encode(b"some text")  # ... using it is not
    loaded = load_tokenizer(tmp_path / "tok")
    with pytest.raises(CheckpointError, match="not the M1"):
        loaded.decode(ids)


def test_bad_token_or_window_bits_are_config_errors(m1_run):
    with pytest.raises(ConfigError, match="N=12"):
        GZipTokenizer(12)
    with pytest.raises(ConfigError, match="N=4"):
        StaticACTokenizer.fit([b"abc"], 4)
    with pytest.raises(ConfigError, match="N=32"):
        ArithmeticCodingTokenizer(m1_run, 32)
    for b, n, needle in [(20, 16, "b=20"), (8, 8, "b=8"), (16, 12, "N=12"), (72, 8, "b=72")]:
        with pytest.raises(ConfigError, match=needle):
            EqualInfoTokenizer(m1_run, b, n)


# ----------------------------------------------------------------------------- malformed tokens
@pytest.fixture(scope="module")
def tokenizers(m1_run, static_fit_docs):
    return {
        "gzip8": GZipTokenizer(8),
        "gzip16": GZipTokenizer(16),
        "static": StaticACTokenizer.fit(static_fit_docs, 16),
        "ac": ArithmeticCodingTokenizer(m1_run, 8, batch=M1_BATCH),
        "ei16": EqualInfoTokenizer(m1_run, 16, 16, batch=M1_BATCH),
        "ei24": EqualInfoTokenizer(m1_run, 24, 8, batch=M1_BATCH),
    }


@pytest.mark.parametrize("name", ["gzip8", "gzip16", "static", "ac", "ei16", "ei24"])
def test_ids_out_of_range_are_data_errors(tokenizers, name):
    tok = tokenizers[name]
    top = tok.vocab_size
    for ids in ([top], [-1], [0, 0, top + 5], np.asarray([1 << 40], np.int64)):
        with pytest.raises(DataError, match="outside"):
            tok.decode(ids)


def test_truncated_or_invalid_gzip_is_a_data_error(tokenizers, text):
    for name in ("gzip8", "gzip16"):
        tok = tokenizers[name]
        ids = tok.encode(text)
        for cut in (0, 1, len(ids) // 3, len(ids) // 2, len(ids) - 3):
            with pytest.raises(DataError, match="gzip"):
                tok.decode(ids[:cut])
    with pytest.raises(DataError, match="DEFLATE"):
        tokenizers["gzip16"].decode([0xFFFF] * 4)  # block type 3 is invalid


def test_static_ac_without_end_of_document_is_a_data_error(tokenizers):
    with pytest.raises(DataError, match="end-of-document"):
        tokenizers["static"].decode([])


@pytest.mark.parametrize("name, count", [("ei16", 0), ("ei24", 1), ("ei24", 2), ("ei24", 4), ("ei24", 7)])
def test_partial_windows_are_data_errors(tokenizers, name, count):
    tok = tokenizers[name]
    ids = np.arange(count) % tok.vocab_size
    if count % (tok.window_bits // tok.token_bits) == 0:
        assert tok.decode(ids) == b""  # zero windows: nothing, and no error
        return
    with pytest.raises(DataError, match="whole windows"):
        tok.decode(ids)


def test_corrupt_equal_info_window_is_a_format_error(tokenizers):
    """A window code that decodes to no prefix within M1's context is rejected, not silently decoded."""
    tok = tokenizers["ei16"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        code = rng.integers(0, 1 << 16, 1).astype(np.uint64)
        try:
            decode_windows(tok.m1, code, 16)
        except CompressedFormatError:
            break
    else:
        pytest.fail("20 random 16-bit windows all decoded")
    with pytest.raises(CompressedFormatError, match="does not decode"):
        tok.decode(codes_to_tokens(code, 16, 16))


# ----------------------------------------------------------------------------- bits / codes <-> tokens
def naive_bits_to_tokens(bits, n):
    padded = list(bits) + [0] * (-len(bits) % n)
    out = []
    for i in range(0, len(padded), n):
        v = 0
        for x in padded[i : i + n]:
            v = 2 * v + x
        out.append(v)
    return out, padded


@settings(max_examples=150, deadline=None)
@given(bits=st.lists(st.integers(0, 1), max_size=130), n=st.sampled_from([8, 16]))
def test_bits_to_tokens_matches_naive_and_inverts(bits, n):
    toks = bits_to_tokens(np.asarray(bits, np.uint8), n)
    naive, padded = naive_bits_to_tokens(bits, n)
    assert toks.tolist() == naive
    assert tokens_to_bits(toks, n).tolist() == padded
    assert bits_to_tokens(tokens_to_bits(toks, n), n).tolist() == naive


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.sampled_from([8, 16]))
def test_tokens_to_bits_matches_naive_and_inverts(data, n):
    toks = data.draw(st.lists(st.integers(0, (1 << n) - 1), max_size=20))
    bits = tokens_to_bits(toks, n)
    assert bits.dtype == np.uint8
    assert bits.tolist() == [(t >> (n - 1 - i)) & 1 for t in toks for i in range(n)]
    assert bits_to_tokens(bits, n).tolist() == toks


@settings(max_examples=200, deadline=None)
@given(data=st.data(), bn=st.sampled_from(WINDOW_TOKEN_BITS))
def test_codes_to_tokens_matches_naive_and_inverts(data, bn):
    b, n = bn
    per = b // n
    codes = data.draw(st.lists(st.one_of(st.integers(0, (1 << b) - 1), st.just((1 << b) - 1), st.just(0)),
                               max_size=12))
    toks = codes_to_tokens(np.asarray(codes, np.uint64), b, n)
    naive = [(c >> ((per - 1 - i) * n)) & ((1 << n) - 1) for c in codes for i in range(per)]
    assert toks.tolist() == naive
    assert [int(c) for c in tokens_to_codes(toks, b, n)] == codes
    assert tokens_to_codes(toks, b, n).dtype == np.uint64
    # and tokens -> codes -> tokens for arbitrary tokens
    rand = data.draw(st.lists(st.integers(0, (1 << n) - 1), max_size=3 * per).filter(lambda t: len(t) % per == 0))
    assert codes_to_tokens(tokens_to_codes(rand, b, n), b, n).tolist() == rand


def test_packing_rejects_bad_tokens():
    with pytest.raises(DataError, match="outside"):
        tokens_to_bits([256], 8)
    with pytest.raises(DataError, match="outside"):
        tokens_to_codes([0, 1 << 16], 32, 16)
    with pytest.raises(DataError, match="whole windows"):
        tokens_to_codes([1, 2, 3], 32, 8)


def test_other_window_rule_is_refused_on_load(m1_run, tmp_path):
    """Windows made under another unique-decoding rule would decode to other bytes: refuse them."""
    tok = EqualInfoTokenizer(m1_run, 16, 8, batch=M1_BATCH)
    tok.save(tmp_path / "tok")
    path = tmp_path / "tok" / "tokenizer.json"
    config = json.loads(path.read_text())
    assert config["window_rule"] == windows.WINDOW_RULE
    config["window_rule"] = "shortest-match/0"
    path.write_text(json.dumps(config))
    with pytest.raises(DataError, match="shortest-match/0"):
        load_tokenizer(tmp_path / "tok")
