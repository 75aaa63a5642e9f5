"""Finite-precision binary arithmetic coder (Witten-Neal-Cleary) with minimal exact termination.

State: 32-bit registers `low`, `high` (inclusive) and a count of `pending` follow bits, returned as
int64 (numba turns uint64 mixed with signed ints into float64, so int64 is the safe carrier; every
value is < 2**32 and rng * c < 2**56 for precision <= 24). The scalar functions cast their inputs,
so callers may hold the state in uint64 too. Symbol s codes as [cum[s], cum[s+1]) out of
2**precision. Bits are np.uint8 arrays with one 0/1 bit per element, in emission order.

Termination: after e emitted bits (value E) and p pending bits, the coder's exact interval is
  A = E/2^e + 2^-(e+1) + (low - HALF) * 2^-(e+p+32),  B = ... + (high + 1 - HALF) * 2^-(e+p+32),
and the stream ends with the shortest codeword whose dyadic interval [m/2^k, (m+1)/2^k) lies in
[A, B): k = e when nothing is narrowed yet (p == 0, low == 0, high == TOP), otherwise k = e + p + j
for the smallest j with a multiple m * 2^(32-j) >= low and (m+1) * 2^(32-j) <= high + 1
(j <= 3 after renormalization). The decoder reads 0 bits past the end of the stream.

Building blocks for other numba code (e.g. windowed coders): `narrow`, `renorm`, `encode_symbol`,
`termination_length`,
`write_termination`, `decoder_init`, `decode_target`, `find_symbol`, `decode_step`; an output
buffer for N symbols needs at most `max_encoded_bits(N, precision)` bits.
"""

from fractions import Fraction

import numba
import numpy as np

from pcomp.compress.quantize import DEFAULT_PRECISION, check_precision, cumulative

STATE_BITS = 32
TOP = (1 << STATE_BITS) - 1
HALF = 1 << (STATE_BITS - 1)
QUARTER = 1 << (STATE_BITS - 2)
THREE_QUARTERS = 3 * QUARTER
BLOCK = 16  # symbols per block sum when searching per-position tables


def max_encoded_bits(n_symbols, precision):
    """Upper bound on the terminated stream length for n_symbols (the size of an output buffer).

    Every bit or pending bit comes from one renormalization shift. A symbol leaves rng >= 2**(30 - precision)
    (rng > QUARTER before it, width >= 1) and shifts happen only while rng <= HALF, so <= precision + 2
    shifts per symbol; the termination adds j <= 3 bits.
    """
    return n_symbols * (precision + 2) + 3


# ----------------------------------------------------------------------------- scalar numba steps


FOLLOW = 2  # `renorm`: the shift is a pending follow bit (the interval straddles the middle)
DONE = -1  # `renorm`: the interval is wide enough, no shift


@numba.njit(cache=True)
def narrow(low, high, c_lo, c_hi, precision):
    """The interval [low, high] narrowed to the symbol's [c_lo, c_hi) out of 2**precision (int64)."""
    low = np.int64(low)
    rng = np.int64(high) - low + 1
    return low + ((rng * np.int64(c_lo)) >> precision), low + ((rng * np.int64(c_hi)) >> precision) - 1


@numba.njit(cache=True)
def renorm(low, high):
    """One renormalization step: (kind, low, high, offset), the interval doubled after subtracting
    offset (the decoder's value shifts the same way). kind 0 / 1: that bit is settled; FOLLOW: one
    more pending bit; DONE: the interval is wide enough, nothing changes."""
    if high < HALF:
        return 0, 2 * low, 2 * high + 1, 0
    if low >= HALF:
        return 1, 2 * (low - HALF), 2 * (high - HALF) + 1, HALF
    if low >= QUARTER and high < THREE_QUARTERS:
        return FOLLOW, 2 * (low - QUARTER), 2 * (high - QUARTER) + 1, QUARTER
    return DONE, low, high, 0


@numba.njit(cache=True)
def settle(low, high, pending):
    """Encoder renormalization up to the next settled bit: (bit or DONE, low, high, pending), where
    `pending` counts the follow bits (each the opposite of `bit`) that go out right after it."""
    while True:
        bit, low, high, _offset = renorm(low, high)
        if bit != FOLLOW:
            return bit, low, high, pending
        pending += 1


