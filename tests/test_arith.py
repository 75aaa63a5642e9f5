"""Tests for pcomp.compress.arith against independent pure-Python references written here.

The reference coder replays the specified integer arithmetic and, separately, tracks the exact
absolute interval [A, B) in Fractions (frame origin and width, halved on every renormalization);
the terminated stream must be exactly the shortest dyadic codeword inside [A, B).
"""

import itertools
import math
from fractions import Fraction

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pcomp.compress import arith
from pcomp.compress.arith import (decode, decode_step, decode_target, decoder_init, encode, encode_intervals,
                                  encode_symbol, find_symbol, ideal_code_length, max_encoded_bits,
                                  shortest_dyadic, termination_bits, termination_length)

TOP, HALF, QUARTER = 2**32 - 1, 2**31, 2**30  # restated here on purpose


# ----------------------------------------------------------------------------- references


def intervals_of(symbols, freqs):
    """[(c_lo, c_hi)] per symbol for a static [n] or per-position [N, n] table (plain Python)."""
    out = []
    for i, s in enumerate(symbols):
        row = [int(x) for x in (freqs[i] if np.ndim(freqs) == 2 else freqs)]
        out.append((sum(row[:s]), sum(row[:s + 1])))
    return out


def ref_encode_step(low, high, pending, c_lo, c_hi, precision):
    """The specified encoder step in plain Python: (low, high, pending, bits, renormalization actions)."""
    rng = high - low + 1
    high = low + (rng * c_hi >> precision) - 1
    low = low + (rng * c_lo >> precision)
    bits, actions = [], []
    while True:
        if high < HALF:
            bits += [0] + [1] * pending
            pending = 0
            actions.append("low half")
        elif low >= HALF:
            bits += [1] + [0] * pending
            pending = 0
            low, high = low - HALF, high - HALF
            actions.append("high half")
        elif low >= QUARTER and high < 3 * QUARTER:
            pending += 1
            low, high = low - QUARTER, high - QUARTER
            actions.append("middle half")
        else:
            return low, high, pending, bits, actions
        low, high = 2 * low, 2 * high + 1


def ref_decode_step(low, high, value, c_lo, c_hi, precision, stream):
    """The mirrored decoder step in plain Python; `stream` yields the next bits. Returns (low, high, value)."""
    rng = high - low + 1
    high = low + (rng * c_hi >> precision) - 1
    low = low + (rng * c_lo >> precision)
    while True:
        if high < HALF:
            pass
        elif low >= HALF:
            low, high, value = low - HALF, high - HALF, value - HALF
        elif low >= QUARTER and high < 3 * QUARTER:
            low, high, value = low - QUARTER, high - QUARTER, value - QUARTER
        else:
            return low, high, value
        low, high, value = 2 * low, 2 * high + 1, 2 * value + next(stream)


def reference_coder(intervals, precision):
    """Replay the integer coder and track the absolute interval independently in Fractions.

    Returns (emitted bits, low, high, pending, (A, B) from the closed form, (A, B) tracked).
    """
    low, high, pending, emitted = 0, TOP, 0, []
    a, b = Fraction(0), Fraction(1)  # exact absolute interval [a, b)
    origin, width = Fraction(0), Fraction(1)  # register frame: register x <-> origin + x * width / 2^32
    for c_lo, c_hi in intervals:
        rng = high - low + 1
        unit = width / 2**32
        assert (b - a) / unit == rng
        a, b = a + (rng * c_lo >> precision) * unit, a + (rng * c_hi >> precision) * unit
        low, high, pending, bits, actions = ref_encode_step(low, high, pending, c_lo, c_hi, precision)
        emitted += bits
        for action in actions:  # the same decisions, taken on the absolute interval
            mid = origin + width / 2
            if action == "low half":
                assert b <= mid
            elif action == "high half":
                assert a >= mid
                origin = mid
            else:
                assert origin + width / 4 <= a and b <= origin + 3 * width / 4
                origin += width / 4
            width /= 2
        assert a < origin + width / 2 < b  # renormalized: the interval straddles the frame's middle
    e = len(emitted)
    value = Fraction(int("".join(map(str, emitted)) or "0", 2), 2**e)
    scale = Fraction(1, 2 ** (e + pending + 32))
    closed = (value + Fraction(1, 2 ** (e + 1)) + (low - HALF) * scale,
              value + Fraction(1, 2 ** (e + 1)) + (high + 1 - HALF) * scale)
    return emitted, low, high, pending, closed, (a, b)


