"""Equal-Info windows (`pcomp.compress.windows`) and plain AC (`pcomp.compress.plain_ac`) under an
in-memory M1 (a random test-tiny transformer, weights scaled up to make it peaky; no training).

Window bits are cross-checked against an independent path written here: M1's frequency tables for
a window's bytes recomputed one `M1.step` at a time in a fresh cache, and `arith.encode` (the plain
stream coder, not the windowed numba kernels) for the plain terminated codeword of every prefix,
plus a plain-Python port of the coder with exact (Fraction) intervals from which the module's rule
(unique prefix codewords) is recomputed; the encoder must agree with them exactly.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pcomp.compress import arith, plain_ac, windows
from pcomp.compress.m1 import M1
from pcomp.compress.windows import check_window_bits, decode_windows, encode_windows
from pcomp.config import Config, DataConfig
from pcomp.data.embedded import embedded_documents
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.errors import CompressedFormatError, ConfigError
from pcomp.models.transformer import Transformer
from pcomp.train.load import TrainedModel

PRECISION = 14
NO_PREV = np.zeros(1, np.int64)  # no shorter prefixes: the plain shortest codeword
BATCH = 16
MAX_SEQ_LEN = 32  # M1 context; a window holds at most MAX_SEQ_LEN - 1 bytes
WINDOW_BITS = (16, 24, 32, 64)
INVALID_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\xed\xa0\x80\xc0\xaf\x80"

FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- fixtures
def _trained(seed: int, scale: float) -> TrainedModel:
    """An untrained byte-level M1 whose 2-D weights are scaled by `scale` (peakier distributions)."""
    cfg = dataclasses.replace(Config.preset("test-tiny").model, vocab_size=258, max_seq_len=MAX_SEQ_LEN)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(seed)))
    params = jax.tree.map(lambda x: x * scale if x.ndim == 2 else x, params)
    return TrainedModel(Config(model=cfg, data=DataConfig(bos_first=True)), ByteTokenizer(), graphdef, params, 0,
                        Path("."))


@pytest.fixture(scope="module")
def trained():
    return _trained(0, 3.0)


@pytest.fixture(scope="module")
def m1(trained):
    """Moderately peaky: windows of a few bytes and plain-codeword collisions on text."""
    m = M1.for_windows(trained, None, precision=PRECISION, batch=BATCH)
    m.start()
    return m


@pytest.fixture(scope="module")
def peaky_m1():
    """Very peaky (weights x20): its own argmax continuation packs ~30 bytes into 64 bits."""
    m = M1.for_windows(_trained(1, 20.0), None, precision=PRECISION, batch=BATCH)
    m.start()
    return m


@pytest.fixture(scope="module")
def text():
    return b"".join(embedded_documents()[:3])[:3000]


# ----------------------------------------------------------------------------- references
def freq_tables(m1: M1, window: bytes | np.ndarray) -> np.ndarray:
    """M1's frequency tables [len(window), 256] for the bytes of ONE window, recomputed here: the first
    is first_cum, each next one comes from one M1 step in a fresh cache, the window in row 0."""
    window = np.asarray(bytearray(window) if isinstance(window, bytes) else window, np.int64)
    tables = [np.diff(m1.first_cum)]
    cache = m1.start()
    tok, pos = np.zeros(m1.batch, np.int64), np.ones(m1.batch, np.int64)
    for i in range(1, len(window)):
        tok[0], pos[0] = window[i - 1], i
        cum, cache = m1.step(cache, tok, pos)
        tables.append(np.diff(cum[0]))
    return np.stack(tables)


def batched_freq_tables(m1: M1, cands: list[np.ndarray]) -> list[np.ndarray]:
    """`freq_tables` of up to m1.batch windows at once, window r in row r (relies on row invariance,
    which `test_m1_step_is_row_invariant` checks)."""
    assert len(cands) <= m1.batch
    out = [[np.diff(m1.first_cum)] for _ in cands]
    cache = m1.start()
    tok, pos = np.zeros(m1.batch, np.int64), np.ones(m1.batch, np.int64)
    for i in range(1, max(len(c) for c in cands)):
        for r, c in enumerate(cands):
            if i < len(c):
                tok[r], pos[r] = c[i - 1], i
        cum, cache = m1.step(cache, tok, pos)
        for r, c in enumerate(cands):
            if i < len(c):
                out[r].append(np.diff(cum[r]))
    return [np.stack(t) for t in out]


def padded(bits: np.ndarray, b: int) -> int:
    """A codeword of <= b bits, zero-padded on the right to b bits, as an int."""
    assert len(bits) <= b
    return int("".join(map(str, bits.tolist())) or "0", 2) << (b - len(bits))


def exact_intervals(symbols: np.ndarray, tables: np.ndarray) -> list[tuple[Fraction, Fraction]]:
    """The coder's exact interval [A, B) after each prefix, from a plain-Python port of the 32-bit
    Witten-Neal-Cleary coder written here (emitted bits as a list, A and B as Fractions)."""
    top, half, quarter = (1 << 32) - 1, 1 << 31, 1 << 30
    low, high, pending, bits, out = 0, top, 0, [], []
    for s, f in zip(symbols.tolist(), tables):
        cum = np.concatenate([[0], np.cumsum(f)]).tolist()
        rng = high - low + 1
        high = low + (rng * cum[s + 1] >> PRECISION) - 1
        low = low + (rng * cum[s] >> PRECISION)
        while True:
            if high < half:
                bits, pending = bits + [0] + [1] * pending, 0
            elif low >= half:
                bits, pending = bits + [1] + [0] * pending, 0
                low, high = low - half, high - half
            elif low >= quarter and high < 3 * quarter:
                pending, low, high = pending + 1, low - quarter, high - quarter
            else:
                break
            low, high = 2 * low, 2 * high + 1
        e = len(bits)
        mid = Fraction(int("".join(map(str, bits)) or "0", 2), 1 << e) + Fraction(1, 1 << (e + 1))
        unit = Fraction(1, 1 << (e + pending + 32))
        out.append((mid + (low - half) * unit, mid + (high + 1 - half) * unit))
    return out


def prefix_codewords(symbols: np.ndarray, tables: np.ndarray, b: int) -> tuple[list[int], bool]:
    """The module's rule, written independently: the padded codeword of prefix i is the shortest, then
    leftmost, dyadic block inside its exact interval whose padded value differs from those of prefixes
    1..i-1. Returns the codewords of symbols[:1], symbols[:2], ... while they fit in b bits, and whether
    the next prefix existed and did not fit."""
    words = []
    for lo, hi in exact_intervals(symbols, tables):
        word = None
        for k in range(1, b + 1):
            m = -((-lo.numerator << k) // lo.denominator)  # ceil(lo * 2^k)
            while Fraction(m + 1, 1 << k) <= hi and word is None:
                if m << (b - k) not in words:
                    word = m << (b - k)
                m += 1
            if word is not None:
                break
        if word is None:
            return words, True
        words.append(word)
    return words, False


def plain_codewords(symbols: np.ndarray, tables: np.ndarray, b: int, n: int) -> list[int | None]:
    """Padded plain shortest codewords (arith.encode, terminated) of the first n prefixes (None if > b)."""
    out = []
    for i in range(1, n + 1):
        bits = arith.encode(symbols[:i], tables[:i], PRECISION, terminate=True)
        out.append(padded(bits, b) if len(bits) <= b else None)
    return out


def window_spans(docs, enc, segment_bytes):
    """Per window: (doc index, start, end, end of its segment), offsets within the document."""
    spans = []
    for d, doc in enumerate(docs):
        off = 0
        for w in range(enc.doc_windows[d], enc.doc_windows[d + 1]):
            n = int(enc.window_bytes[w])
            spans.append((d, off, off + n, min((off // segment_bytes + 1) * segment_bytes, len(doc))))
            off += n
    return spans


def candidate(m1, doc, start, seg_end):
    """The bytes a window starting at `start` may cover: up to its segment's end and M1's context."""
    return np.frombuffer(doc, np.uint8)[start : min(seg_end, start + m1.max_window_bytes)].astype(np.int64)


def reference_window(m1, cand, tables, b):
    """(window length L, padded codeword of each prefix up to L, why the window ended)."""
    words, overflow = prefix_codewords(cand, tables, b)
    L = len(words)
    why = "overflow" if overflow else ("context" if L == m1.max_window_bytes else "segment")
    return L, words, why


def check_structure(m1, docs, enc, b, segment_bytes):
    codes, wb, dw = enc.codes, enc.window_bytes, enc.doc_windows
    assert codes.dtype == np.uint64 and enc.window_bits == b
    assert len(codes) == len(wb) == dw[-1]
    assert dw.shape == (len(docs) + 1,) and dw[0] == 0 and np.all(np.diff(dw) >= 0)
    assert int(wb.sum()) == sum(len(d) for d in docs)
    if b < 64:
        assert all(int(c) < 1 << b for c in codes), "a window code has more than b bits"
    assert np.all(wb >= 1) and np.all(wb <= m1.max_window_bytes)
    for d, doc in enumerate(docs):
        assert int(wb[dw[d] : dw[d + 1]].sum()) == len(doc)
        assert np.array_equal(enc.doc_codes(d), codes[dw[d] : dw[d + 1]])
    for _, start, end, seg_end in window_spans(docs, enc, segment_bytes):
        assert end <= seg_end, "a window crosses a segment boundary"


def round_trip(m1, docs, b, segment_bytes, chunk=None):
    reported = []
    enc = encode_windows(m1, docs, b, segment_bytes=segment_bytes, progress=reported.append)
    check_structure(m1, docs, enc, b, segment_bytes)
    assert sum(reported) == sum(len(d) for d in docs) and all(r > 0 for r in reported)
    data, lengths = decode_windows(m1, enc.codes, b, **({} if chunk is None else {"chunk": chunk}))
    assert data == b"".join(docs)
    assert np.array_equal(lengths, enc.window_bytes)
    return enc


def argmax_continuation(m1, n):
    """M1's own most likely byte sequence from BOS (n <= max_window_bytes bytes)."""
    seq = [int(np.argmax(np.diff(m1.first_cum)))]
    cache = m1.start()
    tok, pos = np.zeros(m1.batch, np.int64), np.ones(m1.batch, np.int64)
    for i in range(1, n):
        tok[0], pos[0] = seq[-1], i
        cum, cache = m1.step(cache, tok, pos)
        seq.append(int(np.argmax(np.diff(cum[0]))))
    return bytes(seq)