@numba.njit(cache=True)
def encode_symbol(low, high, pending, c_lo, c_hi, precision, out_bits, n_out):
    """Narrow to [c_lo, c_hi) / 2**precision (c_lo < c_hi), renormalize, write settled bits at out_bits[n_out:]."""
    pending = np.int64(pending)
    low, high = narrow(low, high, c_lo, c_hi, precision)
    while True:
        bit, low, high, pending = settle(low, high, pending)
        if bit == DONE:
            break
        out_bits[n_out] = bit  # the settled bit, then the pending follow bits (its opposite)
        n_out += 1
        for _ in range(pending):
            out_bits[n_out] = 1 - bit
            n_out += 1
        pending = 0
    return low, high, pending, n_out


@numba.njit(cache=True)
def termination_jm(low, high, pending):
    """(j, m) of the terminating codeword; j == 0 means no bits are needed beyond the emitted ones."""
    if pending == 0 and low == 0 and high == TOP:
        return 0, 0
    j = 1
    while True:  # ends by j == 32 at the latest: m = low, (low + 1) <= high + 1
        shift = STATE_BITS - j
        m = (low + (np.int64(1) << shift) - 1) >> shift  # ceil(low / 2^shift)
        if (m + 1) << shift <= high + 1:
            return j, m
        j += 1


@numba.njit(cache=True)
def termination_length(low, high, pending, n_emitted):
    """Total length k of the terminated stream, given the state and the n_emitted bits already written."""
    pending = np.int64(pending)
    j, _ = termination_jm(np.int64(low), np.int64(high), pending)
    if j == 0:
        return np.int64(n_emitted)
    return np.int64(n_emitted) + pending + j


@numba.njit(cache=True)
def write_termination(low, high, pending, out_bits, n_out):
    """Write the terminating bits (t, pending copies of 1-t, low j-1 bits of m) at out_bits[n_out:]; return n_out."""
    j, m = termination_jm(np.int64(low), np.int64(high), np.int64(pending))
    if j == 0:
        return n_out
    t = (m >> (j - 1)) & 1
    out_bits[n_out] = t
    n_out += 1
    for _ in range(pending):
        out_bits[n_out] = 1 - t
        n_out += 1
    for i in range(j - 2, -1, -1):
        out_bits[n_out] = (m >> i) & 1
        n_out += 1
    return n_out


@numba.njit(cache=True)
def decoder_init(bits):
    """Initial decoder state (low, high, value, pos): value holds the first 32 bits (0 past the end)."""
    value = np.int64(0)
    n_bits = bits.shape[0]
    for pos in range(STATE_BITS):
        value = 2 * value + (np.int64(bits[pos]) if pos < n_bits else 0)
    return np.int64(0), np.int64(TOP), value, np.int64(STATE_BITS)


@numba.njit(cache=True)
def decode_target(low, high, value, precision):
    """Scaled code point in [0, 2**precision): the coded symbol s has cum[s] <= target < cum[s+1]."""
    low = np.int64(low)
    value = np.int64(value)
    rng = np.int64(high) - low + 1
    return (((value - low + 1) << precision) - 1) // rng


@numba.njit(cache=True)
def find_symbol(cum, target):
    """Binary search in cum [n + 1] for the s with cum[s] <= target < cum[s+1] (skips zero-width symbols)."""
    target = np.int64(target)
    lo = 0
    hi = cum.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if cum[mid] <= target:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(cache=True)
def decode_step(low, high, value, c_lo, c_hi, precision, bits, pos):
    """Decoder mirror of `encode_symbol` for the decoded symbol's [c_lo, c_hi); returns (low, high, value, pos)."""
    value = np.int64(value)
    pos = np.int64(pos)
    n_bits = bits.shape[0]
    low, high = narrow(low, high, c_lo, c_hi, precision)
    while True:
        bit, low, high, offset = renorm(low, high)
        if bit == DONE:
            break
        value = 2 * (value - offset) + (np.int64(bits[pos]) if pos < n_bits else 0)
        pos += 1
    return low, high, value, pos