def as_fraction(bits):
    """Bits read as the binary fraction 0.b1 b2 ..."""
    return Fraction(int("".join(map(str, bits)) or "0", 2), 2 ** len(bits))


# ----------------------------------------------------------------------------- strategies


def random_table(rng, n, precision, kind):
    """One frequency table [n] summing to 2**precision, all entries >= 1 (except kind 'zeros')."""
    total = 2**precision
    if kind == "cuts":  # uniformly random composition
        cuts = np.sort(rng.choice(total - 1, n - 1, replace=False) + 1)
        return np.diff(np.concatenate([[0], cuts, [total]]))
    if kind == "skewed":  # one symbol takes everything but n - 1 units
        f = np.ones(n, dtype=np.int64)
        f[rng.integers(n)] = total - (n - 1)
        return f
    if kind == "zeros":  # unused symbols with frequency 0
        f = np.zeros(n, dtype=np.int64)
        support = rng.choice(n, rng.integers(1, n + 1), replace=False)
        f[support] = 1
        f[support[0]] += total - support.size
        return f
    # "geometric": dynamic range of 2^40 in the weights, quantized by the rule in the test
    w = 2.0 ** -rng.uniform(0, 40, n)
    f = 1 + np.floor(w / w.sum() * (total - n)).astype(np.int64)
    f[np.argmax(w)] += total - f.sum()
    return f