# ----------------------------------------------------------------------------- round trips
@FEW
@given(docs=st.lists(st.binary(max_size=400), min_size=1, max_size=4), b=st.sampled_from(WINDOW_BITS),
       segment_bytes=st.sampled_from([1, 3, 64, 100_000]))
@example(docs=[b""], b=16, segment_bytes=100_000)
@example(docs=[b"\x00"], b=64, segment_bytes=1)
@example(docs=[INVALID_UTF8, b"", b"x"], b=24, segment_bytes=3)
def test_round_trip_arbitrary_bytes(m1, docs, b, segment_bytes):
    round_trip(m1, docs, b, segment_bytes)


def test_decoding_in_chunks(m1, text):
    """decode_windows works through the windows `chunk` at a time: same bytes, lengths and progress."""
    docs = [text[:300], INVALID_UTF8, b"", text[300:400]]
    enc = round_trip(m1, docs, 24, 32, chunk=7)
    reported = []
    data, lengths = decode_windows(m1, enc.codes, 24, chunk=7, progress=reported.append)
    assert data == b"".join(docs) and np.array_equal(lengths, enc.window_bytes)
    assert len(reported) == -(-len(enc.codes) // 7) and sum(reported) == len(data)


@pytest.mark.parametrize("b", WINDOW_BITS)
def test_round_trip_special_inputs(m1, text, b):
    f = np.diff(m1.first_cum)
    top, rare = bytes([int(np.argmax(f))]), bytes([int(np.argmin(f))])
    rng = np.random.default_rng(b)
    long_doc = text + rng.integers(0, 256, 1500, dtype=np.uint8).tobytes() + INVALID_UTF8 * 20
    assert len(long_doc) > 4000
    round_trip(m1, [], b, 64)
    round_trip(m1, [b""], b, 64)
    round_trip(m1, [b"", b"", b""], b, 64)
    round_trip(m1, [bytes([i]) for i in range(256)], b, 2048)  # every single byte, one window each
    round_trip(m1, [INVALID_UTF8, b"", INVALID_UTF8[::-1]], b, 2048)
    round_trip(m1, [long_doc, text[:700]], b, 128)
    for segment_bytes in (5, 4096):  # runs of the likeliest and the least likely first byte
        round_trip(m1, [top * 150, rare * 150, b"\x00" * 40], b, segment_bytes)


def test_m1_first_cum_is_a_cumulative_table(m1):
    cum = m1.first_cum
    assert cum.shape == (257,) and cum[0] == 0 and cum[-1] == 1 << PRECISION
    assert np.all(np.diff(cum) >= 1)


def test_fingerprint_ignores_only_the_layer_loop_unroll(trained):
    """model.scan_unroll compiles the training forward only (M1 codes through decode_step, which always
    runs one block per loop iteration): the same weights under another unroll are the same M1, while any
    other model field makes another M1."""
    def fingerprint(**model) -> str:
        cfg = dataclasses.replace(trained.cfg, model=dataclasses.replace(trained.cfg.model, **model))
        return M1.for_windows(dataclasses.replace(trained, cfg=cfg), None, precision=PRECISION,
                              batch=BATCH).fingerprint
    assert trained.cfg.model.scan_unroll == 2
    assert fingerprint(scan_unroll=1) == fingerprint()
    assert fingerprint(rope_theta=20_000.0) != fingerprint()


# ----------------------------------------------------------------------------- each window alone
@pytest.mark.parametrize("b", WINDOW_BITS)
def test_each_window_decodes_alone(m1, text, b):
    rng = np.random.default_rng(100 + b)
    docs = [text[:400], rng.integers(0, 256, 150, dtype=np.uint8).tobytes(), b"\x00" * 5 + INVALID_UTF8]
    enc = round_trip(m1, docs, b, 48)
    spans = window_spans(docs, enc, 48)
    chosen = sorted({0, len(spans) - 1, int(np.argmax(enc.window_bytes)), *rng.choice(len(spans), 25)})
    for w in chosen:
        d, start, end, _ = spans[w]
        alone, lengths = decode_windows(m1, enc.codes[w : w + 1], b)
        assert alone == docs[d][start:end], f"window {w} decoded alone"
        assert lengths.tolist() == [end - start]


# ----------------------------------------------------------------------------- independent bits
def _cross_check(m1, docs, b, segment_bytes, which):
    """Check windows `which` (indices, negative from the end) against freq_tables (row 0) and the
    independent rule; return the reasons the checked windows ended and how many had a prefix whose
    plain codeword collided with a shorter prefix's (the ambiguity the rule resolves)."""
    enc = round_trip(m1, docs, b, segment_bytes)
    spans = window_spans(docs, enc, segment_bytes)
    reasons, collided = set(), 0
    for w in sorted({w % len(spans) for w in which}):
        d, start, end, seg_end = spans[w]
        cand = candidate(m1, docs[d], start, seg_end)
        tables = freq_tables(m1, cand)
        L, words, why = reference_window(m1, cand, tables, b)
        n, code = end - start, int(enc.codes[w])
        assert (n, code) == (L, words[-1]), f"window {w}: {n} bytes, reference {L} ({why})"
        assert len(set(words)) == len(words)  # the decoder's first match is the whole window
        # where the plain shortest codeword (arith.encode) is not taken by a shorter prefix, it is the one used
        plain = plain_codewords(cand, tables, b, L)
        for i, (u, p) in enumerate(zip(words, plain)):
            if p is not None and p not in words[:i]:
                assert u == p, f"window {w} prefix {i + 1}"
        collided += any(p in words[:i] for i, p in enumerate(plain) if p is not None)
        reasons.add(why)
    return reasons, collided


@pytest.mark.parametrize("b", WINDOW_BITS)
def test_window_bits_match_independent_coder(m1, peaky_m1, text, b):
    rng = np.random.default_rng(200 + b)
    docs = [text[:200], rng.integers(0, 256, 60, dtype=np.uint8).tobytes(), b"\x00\x00\x00" + INVALID_UTF8]
    reasons, _ = _cross_check(m1, docs, b, 64, [*range(8), -4, -3, -2, -1])
    assert "overflow" in reasons
    # short segments: windows end at the segment end
    reasons = _cross_check(m1, [text[:30]], b, 3 if b <= 24 else 5, range(4))[0]
    assert "segment" in reasons
    if b == 64:  # M1's argmax continuation is cheap enough to fill the whole context
        cont = argmax_continuation(peaky_m1, peaky_m1.max_window_bytes)
        reasons = _cross_check(peaky_m1, [cont + cont], b, 100_000, range(1))[0]
        assert reasons == {"context"}


@pytest.mark.parametrize("which", ["m1", "peaky_m1"])
def test_all_windows_match_batched_reference_and_collisions_occur(which, request, text):
    """Every window of some documents against the reference (16 windows per M1 pass); in windows of
    likely bytes, plain codewords of a prefix collide with a shorter prefix's (a likely byte leaves
    the codeword unchanged), and those windows still decode alone."""
    m1 = request.getfixturevalue(which)
    rng = np.random.default_rng(0)
    cheap = argmax_continuation(m1, 12)  # M1's likeliest bytes: long windows
    docs = [text[:300], rng.integers(1, 256, 100, dtype=np.uint8).tobytes(), (cheap + b"\x00\x00") * 6]
    seg = 25
    collided = []
    for b in (16, 24, 32):
        enc = round_trip(m1, docs, b, seg)
        spans = window_spans(docs, enc, seg)
        for g in range(0, len(spans), m1.batch):
            group = spans[g : g + m1.batch]
            cands = [candidate(m1, docs[d], s, e) for d, s, _, e in group]
            for i, ((d, start, end, _), cand, tables) in enumerate(
                    zip(group, cands, batched_freq_tables(m1, cands))):
                L, words, why = reference_window(m1, cand, tables, b)
                w = g + i
                assert (end - start, int(enc.codes[w])) == (L, words[-1]), f"b={b} window {w}"
                plain = plain_codewords(cand, tables, b, L)
                if any(p in words[:k] for k, p in enumerate(plain) if p is not None):
                    collided.append((b, w, docs[d][start:end], enc.codes[w : w + 1]))
    assert collided  # the ambiguity is common on text
    for b, w, window, code in collided[:20]:
        assert decode_windows(m1, code, b)[0] == window


# ----------------------------------------------------------------------------- ambiguity
@pytest.mark.parametrize("b", (32, 64))
def test_unique_decoding_rule_on_zero_bytes(m1, b):
    """Byte 0 codes as [0, f0): a run of zero bytes has the all-zero plain codeword at every length, so
    greedy packing with plain codewords is ambiguous. With unique prefix codewords the zero bytes still
    share a window, and each window decodes alone."""
    docs = [b"\x00" * 6, b"ab\x00\x00\x00\x00"]
    cand = np.zeros(6, np.int64)
    tables = freq_tables(m1, cand)
    assert set(plain_codewords(cand, tables, b, 3)) == {0}  # "0", "00", "000": one padded codeword
    L, words, _ = reference_window(m1, cand, tables, b)
    assert L >= 2 and words[0] == 0 and len(set(words)) == L
    enc = round_trip(m1, docs, b, 2048)
    assert enc.window_bytes[0] == L and int(enc.codes[0]) == words[-1]
    assert not np.array_equal(encode_windows(m1, docs, b, unique=False).codes, enc.codes)
    for w in range(len(enc.codes)):
        d, start, end, _ = window_spans(docs, enc, 2048)[w]
        assert decode_windows(m1, enc.codes[w : w + 1], b)[0] == docs[d][start:end]


def _coder_states(intervals):
    """windows._add_symbol from a fresh window, one state per prefix."""
    low, high, pending, E, e = 0, arith.TOP, 0, 0, 0
    states = []
    for c_lo, c_hi in intervals:
        low, high, pending, E, e = windows._add_symbol(np.int64(low), np.int64(high), np.int64(pending),
                                                       np.int64(E), np.int64(e), np.int64(c_lo),
                                                       np.int64(c_hi), PRECISION)
        states.append((low, high, pending, E, e))
    return states


@st.composite
def interval_lists(draw):
    n = draw(st.integers(1, 40))
    out = []
    for _ in range(n):
        width = draw(st.one_of(st.integers(1, 8), st.integers(1, 1 << PRECISION), st.just(1 << (PRECISION - 1))))
        c_lo = draw(st.one_of(st.just(0), st.just((1 << PRECISION) - width), st.integers(0, (1 << PRECISION) - width)))
        out.append((c_lo, c_lo + width))
    return out


@settings(max_examples=200, deadline=None)
@given(intervals=interval_lists(), b=st.sampled_from((16, 17, 24, 40, 63, 64)))
@example(intervals=[(0, 1 << (PRECISION - 1))] * 5, b=16)  # all-zero codewords: "0", "00", ...
@example(intervals=[(0, 3)] * 3, b=64)
@example(intervals=[((1 << PRECISION) - 1, 1 << PRECISION)] * 4, b=64)  # all-ones bits, k up to 64
def test_padded_codeword_matches_arith_encode(intervals, b):
    """The windowed coder's (k, padded codeword) of every prefix equals arith's terminated stream."""
    for i, state in enumerate(_coder_states(intervals), start=1):
        bits = arith.encode_intervals([c for c, _ in intervals[:i]], [c for _, c in intervals[:i]], PRECISION)
        k, word = windows._padded_codeword(*state, b, NO_PREV, 0)
        assert k == len(bits)
        if k <= b:
            assert word & ((1 << 64) - 1) == padded(bits, b)  # numba returns int64: compare the 64 bits
        else:
            assert word == 0


def test_padded_codeword_ambiguity_at_coder_level():
    """Two different prefixes, one padded codeword: the situation the unique-decoding rule resolves."""
    half = 1 << (PRECISION - 1)
    states = _coder_states([(0, half), (0, half), (0, half)])
    assert [windows._padded_codeword(*s, 16, NO_PREV, 0) for s in states] == [(1, 0), (2, 0), (3, 0)]
    # made unique against the shorter prefixes: "0", then "001" (not "00"), then "0001"... all distinct
    prev = np.zeros(3, np.int64)
    for i, s in enumerate(states):
        k, prev[i] = windows._padded_codeword(*s, 16, prev, i)
    assert prev.tolist() == [0, 0b001 << 13, 0b0001 << 12]
    # ... while a symbol in the upper half is not ambiguous with its prefix
    states = _coder_states([(half, 1 << PRECISION), (0, half)])
    assert [windows._padded_codeword(*s, 16, NO_PREV, 0) for s in states] == [(1, 1 << 15), (2, 1 << 15)]


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("b, needle", [(8, "b=8"), (12, "b=12"), (15, "b=15"), (20, "b=20"), (72, "b=72"),
                                       (128, "b=128")])
def test_bad_window_bits_is_a_config_error(m1, b, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        encode_windows(m1, [b"abc"], b)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        decode_windows(m1, np.zeros(1, np.uint64), b)


@pytest.mark.parametrize("b, n, precision, needles", [
    (8, 8, 14, ["b=8", "precision + 2 = 16"]),
    (16, 8, 15, ["b=16", "precision + 2 = 17"]),
    (24, 16, 14, ["b=24", "N=16"]),
    (20, 16, 14, ["b=20", "N=16"]),
    (16, 4, 14, ["N=4"]),
    (32, 32, 14, ["N=32"]),
    (80, 16, 14, ["b=80", "64"]),
])
def test_check_window_bits_names_the_value(b, n, precision, needles):
    with pytest.raises(ConfigError) as info:
        check_window_bits(b, n, precision)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize("b, n", [(16, 8), (16, 16), (24, 8), (64, 8), (64, 16), (48, 16)])
def test_check_window_bits_accepts_valid(b, n):
    check_window_bits(b, n, PRECISION)


def test_other_bad_settings(trained, m1):
    with pytest.raises(ConfigError, match="segment_bytes=0"):
        encode_windows(m1, [b"abc"], 16, segment_bytes=0)
    with pytest.raises(ConfigError, match="precision \\+ 2 = 22"):
        encode_windows(M1.for_windows(trained, None, precision=20, batch=BATCH), [b"abc"], 16)
    with pytest.raises(ConfigError, match="bytes"):
        encode_windows(M1.for_windows(trained, None, batch=BATCH, symbols="bytes+eos"), [b"abc"], 16)
    with pytest.raises(ConfigError, match="bytes\\+eos"):
        plain_ac.encode_docs(m1, [b"abc"])


# ----------------------------------------------------------------------------- corrupt windows
def test_code_wider_than_window_is_rejected(m1):
    with pytest.raises(CompressedFormatError, match="b=16"):
        decode_windows(m1, np.asarray([1 << 16], np.uint64), 16)


def test_corrupt_window_is_a_format_error(m1):
    rng = np.random.default_rng(3)
    bad = None
    for _ in range(10):
        codes = rng.integers(0, 2**64 - 1, m1.batch, dtype=np.uint64, endpoint=True)
        try:
            data, lengths = decode_windows(m1, codes, 64)
        except CompressedFormatError as e:
            assert f"within {m1.max_window_bytes} bytes" in str(e)
            bad = codes[int(re.search(r"window (\d+)", str(e)).group(1))]
            break
        assert np.all(lengths <= m1.max_window_bytes) and len(data) == lengths.sum()
    assert bad is not None, "160 random 64-bit codes all decoded"
    with pytest.raises(CompressedFormatError, match="window 0 does not decode"):
        decode_windows(m1, np.asarray([bad], np.uint64), 64)
    # in a longer array, the error names the bad window's index (also when decoding in chunks)
    with pytest.raises(CompressedFormatError, match="window 3 does not decode"):
        decode_windows(m1, np.asarray([0, 0, 0, bad], np.uint64), 64)
    with pytest.raises(CompressedFormatError, match="window 7 does not decode"):
        decode_windows(m1, np.asarray([0] * 7 + [bad, 0], np.uint64), 64, chunk=3)


# ----------------------------------------------------------------------------- row invariance
def test_m1_step_is_row_invariant(m1):
    """A row's tables depend only on its own bytes, not on its row, the other rows, or what its cache
    held before (stale positions past the current one): what makes 'each window alone' work."""
    B, n = m1.batch, 6
    rng = np.random.default_rng(11)
    window = rng.integers(0, 256, n)

    def run(row, others, stale):
        cache = m1.start()
        if stale:  # a previous, longer window in the same row (the encoder never clears the cache)
            for i in range(1, 12):
                cache = m1.step(cache, rng.integers(0, 256, B), np.full(B, i))[1]
        got = []
        for i in range(1, n):
            tok = rng.integers(0, 256, B) if others else np.zeros(B, np.int64)
            pos = rng.integers(1, MAX_SEQ_LEN, B) if others else np.ones(B, np.int64)
            tok[row], pos[row] = window[i - 1], i
            cum, cache = m1.step(cache, tok, pos)
            got.append(cum[row])
        return np.stack(got)

    ref = run(0, False, False)
    assert np.array_equal(ref[:, :1], np.zeros((n - 1, 1))) and np.all(ref[:, -1] == 1 << PRECISION)
    for row, others, stale in [(0, True, False), (5, True, False), (B - 1, False, True), (9, True, True)]:
        assert np.array_equal(run(row, others, stale), ref), (row, others, stale)


# ----------------------------------------------------------------------------- plain AC
@pytest.fixture(scope="module")
def m1_eos(trained):
    m = M1.for_windows(trained, None, precision=PRECISION, batch=BATCH, symbols="bytes+eos")
    m.start()
    return m


def _plain_round_trip(m1_eos, docs):
    """Both stream ends: M1's EOS (the stream alone gives the length) and none (the caller knows it)."""
    lengths = [len(d) for d in docs]
    for eos in (True, False):
        streams = plain_ac.encode_docs(m1_eos, docs, eos=eos)
        assert len(streams) == len(docs)
        for s in streams:
            assert s.dtype == np.uint8 and set(np.unique(s).tolist()) <= {0, 1}
        out = plain_ac.decode_docs(m1_eos, streams, max_bytes=max(plain_ac.max_symbols(len(s), m1_eos)
                                                                    for s in streams),
                                   lengths=None if eos else lengths)
        assert out == list(docs)
        for doc, s in zip(docs, streams):  # minimal termination: < 2 bits over the ideal code length
            ideal = plain_ac.ideal_bits(m1_eos, [doc], eos=eos)
            slack = 1e-3 * (len(doc) + 1)  # finite-precision coder rounding
            assert ideal - slack <= len(s) < ideal + 2 + slack
        total_ideal = plain_ac.ideal_bits(m1_eos, docs, eos=eos)
        assert sum(len(s) for s in streams) - total_ideal < 2 * len(docs) + 1e-3 * sum(len(d) + 1 for d in docs)


def test_plain_ac_round_trip_fixed(m1_eos, text):
    rng = np.random.default_rng(5)
    docs = [b"", b"a", INVALID_UTF8, text[:250], rng.integers(0, 256, 90, dtype=np.uint8).tobytes(),
            b"\x00" * 70, bytes([int(np.argmax(np.diff(m1_eos.first_cum)))]) * 65]  # > 2 context blocks
    _plain_round_trip(m1_eos, docs)


@FEW
@given(docs=st.lists(st.binary(max_size=80), min_size=1, max_size=5))
def test_plain_ac_round_trip_arbitrary(m1_eos, docs):
    _plain_round_trip(m1_eos, docs)


def test_plain_ac_stream_past_max_bytes_is_a_format_error(m1_eos, text):
    streams = plain_ac.encode_docs(m1_eos, [text[:40]])
    with pytest.raises(CompressedFormatError, match="without EOF"):
        plain_ac.decode_docs(m1_eos, streams, max_bytes=39)
    assert plain_ac.decode_docs(m1_eos, streams, max_bytes=40) == [text[:40]]