# ----------------------------------------------------------------------------- stream kernels


@numba.njit(cache=True)
def _encode_kernel(c_lo, c_hi, precision, terminate, out_bits):
    """Encode intervals c_lo/c_hi [N] into out_bits; return the number of bits written."""
    low = np.int64(0)
    high = np.int64(TOP)
    pending = np.int64(0)
    n_out = 0
    for i in range(c_lo.shape[0]):
        low, high, pending, n_out = encode_symbol(low, high, pending, c_lo[i], c_hi[i], precision, out_bits, n_out)
    if terminate:
        n_out = write_termination(low, high, pending, out_bits, n_out)
    return n_out


@numba.njit(cache=True)
def _check_row(row, precision, block_sum):
    """True iff row [n] is >= 0 and sums to 2**precision; fills block_sum [ceil(n / BLOCK)] with block totals.

    Values are first bounded by OR-ing them below 2**(precision + 1) (any valid value is <= 2**precision),
    so int32 block sums cannot overflow; one vectorizable pass over the row.
    """
    n = row.shape[0]
    n_full = n // BLOCK
    bits_or = np.int32(0)
    total = np.int64(0)
    for b in range(n_full):  # full blocks: constant trip count, vectorizes
        acc = np.int32(0)
        for s in range(b * BLOCK, b * BLOCK + BLOCK):
            acc += row[s]
            bits_or |= row[s]
        block_sum[b] = acc
        total += acc
    if n_full < block_sum.shape[0]:
        acc = np.int32(0)
        for s in range(n_full * BLOCK, n):
            acc += row[s]
            bits_or |= row[s]
        block_sum[n_full] = acc
        total += acc
    return bits_or >= 0 and (bits_or >> (precision + 1)) == 0 and total == (np.int64(1) << precision)


