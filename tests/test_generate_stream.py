"""Generation through the stream codes (`pcomp.compress.generate.generate_text` with the tokenizers'
`prompt_ids` and `token_decoder`, `pcomp.compress.incremental`): M2 over gzip, static_ac and ac
(plain AC under M1) tokens, its sampled stream decoded as it grows."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pcomp.compress import arith
from pcomp.compress.generate import generate_text
from pcomp.compress.incremental import ArithStreamDecoder
from pcomp.compress.packing import tokens_to_bits
from pcomp.compress.tokenizers import ArithmeticCodingTokenizer, GZipTokenizer, StaticACTokenizer
from pcomp.config import Config
from pcomp.data.embedded import embedded_documents
from pcomp.errors import ConfigError
from pcomp.models.generate import generate
from pcomp.models.transformer import Transformer
from pcomp.train.load import TrainedModel

PROMPTS = [b"The ", "Grüße, 東京! ✓".encode(), b"\xff\xfe not UTF-8 \x00", b"x" * 300]
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def static_tok():
    return {n: StaticACTokenizer.fit([b"".join(embedded_documents()[:3])], n) for n in (8, 16)}


def _tokenizer(kind, n, static_tok, m1_run=None):
    if kind == "gzip":
        return GZipTokenizer(n)
    if kind == "static_ac":
        return static_tok[n]
    return ArithmeticCodingTokenizer(m1_run, n, batch=16)


def _decode_all(dec, ids) -> bytes:
    return b"".join(dec.feed(t) for t in ids)


def _random_m2(tok, seed: int) -> TrainedModel:
    """An untrained test-tiny M2 over the tokenizer's vocabulary, built in memory."""
    cfg = Config.preset("test-tiny").override(f"model.vocab_size={tok.vocab_size}", "model.max_seq_len=128")
    graphdef, params = nnx.split(Transformer(cfg.model, nnx.Rngs(params=seed)))
    return TrainedModel(cfg, tok, graphdef, params, 0, Path("."))


# ----------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("kind", ["gzip", "static_ac"])
def test_prompt_round_trips_through_compress_tokens_decode(kind, n, static_tok):
    tok = _tokenizer(kind, n, static_tok)
    rng = np.random.default_rng(0)
    for prompt in PROMPTS:
        ids = tok.prompt_ids(prompt)
        assert len(ids) > 0 and ids.max() < 1 << n
        out = _decode_all(tok.token_decoder(), ids)
        if kind == "gzip":  # a sync flush: exactly the prompt, and the stream goes on
            assert out == prompt
        else:  # the bits may already determine more bytes: the prompt comes first
            assert out[: len(prompt)] == prompt
        for _ in range(5):  # whatever M2 samples next, the prompt decodes first
            dec = tok.token_decoder()
            more = _decode_all(dec, [*ids, *rng.integers(0, 1 << n, 20)])
            assert more[: len(prompt)] == prompt or dec.error is not None


@pytest.mark.slow
@pytest.mark.parametrize("n", [8, 16])
def test_ac_prompt_round_trips_through_m1(n, m1_run, static_tok):
    tok = _tokenizer("ac", n, static_tok, m1_run)
    rng = np.random.default_rng(1)
    for prompt in PROMPTS[:3]:
        ids = tok.prompt_ids(prompt)
        assert _decode_all(tok.token_decoder(), ids)[: len(prompt)] == prompt
        more = _decode_all(tok.token_decoder(), [*ids, *rng.integers(0, 1 << n, 10)])
        assert more[: len(prompt)] == prompt
    # a whole document's tokens (with its end-of-document) decode incrementally to exactly it
    doc = b"The quick brown fox. " * 8
    dec = tok.token_decoder()
    assert _decode_all(dec, tok.encode(doc)) == doc and dec.done