@st.composite
def coding_cases(draw, max_len=300, per_position=None):
    """(symbols [N], freqs [n] or [N, n], precision) with skewed tables, rare-symbol runs, empty/len-1 streams."""
    n = draw(st.integers(2, 300))
    precision = draw(st.integers(max(2, math.ceil(math.log2(n)) + 1), 24))
    length = draw(st.one_of(st.just(0), st.just(1), st.integers(0, max_len)))
    per_position = draw(st.booleans()) if per_position is None else per_position
    kinds = ["cuts", "skewed", "geometric"] if per_position else ["cuts", "skewed", "geometric", "zeros"]
    kind = draw(st.sampled_from(kinds))
    mode = draw(st.sampled_from(["iid", "rare_runs", "uniform"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tables = [random_table(rng, n, precision, kind) for _ in range(length if per_position else 1)]
    symbols = []
    for i in range(length):
        f = tables[i if per_position else 0]
        support = np.flatnonzero(f)
        if mode == "iid":
            s = rng.choice(n, p=f / f.sum())
        elif mode == "rare_runs":  # long runs of the least likely symbol
            s = support[np.argmin(f[support])] if rng.random() < 0.8 else rng.choice(support)
        else:
            s = rng.choice(support)
        symbols.append(int(s))
    freqs = np.array(tables) if per_position else tables[0]
    if per_position and length == 0:
        freqs = np.zeros((0, n), dtype=np.int64)
    return np.array(symbols, dtype=np.int64), freqs, precision


# ----------------------------------------------------------------------------- exact termination


def test_shortest_dyadic_known_vector():
    assert shortest_dyadic(Fraction("0.322"), Fraction("0.341")) == (7, 0b0101010)
    assert shortest_dyadic(0, 1) == (0, 0)
    assert shortest_dyadic(Fraction(1, 4), Fraction(3, 4)) == (2, 1)  # two fit; the smaller m wins


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1000), st.data())
def test_shortest_dyadic_brute_force(den, data):
    lo_num = data.draw(st.integers(0, den - 1))
    hi_num = data.draw(st.integers(lo_num + 1, den))
    k, m = shortest_dyadic(Fraction(lo_num, den), Fraction(hi_num, den))
    # every (kk, mm) up to level k, in order: lo <= mm / 2^kk and (mm + 1) / 2^kk <= hi, in integers
    fits = [(kk, mm) for kk in range(k + 1) for mm in range(2**kk)
            if lo_num * 2**kk <= mm * den and (mm + 1) * den <= hi_num * 2**kk]
    assert fits and fits[0] == (k, m)


@settings(max_examples=300, deadline=None)
@given(coding_cases(max_len=60))
def test_termination_is_shortest_codeword_of_exact_interval(case):
    symbols, freqs, precision = case
    emitted, low, high, pending, closed, tracked = reference_coder(intervals_of(symbols, freqs), precision)
    assert closed == tracked  # closed form in (E, e, p, low, high) == composed absolute updates
    a, b = tracked
    k, m = shortest_dyadic(a, b)
    # no codeword of length k - 1 (hence none shorter: a fitting dyadic interval has fitting children)
    if k > 0:
        m1 = math.ceil(a * 2 ** (k - 1))
        assert Fraction(m1 + 1, 2 ** (k - 1)) > b
    assert termination_length(low, high, pending, len(emitted)) == k

    bits = encode(symbols, freqs, precision)
    assert bits.dtype == np.uint8 and len(bits) == k
    assert bits.tolist() == ([int(c) for c in format(m, f"0{k}b")] if k else [])
    x = as_fraction(bits.tolist())
    assert a <= x and x + Fraction(1, 2**k) <= b  # the codeword's whole dyadic interval lies in [A, B)
    assert bits[:len(emitted)].tolist() == emitted
    assert bits[len(emitted):].tolist() == termination_bits(low, high, pending).tolist()
    assert encode(symbols, freqs, precision, terminate=False).tolist() == emitted
    assert len(bits) <= max_encoded_bits(len(symbols), precision)


def test_termination_special_cases():
    assert termination_length(0, TOP, 0, 0) == 0  # empty message: empty stream
    assert encode([], np.array([2, 2]), 2).size == 0
    # [0, 1/2) then nothing pending: the state is full again after one shift, codeword "0"
    assert encode([0], np.array([2, 2]), 2).tolist() == [0]
    assert encode([1], np.array([2, 2]), 2).tolist() == [1]
    # one pending bit with a full register needs j = 1: t, then 1 - t
    assert termination_bits(0, TOP, 1).tolist() == [0, 1]
    assert termination_bits(QUARTER + 1, HALF + QUARTER + 1, 0).tolist() == [1, 0]


# ----------------------------------------------------------------------------- single steps


@st.composite
def coder_steps(draw):
    """A renormalized state (boundary values favoured), an interval, and a code value inside the narrowed state."""
    low = draw(st.one_of(st.sampled_from([0, 1, QUARTER - 1, QUARTER, QUARTER + 1, HALF - 1]),
                         st.integers(0, HALF - 1)))
    high = draw(st.one_of(st.sampled_from([HALF, HALF + 1, 3 * QUARTER - 1, 3 * QUARTER, 3 * QUARTER + 1, TOP]),
                          st.integers(HALF, TOP)))
    if low >= QUARTER and high < 3 * QUARTER:  # not a renormalized state: widen it
        low = QUARTER - 1
    precision = draw(st.integers(2, 24))
    total = 2**precision
    c_lo = draw(st.one_of(st.sampled_from([0, total // 2, total - 1]), st.integers(0, total - 1)))
    c_hi = draw(st.one_of(st.sampled_from([c_lo + 1, total]), st.integers(c_lo + 1, total)))
    rng = high - low + 1
    lo_new, hi_new = low + (rng * c_lo >> precision), low + (rng * c_hi >> precision) - 1
    value = draw(st.one_of(st.sampled_from([lo_new, hi_new]), st.integers(lo_new, hi_new)))
    pending = draw(st.integers(0, 5))
    return low, high, pending, c_lo, c_hi, precision, value


def check_step(low, high, pending, c_lo, c_hi, precision, value, bits):
    """encode_symbol, decode_target and decode_step from one state == the plain-Python references."""
    out = np.zeros(64, dtype=np.uint8)
    got = encode_symbol(low, high, pending, c_lo, c_hi, precision, out, 3)
    ref_low, ref_high, ref_pending, ref_bits, _ = ref_encode_step(low, high, pending, c_lo, c_hi, precision)
    assert got == (ref_low, ref_high, ref_pending, 3 + len(ref_bits))
    assert out[3:got[3]].tolist() == ref_bits

    target = decode_target(low, high, value, precision)
    assert c_lo <= target < c_hi  # the code value selects exactly this interval
    got = decode_step(low, high, value, c_lo, c_hi, precision, bits, 0)
    ref = ref_decode_step(low, high, value, c_lo, c_hi, precision, itertools.chain(bits.tolist(), itertools.repeat(0)))
    assert got[:3] == ref and ref[0] <= ref[2] <= ref[1]
    assert got[3] == len(ref_bits) + ref_pending - pending  # one bit read per shift


@settings(max_examples=800, deadline=None)
@given(coder_steps(), st.integers(0, 2**64 - 1), st.integers(0, 64))
def test_single_steps_match_reference(step, stream_bits, n_bits):
    bits = np.array([(stream_bits >> i) & 1 for i in range(n_bits)], dtype=np.uint8)  # 0s past the end
    check_step(*step, bits)


def test_single_steps_at_register_boundaries():
    """Every pair of boundary registers, narrowed by boundary intervals, with boundary code values."""
    lows = [0, 1, QUARTER - 1, QUARTER, QUARTER + 1, HALF - 1]
    highs = [HALF, HALF + 1, 3 * QUARTER - 1, 3 * QUARTER, 3 * QUARTER + 1, TOP]
    bits = np.array([1, 0, 1, 1, 0, 0, 1], dtype=np.uint8)
    for low, high, precision in itertools.product(lows, highs, [2, 14, 24]):
        if low >= QUARTER and high < 3 * QUARTER:
            continue  # not a renormalized state
        total = 2**precision
        for c_lo, c_hi in [(0, total), (0, 1), (total - 1, total), (total // 4, 3 * total // 4), (1, total - 1)]:
            rng = high - low + 1
            lo_new, hi_new = low + (rng * c_lo >> precision), low + (rng * c_hi >> precision) - 1
            for value in {lo_new, hi_new, (lo_new + hi_new) // 2}:
                check_step(low, high, 2, c_lo, c_hi, precision, value, bits)


def test_one_symbol_can_take_precision_plus_two_shifts():
    """The buffer bound is tight: a width-1 symbol from rng = QUARTER + 65 at precision 24 shifts 26 times."""
    out = np.zeros(64, dtype=np.uint8)
    c = 12345
    low, high, pending, n_out = encode_symbol(QUARTER - 64, HALF, 0, c, c + 1, 24, out, 0)
    assert n_out + pending == 24 + 2 == max_encoded_bits(1, 24) - 3
    assert (low, high) == (0, TOP)


def test_decoder_reads_zeros_past_the_end():
    freqs = np.array([3, 5, 8])
    assert decode([], freqs, 4, 4).tolist() == [0, 0, 0, 0]  # code value 0
    assert decode([1] * 40, freqs, 4, 4).tolist() == [2, 2, 2, 2]  # code value just below 1


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=500, deadline=None)
@given(coding_cases())
def test_round_trip(case):
    symbols, freqs, precision = case
    bits = encode(symbols, freqs, precision)
    assert set(bits.tolist()) <= {0, 1}
    assert len(bits) <= max_encoded_bits(len(symbols), precision)
    decoded = decode(bits, freqs, len(symbols), precision)
    assert decoded.tolist() == symbols.tolist()
    # trailing zeros are what the decoder reads past the end anyway
    padded = np.concatenate([bits, np.zeros(40, dtype=np.uint8)])
    assert decode(padded, freqs, len(symbols), precision).tolist() == symbols.tolist()
    # encode_intervals with the same intervals gives the same stream; decoding is deterministic
    c = np.array(intervals_of(symbols, freqs), dtype=np.int64).reshape(-1, 2)
    assert encode_intervals(c[:, 0], c[:, 1], precision).tolist() == bits.tolist()
    assert encode(symbols, freqs, precision).tolist() == bits.tolist()


@settings(max_examples=100, deadline=None)
@given(coding_cases(max_len=80))
def test_scalar_api_composes_to_stream_api(case):
    """encode_symbol / write_termination and decoder_init / decode_target / decode_step rebuild the streams."""
    symbols, freqs, precision = case
    ivals = intervals_of(symbols, freqs)
    out = np.zeros(max_encoded_bits(len(symbols), precision), dtype=np.uint8)
    low, high, pending, n_out = 0, TOP, 0, 0
    for c_lo, c_hi in ivals:
        low, high, pending, n_out = encode_symbol(low, high, pending, c_lo, c_hi, precision, out, n_out)
    n_end = arith.write_termination(low, high, pending, out, n_out)
    bits = encode(symbols, freqs, precision)
    assert out[:n_end].tolist() == bits.tolist()

    low, high, value, pos = decoder_init(bits)
    for i, (c_lo, c_hi) in enumerate(ivals):
        target = decode_target(low, high, value, precision)
        assert c_lo <= target < c_hi
        row = freqs[i] if np.ndim(freqs) == 2 else freqs
        assert find_symbol(np.concatenate([[0], np.cumsum(row)]).astype(np.int64), target) == symbols[i]
        low, high, value, pos = decode_step(low, high, value, c_lo, c_hi, precision, bits, pos)


@numba.njit
def _uint64_state_coder(c_lo, c_hi, precision, cum, out):
    """A caller holding the state in uint64: encodes, terminates, then decodes with the scalar API."""
    low, high, pending, n = np.uint64(0), np.uint64(TOP), np.uint64(0), 0
    for i in range(c_lo.shape[0]):
        low, high, pending, n = encode_symbol(low, high, pending, c_lo[i], c_hi[i], precision, out, n)
    k = termination_length(low, high, pending, n)
    n = arith.write_termination(low, high, pending, out, n)
    bits = out[:n]
    decoded = np.empty(c_lo.shape[0], dtype=np.int64)
    low, high, value, pos = decoder_init(bits)
    low, high, value = np.uint64(low), np.uint64(high), np.uint64(value)
    for i in range(c_lo.shape[0]):
        s = find_symbol(cum, decode_target(low, high, value, precision))
        decoded[i] = s
        low, high, value, pos = decode_step(low, high, value, cum[s], cum[s + 1], precision, bits, pos)
    return k, n, decoded


def test_scalar_api_accepts_uint64_state():
    rng = np.random.default_rng(7)
    f = np.array([1, 700, 3000, 12683])
    cum = np.concatenate([[0], np.cumsum(f)]).astype(np.int64)
    symbols = rng.choice(4, size=3000, p=f / f.sum())
    out = np.zeros(max_encoded_bits(len(symbols), 14), dtype=np.uint8)
    k, n, decoded = _uint64_state_coder(cum[symbols], cum[symbols + 1], 14, cum, out)
    bits = encode(symbols, f, 14)
    assert k == n == len(bits) and out[:n].tolist() == bits.tolist()
    assert decoded.tolist() == symbols.tolist()


@pytest.mark.parametrize("precision", [2, 9, 14, 20, 24])
def test_width_one_symbols_fit_the_buffer_bound(precision):
    """Width-1 intervals (the most shifts per symbol), at the edges and at random, stay within the bound."""
    rng = np.random.default_rng(precision)
    total = 2**precision
    c_lo = np.concatenate([rng.integers(0, total, 3000), np.zeros(300, int), np.full(300, total - 1),
                           np.tile([0, total - 1], 150)])
    out = np.zeros(8 * max_encoded_bits(1, precision), dtype=np.uint8)
    low, high, pending = 0, TOP, 0
    for c in c_lo.tolist():  # per symbol: shifts = new bits + new pending bits
        low, high, pending2, n_out = encode_symbol(low, high, pending, c, c + 1, precision, out, 0)
        assert n_out + pending2 - pending <= max_encoded_bits(1, precision) - 3
        pending = pending2
    bits = encode_intervals(c_lo, c_lo + 1, precision)
    assert len(bits) <= max_encoded_bits(len(c_lo), precision)
    if precision <= 20:  # n = 2**precision symbols of frequency 1
        assert decode(bits, np.ones(total, np.int32), len(c_lo), precision).tolist() == c_lo.tolist()


def test_long_stream_overhead_vs_ideal():
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, 257) ** 1.3  # skewed (Zipf) 256-ary
    f = 1 + np.floor(p / p.sum() * (2**14 - 256)).astype(np.int64)
    f[0] += 2**14 - f.sum()
    symbols = rng.choice(256, size=1_000_000, p=f / f.sum())
    bits = encode(symbols, f, 14)
    ideal = ideal_code_length(symbols, f, 14)
    assert ideal == pytest.approx(float(np.sum(14 - np.log2(f[symbols]))), rel=1e-12)
    overhead = (len(bits) - ideal) / ideal
    print(f"\n1e6 symbols: {len(bits)} bits, ideal {ideal:.1f}, overhead {100 * overhead:.6f}%")
    assert abs(overhead) <= 1e-4
    assert (decode(bits, f, len(symbols), 14) == symbols).all()


def test_per_position_fast_path_agrees_with_reference():
    rng = np.random.default_rng(5)
    n, length = 300, 2000  # n not a multiple of the block size
    freqs = np.array([random_table(rng, n, 14, "geometric") for _ in range(length)])
    symbols = np.array([rng.choice(n, p=row / row.sum()) for row in freqs])
    bits = encode(symbols, freqs, 14)
    c = np.array(intervals_of(symbols, freqs))
    assert bits.tolist() == encode_intervals(c[:, 0], c[:, 1], 14).tolist()
    assert decode(bits, freqs, length, 14).tolist() == symbols.tolist()
    assert decode(bits.astype(bool), freqs.astype(np.int16), length, 14).tolist() == symbols.tolist()


# ----------------------------------------------------------------------------- bad input


F4 = np.array([4, 4, 4, 4])  # precision 4
BAD_ENCODE = [
    (dict(symbols=[0, 4], freqs=F4), "symbol 4 at position 1"),
    (dict(symbols=[-1], freqs=F4), "symbol -1"),
    (dict(symbols=[0.5], freqs=F4), "symbols of dtype float64"),
    (dict(symbols=[[0]], freqs=F4), "shape"),
    (dict(symbols=[0], freqs=np.array([4, 4, 4, 5])), "sum to 17"),
    (dict(symbols=[0], freqs=np.array([8, 8, 4, -4])), "negative frequency"),
    (dict(symbols=[1], freqs=np.array([16, 0, 0, 0])), "symbol 1 at position 0 has frequency 0"),
    (dict(symbols=[0, 1], freqs=np.array([F4, [16, 0, 0, 0]])), "symbol 1 at position 1 has frequency 0"),
    (dict(symbols=[0, 1], freqs=np.array([F4, [4, 4, 4, 3]])), "table 1 sum to 15"),
    (dict(symbols=[0, 1], freqs=np.array([F4, [2**33, 4, 4, 4]])), "table 1 sum to"),
    (dict(symbols=[0, 1], freqs=np.array([F4, F4, F4])), "3 per-position tables"),
    (dict(symbols=[0], freqs=F4 / 16), "freqs of dtype float64"),
    (dict(symbols=[0], freqs=F4, precision=1), "precision=1"),
    (dict(symbols=[0], freqs=F4, precision=25), "precision=25"),
    (dict(symbols=[0], freqs=F4, precision="4"), "precision='4'"),
]


@pytest.mark.parametrize("kwargs, match", BAD_ENCODE)
def test_encode_rejects_bad_input(kwargs, match):
    kwargs = {"precision": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        encode(**kwargs)
    with pytest.raises(ValueError, match=match):
        ideal_code_length(**kwargs)


@pytest.mark.parametrize(
    "c_lo, c_hi, match",
    [([0, 3], [1, 3], r"\[3, 3\) at position 1"), ([-1], [2], r"\[-1, 2\)"), ([0], [17], r"\[0, 17\)"),
     ([0, 1], [2], "equal shapes")],
)
def test_encode_intervals_rejects_bad_input(c_lo, c_hi, match):
    with pytest.raises(ValueError, match=match):
        encode_intervals(c_lo, c_hi, 4)


@pytest.mark.parametrize(
    "bits, freqs, n_symbols, match",
    [([0, 2, 1], F4, 3, "bits contain 2"), ([0, -1], F4, 3, "bits contain -1"), ([0.5], F4, 1, "float64"),
     ([[0, 1]], F4, 1, "shape"), ([0, 1], F4, -1, "n_symbols=-1"), ([0, 1], F4, 1.0, "n_symbols=1.0"),
     ([0, 1], np.array([F4, F4]), 3, "2 per-position tables"),
     ([0, 1], np.array([F4, [4, 4, 9, 0]]), 2, "table 1 sum to 17"),
     ([0, 1], np.array([F4, [4, 4, 9, -1]]), 2, "table 1 contain a negative"),
     ([0, 1], np.array([4, 4, 4, 3]), 2, "sum to 15")],
)
def test_decode_rejects_bad_input(bits, freqs, n_symbols, match):
    with pytest.raises(ValueError, match=match):
        decode(bits, freqs, n_symbols, 4)


def test_termination_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="low=5 > high=4"):
        termination_bits(5, 4, 0)
    with pytest.raises(ValueError, match="high=4294967296"):
        termination_bits(0, TOP + 1, 0)
    with pytest.raises(ValueError, match="pending=-1"):
        termination_bits(0, TOP, -1)
    with pytest.raises(ValueError, match="expected 0 <= lo < hi <= 1"):
        shortest_dyadic(Fraction(1, 2), Fraction(1, 2))