@numba.njit(cache=True)
def _row_intervals(symbols, freqs, precision):
    """Per-position [c_lo, c_hi) [N] of symbols [N] under tables freqs [N, n]; also the first bad row or -1."""
    c_lo = np.empty(symbols.shape[0], dtype=np.int64)
    c_hi = np.empty(symbols.shape[0], dtype=np.int64)
    block_sum = np.empty((freqs.shape[1] + BLOCK - 1) // BLOCK, dtype=np.int64)
    for i in range(symbols.shape[0]):
        row = freqs[i]
        if not _check_row(row, precision, block_sum):
            return c_lo, c_hi, i
        s = symbols[i]
        acc = np.int64(0)
        for b in range(s // BLOCK):
            acc += block_sum[b]
        for t in range(s - s % BLOCK, s):
            acc += row[t]
        c_lo[i] = acc
        c_hi[i] = acc + row[s]
    return c_lo, c_hi, -1


@numba.njit(cache=True)
def _decode_static_kernel(bits, cum, n_symbols, precision):
    """Decode n_symbols from bits with one cumulative table cum [n + 1]."""
    out = np.empty(n_symbols, dtype=np.int64)
    low, high, value, pos = decoder_init(bits)
    for i in range(n_symbols):
        s = find_symbol(cum, decode_target(low, high, value, precision))
        out[i] = s
        low, high, value, pos = decode_step(low, high, value, cum[s], cum[s + 1], precision, bits, pos)
    return out


@numba.njit(cache=True)
def _decode_tables_kernel(bits, freqs, precision):
    """Decode one symbol per row of freqs [N, n]; also the first bad row or -1.

    Each row is validated and block-summed in one pass (no [N, n + 1] cumulative table in memory),
    then searched block by block.
    """
    out = np.empty(freqs.shape[0], dtype=np.int64)
    block_sum = np.empty((freqs.shape[1] + BLOCK - 1) // BLOCK, dtype=np.int64)
    low, high, value, pos = decoder_init(bits)
    for i in range(freqs.shape[0]):
        row = freqs[i]
        if not _check_row(row, precision, block_sum):
            return out, i
        target = decode_target(low, high, value, precision)
        acc = np.int64(0)
        b = 0
        while acc + block_sum[b] <= target:
            acc += block_sum[b]
            b += 1
        s = b * BLOCK
        while acc + row[s] <= target:
            acc += row[s]
            s += 1
        out[i] = s
        low, high, value, pos = decode_step(low, high, value, acc, acc + row[s], precision, bits, pos)
    return out, -1


# ----------------------------------------------------------------------------- Python API


def _as_int_array(x, name, ndim):
    """x as an `ndim`-D integer (or bool) array; an empty list counts as integer."""
    a = np.asarray(x)
    if a.size == 0 and a.dtype == np.float64:
        a = a.astype(np.int64)
    if a.ndim != ndim or not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{name} of dtype {a.dtype} and shape {a.shape}: expected a {ndim}-D integer array")
    return a


def _check_freqs(freqs, precision, n_positions):
    """Validate a static [n] or per-position [n_positions, n] table; return it as contiguous int32.

    Per-position values (>= 0, rows summing to 2**precision) are checked inside the kernels, in the
    same pass that reads them; a row they reject is reported by `_table_error`.
    """
    f = np.asarray(freqs)
    if f.ndim not in (1, 2) or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"freqs of dtype {f.dtype} and shape {f.shape}: expected integers of shape (n,) "
                         f"or ({n_positions}, n)")
    if f.ndim == 2 and f.shape[0] != n_positions:
        raise ValueError(f"freqs has {f.shape[0]} per-position tables: expected one per symbol ({n_positions})")
    if f.shape[-1] < 1:
        raise ValueError("freqs has an empty alphabet: expected n >= 1 symbols")
    if f.ndim == 1 and _table_error(f, precision):
        raise ValueError(_table_error(f, precision))
    if f.ndim == 2 and f.itemsize > 4 and f.size:  # would wrap in int32: check before the cast
        bad = np.flatnonzero((f.min(axis=1) < 0) | (f.max(axis=1) > (1 << precision)))
        if bad.size:
            raise ValueError(_table_error(f[bad[0]], precision, f" table {bad[0]}"))
    return np.ascontiguousarray(f, dtype=np.int32)


def _table_error(row, precision, where=""):
    """Why row [n] is not a frequency table for 2**precision, or "" if it is one."""
    if row.min() < 0:
        return f"freqs{where} contain a negative frequency ({row.min()}): expected values >= 0"
    total = int(row.sum(dtype=np.int64))
    if total != 1 << precision:
        return f"freqs{where} sum to {total}: expected 2**precision = {1 << precision}"
    return ""


def _symbol_intervals(symbols, freqs, precision):
    """Validated [c_lo, c_hi) int64 [N] for symbols [N] under a static or per-position table."""
    symbols = _as_int_array(symbols, "symbols", 1).astype(np.int64)
    freqs = _check_freqs(freqs, precision, symbols.shape[0])
    n = freqs.shape[-1]
    bad = np.flatnonzero((symbols < 0) | (symbols >= n))
    if bad.size:
        raise ValueError(f"symbol {symbols[bad[0]]} at position {bad[0]}: expected 0 <= symbol < n = {n}")
    if freqs.ndim == 1:
        cum = cumulative(freqs)
        c_lo, c_hi = cum[symbols], cum[symbols + 1]
    else:
        c_lo, c_hi, bad_row = _row_intervals(symbols, freqs, precision)
        if bad_row >= 0:
            raise ValueError(_table_error(freqs[bad_row], precision, f" table {bad_row}"))
    zero = np.flatnonzero(c_hi == c_lo)
    if zero.size:
        raise ValueError(f"symbol {symbols[zero[0]]} at position {zero[0]} has frequency 0: expected >= 1 "
                         f"for every coded symbol")
    return c_lo, c_hi


def _encode_checked(c_lo, c_hi, precision, terminate):
    """Run the encode kernel on validated intervals and trim the output buffer."""
    out = np.empty(max_encoded_bits(c_lo.shape[0], precision), dtype=np.uint8)
    n_out = _encode_kernel(c_lo, c_hi, precision, bool(terminate), out)
    return out[:n_out].copy()


def encode(symbols, freqs, precision=DEFAULT_PRECISION, terminate=True):
    """Encode symbols [N] under freqs [n] (static) or [N, n] (per position) into bits (uint8 [k]).

    terminate=True appends the minimal termination; False returns only the settled bits (pending dropped).
    """
    precision = check_precision(precision)
    c_lo, c_hi = _symbol_intervals(symbols, freqs, precision)
    return _encode_checked(c_lo, c_hi, precision, terminate)


def encode_intervals(c_lo, c_hi, precision=DEFAULT_PRECISION, terminate=True):
    """Encode per-symbol intervals [c_lo[i], c_hi[i]) out of 2**precision (c_lo, c_hi: int [N]) into bits."""
    precision = check_precision(precision)
    c_lo = _as_int_array(c_lo, "c_lo", 1).astype(np.int64)
    c_hi = _as_int_array(c_hi, "c_hi", 1).astype(np.int64)
    if c_lo.shape != c_hi.shape:
        raise ValueError(f"c_lo has shape {c_lo.shape}, c_hi {c_hi.shape}: expected equal shapes")
    bad = np.flatnonzero((c_lo < 0) | (c_hi <= c_lo) | (c_hi > (1 << precision)))
    if bad.size:
        i = bad[0]
        raise ValueError(f"interval [{c_lo[i]}, {c_hi[i]}) at position {i}: expected "
                         f"0 <= c_lo < c_hi <= 2**precision = {1 << precision}")
    return _encode_checked(c_lo, c_hi, precision, terminate)


def decode(bits, freqs, n_symbols, precision=DEFAULT_PRECISION):
    """Decode n_symbols (int64 [n_symbols]) from bits (0/1 [k]) under freqs [n] or [n_symbols, n]."""
    precision = check_precision(precision)
    if isinstance(n_symbols, bool) or not isinstance(n_symbols, (int, np.integer)) or n_symbols < 0:
        raise ValueError(f"n_symbols={n_symbols!r}: expected an int >= 0")
    bits = _as_int_array(bits, "bits", 1)
    if bits.size and (bits.min() < 0 or bits.max() > 1):
        bad = bits[(bits < 0) | (bits > 1)][0]
        raise ValueError(f"bits contain {bad}: expected only 0 and 1")
    bits = np.ascontiguousarray(bits, dtype=np.uint8)
    freqs = _check_freqs(freqs, precision, int(n_symbols))
    if freqs.ndim == 1:
        return _decode_static_kernel(bits, cumulative(freqs), int(n_symbols), precision)
    symbols, bad_row = _decode_tables_kernel(bits, freqs, precision)
    if bad_row >= 0:
        raise ValueError(_table_error(freqs[bad_row], precision, f" table {bad_row}"))
    return symbols


def ideal_code_length(symbols, freqs, precision=DEFAULT_PRECISION):
    """Ideal code length in bits (float64): sum over i of -log2(f[s_i] / 2**precision)."""
    precision = check_precision(precision)
    c_lo, c_hi = _symbol_intervals(symbols, freqs, precision)
    return float(np.sum(precision - np.log2((c_hi - c_lo).astype(np.float64))))


def termination_bits(low, high, pending):
    """Plain-Python wrapper: the bits `write_termination` appends after the emitted ones (uint8 [k - e])."""
    for name, v, hi in (("low", low, TOP), ("high", high, TOP), ("pending", pending, 1 << 40)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= hi:
            raise ValueError(f"{name}={v!r}: expected an int in [0, {hi}]")
    if low > high:
        raise ValueError(f"low={low} > high={high}: expected low <= high")
    out = np.empty(int(pending) + STATE_BITS, dtype=np.uint8)
    return out[:write_termination(int(low), int(high), int(pending), out, 0)].copy()


def shortest_dyadic(lo, hi):
    """Smallest k (then smallest m) with [m/2^k, (m+1)/2^k) inside [lo, hi), exact in Fractions."""
    lo, hi = Fraction(lo), Fraction(hi)
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"interval [{lo}, {hi}): expected 0 <= lo < hi <= 1")
    k = 0
    while True:
        m = -((-lo.numerator << k) // lo.denominator)  # ceil(lo * 2^k)
        if Fraction(m + 1, 1 << k) <= hi:
            return k, m
        k += 1