def test_gzip_prompt_of_16_bit_tokens_is_padded_with_an_empty_stored_block():
    tok = GZipTokenizer(16)
    for prompt in (b"a", b"ab", b"hello hello hello"):
        raw = np.packbits(tokens_to_bits(tok.prompt_ids(prompt), 16)).tobytes()
        d = zlib.decompressobj(-15)
        assert d.decompress(raw) == prompt and not d.eof  # not a final block: the document goes on


# ----------------------------------------------------------------------------- incremental AC decoding
def _naive_decode(bits: np.ndarray, cum: np.ndarray, precision: int, n: int) -> list[int]:
    """Reference: the whole stream decoded at once, n symbols, 0 bits past the end."""
    return arith.decode(bits, np.diff(cum), n, precision).tolist()


@FEW
@given(tokens=st.lists(st.integers(0, 255), max_size=60), token_bits=st.sampled_from([8, 16]))
@example(tokens=[], token_bits=8)
@example(tokens=[255] * 40, token_bits=8)
@example(tokens=[0] * 40, token_bits=8)
def test_incremental_static_decoding_emits_exactly_what_the_bits_determine(static_tok, tokens, token_bits):
    tok = static_tok[token_bits]
    tokens = [t % (1 << token_bits) for t in tokens] if token_bits == 8 else [t * 257 for t in tokens]
    dec = tok.token_decoder()
    pieces = [dec.feed(t) for t in tokens]
    out = b"".join(pieces)
    bits = tokens_to_bits(tokens, token_bits) if tokens else np.zeros(0, np.uint8)
    cum = np.concatenate([[0], np.cumsum(tok.freqs)]).astype(np.int64)
    n = len(out) + 1
    padded = {pad: _naive_decode(np.concatenate([bits, np.full(64 + 16 * n, pad, np.uint8)]), cum, tok.precision, n)
              for pad in (0, 1)}
    # what was emitted is what the stream decodes to whatever follows (0s or 1s) ...
    assert padded[0][: len(out)] == padded[1][: len(out)] == list(out)
    # ... and the next symbol is either undetermined yet, or the end of the document (then `done`)
    assert (padded[0][len(out)] != padded[1][len(out)]) or (dec.done and padded[0][len(out)] == 256)
    # every prefix emitted no later than the whole stream would (pieces arrive as soon as determined)
    assert all(isinstance(p, bytes) for p in pieces)


@FEW
@given(data=st.binary(max_size=400), token_bits=st.sampled_from([8, 16]))
@example(data=b"", token_bits=16)
def test_incremental_static_decoding_of_a_document_ends_at_its_end(static_tok, data, token_bits):
    tok = static_tok[token_bits]
    dec = tok.token_decoder()
    assert isinstance(dec, ArithStreamDecoder)
    assert _decode_all(dec, tok.encode(data)) == data == tok.decode(tok.encode(data)) and dec.done


# ----------------------------------------------------------------------------- gzip
@FEW
@given(tokens=st.lists(st.integers(0, 65535), max_size=80), token_bits=st.sampled_from([8, 16]))
def test_gzip_sampled_tokens_decode_or_stop_once_never_raise(tokens, token_bits):
    tokens = [t % (1 << token_bits) for t in tokens]
    errors = []
    dec = GZipTokenizer(token_bits).token_decoder(errors.append)
    out = _decode_all(dec, tokens)
    raw = np.packbits(tokens_to_bits(tokens, token_bits)).tobytes() if tokens else b""
    ref = zlib.decompressobj(-15)
    try:  # reference: the whole stream at once
        expect, valid = ref.decompress(raw), True
    except zlib.error:
        expect, valid = None, False
    assert len(errors) == (0 if valid else 1) and (dec.error is None) == valid
    if valid:
        assert out == expect and dec.done == ref.eof
    else:
        assert dec.done and "valid DEFLATE stream" in errors[0]
        assert dec.feed(0) == b"" and len(errors) == 1  # reported once; nothing more


# ----------------------------------------------------------------------------- generation with a random M2
@pytest.mark.slow
@pytest.mark.parametrize("kind, n", [("gzip", 8), ("gzip", 16), ("static_ac", 8), ("static_ac", 16)])
def test_random_m2_streams_decode_or_stop_through_the_documented_path(kind, n, static_tok):
    tok = _tokenizer(kind, n, static_tok)
    run = _random_m2(tok, seed=3)
    prompt = b"The "
    for seed in range(3):
        chunks, errors = [], []
        out, dec = generate_text(run, prompt, max_tokens=24, temperature=1.0, top_k=0, seed=seed,
                                   on_bytes=chunks.append, on_warning=errors.append, echo_prompt=True)
        assert chunks[0] == prompt and b"".join(chunks[1:]) == out
        assert len(errors) <= 1 and (dec.error is None) == (not errors)
        # independently: the same samples (stopped where the decoder stopped), decoded from scratch
        ids = tok.prompt_ids(prompt)
        sampled = generate(run.graphdef, run.params, ids, max_new_tokens=24, max_len=128, temperature=1.0,
                           top_k=0, seed=seed)
        full, ref = _replay(tok, [*ids, *sampled])
        assert full == prompt + out and ref.done == dec.done and ref.error == dec.error


def test_generate_text_refuses_an_empty_prompt_and_one_past_the_context(static_tok):
    run = _random_m2(GZipTokenizer(8), seed=0)
    with pytest.raises(ConfigError, match="--prompt is empty"):
        generate_text(run, b"", max_tokens=4)
    with pytest.raises(ConfigError, match="max_tokens=0"):
        generate_text(run, b"x", max_tokens=0)
    with pytest.raises(ConfigError, match=r"is \d+ tokens \(400 bytes as gzip tokens\) but the model's context is 128"):
        generate_text(run, bytes(np.random.default_rng(0).integers(0, 256, 400, np.uint8)), max_tokens=4)


def test_a_byte_lm_generates_through_the_same_loop():
    """Bytes: BOS first, each id decoded alone, the text equal to decoding the sampled ids at once."""
    from pcomp.data.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    run = _random_m2(tok, seed=0)
    chunks = []
    out, dec = generate_text(run, b"ab", max_tokens=6, temperature=1.0, top_k=0, seed=2, on_bytes=chunks.append,
                             echo_prompt=True)
    sampled = generate(run.graphdef, run.params, np.asarray([tok.bos_id, 97, 98], np.int32), max_new_tokens=6,
                       max_len=128, temperature=1.0, top_k=0, seed=2, stop_id=tok.eos_id, bos_id=tok.bos_id)
    assert chunks[0] == b"ab" and b"".join(chunks[1:]) == out == tok.decode(sampled) and not dec.done


@pytest.mark.slow
def test_random_m2_over_ac_tokens_generates_through_m1(m1_run, static_tok):
    tok = _tokenizer("ac", 8, static_tok, m1_run)
    run = _random_m2(tok, seed=5)
    chunks = []
    out, dec = generate_text(run, b"The ", max_tokens=12, temperature=1.0, top_k=0, seed=1,
                               on_bytes=chunks.append, echo_prompt=True)
    assert b"".join(chunks) == b"The " + out and dec.error is None
    ids = tok.prompt_ids(b"The ")
    sampled = generate(run.graphdef, run.params, ids, max_new_tokens=12, max_len=128, temperature=1.0, top_k=0,
                       seed=1)
    full, _ = _replay(tok, [*ids, *sampled])
    assert full == b"The " + out


def _replay(tok, token_ids):
    """The independent reference: a fresh decoder fed the same tokens, stopped where it says the
    document ends; returns (its bytes, the decoder)."""
    ref = tok.token_decoder()
    full = b""
    for t in token_ids:
        full += ref.feed(t)
        if ref.done:
            break
    return full, ref
