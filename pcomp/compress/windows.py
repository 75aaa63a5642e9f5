"""Equal-Info Windows (Lester et al. 2024): text cut into windows that each encode to exactly b bits.

Encoding a window: start from a fresh coder and an empty M1 context (BOS only); add bytes while the
window still terminates within b bits (`arith.termination_length`); emit the terminating codeword
zero-padded to b bits; reset coder and context; continue with the next byte.

Unique decoding. Greedy packing with the plain shortest codeword and zero padding is ambiguous:
when a window's last byte leaves the shortest terminating codeword unchanged (a likely byte often
does: the interval shrinks but still holds the same dyadic block) or extends it only by zero bits,
a shorter prefix has the same padded bits and the decoder cannot tell where the window ends.
Rule used here ("unique prefix codewords"): the codeword of prefix j of a window is the shortest,
then leftmost, dyadic block inside its interval whose padded b-bit value differs from the padded
codewords of prefixes 1 .. j-1; a byte joins the window while that codeword fits in b bits, and the
window is emitted as its last prefix's codeword. The decoder decodes byte by byte, computes the
same codewords, and stops at the first prefix whose codeword equals the window's bits: by
construction that is the whole window. Every window therefore has exactly one decoding and
decodes alone, with no lengths stored. A window also ends at M1's context limit
(`M1.max_window_bytes`) and at the end of a segment. Cost: a prefix whose plain codeword collides
needs a slightly longer one, so a window can end a byte earlier than ambiguous greedy packing;
`encode_windows(..., unique=False)` packs the ambiguous way to measure this
(`experiments/compression_table.py` reports it).

Documents are split into segments of at most `segment_bytes`; windows never cross a segment, so
long documents encode in parallel (rows of the M1 batch). Decoding is parallel over windows.
All per-row coder work runs in numba kernels between batched M1 steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numba
import numpy as np

from pcomp.compress.arith import (DONE, STATE_BITS, TOP, decode_step, decode_target, find_symbol, narrow, settle,
                                  termination_jm)
from pcomp.compress.m1 import BYTES, M1
from pcomp.config import CompressConfig
from pcomp.errors import CompressedFormatError, ConfigError

# Which unique-decoding rule made the windows; recorded in files and tokenizers, checked on decoding.
WINDOW_RULE = CompressConfig.window_rule


def check_window_bits(window_bits: int, token_bits: int, precision: int) -> None:
    """b, N and beta fit together (`CompressConfig.validate`); a ConfigError naming the value otherwise."""
    CompressConfig(window_bits=window_bits, token_bits=token_bits, precision=precision).validate()


# Row state of the numba kernels: one int64 row of ROW_SLOTS per M1 batch row. The coder slots are
# shared by encoder and decoder; the others are each side's own.
LOW, HIGH, PENDING = 0, 1, 2  # the coder's registers and pending follow bits
E_BITS, E_LEN = 3, 4  # E: the window's emitted bits (right-aligned); e: how many (> 64: overflowed)
N_BYTES = 5  # bytes in the current window so far
SEGMENT = 6  # encoder: the row's segment, or IDLE / NEEDS_SEGMENT
CUR = 7  # encoder: next byte to code (absolute offset into the data)
WSTART = 8  # encoder: the current window's first byte
WINDOW = 6  # decoder: the window the row decodes, or IDLE
VALUE = 7  # decoder: the 32-bit code value
BIT_POS = 8  # decoder: next bit of the window to read into VALUE
ROW_SLOTS = 9
IDLE = -1  # (SEGMENT / WINDOW) nothing left for this row
NEEDS_SEGMENT = -2  # (SEGMENT) the row takes the next segment before coding


# --------------------------------------------------------------------------------- numba helpers
@numba.njit(cache=True)
def _add_symbol(low, high, pending, E, e, c_lo, c_hi, precision):
    """Encoder step that appends settled bits to the 64-bit register E (e bits so far; e > 64 means
    the window overflowed and E is no longer tracked)."""
    low, high = narrow(low, high, c_lo, c_hi, precision)
    while True:
        bit, low, high, pending = settle(low, high, pending)
        if bit == DONE:
            break
        shift = 1 + pending
        if e + shift <= 64:
            new = (np.int64(bit) << pending) | ((np.int64(1 - bit) << pending) - (1 - bit))
            E = new if shift >= 64 else ((E << shift) | new)
        e += shift
        pending = 0
    return low, high, pending, E, e


@numba.njit(cache=True)
def _block_word(E, e, pending, j, m):
    """Bits (e + pending + j of them, right-aligned) of the codeword of register block (j >= 1, m):
    the emitted bits, the block's top bit t, `pending` copies of 1 - t, the block's other j - 1 bits."""
    t = (m >> (j - 1)) & 1
    ones = (np.int64(1) << pending) - 1
    tail = (t << (pending + j - 1)) | (((1 - t) * ones) << (j - 1)) | (m & ((np.int64(1) << (j - 1)) - 1))
    shift = pending + j
    return tail if (e == 0 or shift >= 64) else ((E << shift) | tail)


@numba.njit(cache=True)
def _seen(word, prev, n_prev):
    for i in range(n_prev):
        if prev[i] == word:
            return True
    return False


@numba.njit(cache=True)
def _padded_codeword(low, high, pending, E, e, b, prev, n_prev):
    """(k, word): the shortest, then leftmost, terminating codeword of the state whose b-bit padded
    value differs from prev[:n_prev] (the padded codewords of the window's shorter prefixes), with
    k its length; k > b (and word 0) when no such codeword fits in b bits. With n_prev = 0 this is
    the plain shortest terminating codeword (`arith.termination_jm`)."""
    j, _ = termination_jm(low, high, pending)
    if j == 0:  # the interval is exactly the cell of the emitted bits: the codeword is E itself
        if e > b:
            return e, np.int64(0)
        word = E << (b - e) if e > 0 else np.int64(0)  # (e = 0 only for a certain symbol: no bits at all)
        if not _seen(word, prev, n_prev):
            return e, word
        j = 1
    while True:
        k = e + pending + j
        if k > b:
            return k, np.int64(0)
        shift = STATE_BITS - j
        m = (low + (np.int64(1) << shift) - 1) >> shift  # leftmost block of size 2^shift inside
        last = ((high + 1) >> shift) - 1  # rightmost
        while m <= last:
            word = _block_word(E, e, pending, j, m) << (b - k)
            if not _seen(word, prev, n_prev):
                return k, word
            m += 1
        j += 1


@numba.njit(cache=True)
def _fresh_window(st, r):
    st[r, LOW] = 0
    st[r, HIGH] = TOP
    st[r, PENDING] = 0
    st[r, E_BITS] = 0
    st[r, E_LEN] = 0
    st[r, N_BYTES] = 0


@numba.njit(cache=True)
def _close_window(st, r, codes, seg_nwin, seg_base, out_code, out_len, counter):
    """Emit the window's n bytes as its last prefix codeword; the next window starts after them."""
    n = st[r, N_BYTES]
    s = st[r, SEGMENT]
    w = seg_base[s] + seg_nwin[s]
    out_code[w] = codes[r, n - 1]
    out_len[w] = n
    seg_nwin[s] += 1
    counter[0] += n
    _fresh_window(st, r)


@numba.njit(cache=True)
def _encode_rows(cum_bn, first_cum, data, seg_start, seg_end, next_seg, st, codes, tok, pos, b, precision, max_n,
                 seg_nwin, out_code, out_len, counter, unique):
    """Advance every row by one M1 step; returns the number of rows that need the next M1 step.

    A row with n > 0 extends its window with byte data[cur] using cum_bn[r], M1's table after the
    window's bytes. The first byte of a window uses `first_cum` (no M1 step needed).
    """
    active = 0
    for r in range(st.shape[0]):
        if st[r, SEGMENT] == IDLE:
            continue
        if st[r, N_BYTES] > 0:
            x = data[st[r, CUR]]
            low, high, pending, E, e = _add_symbol(st[r, LOW], st[r, HIGH], st[r, PENDING], st[r, E_BITS],
                                                   st[r, E_LEN], cum_bn[r, x], cum_bn[r, x + 1], precision)
            n = st[r, N_BYTES]
            k, word = _padded_codeword(low, high, pending, E, e, b, codes[r], n if unique else 0)
            if k <= b:
                st[r, LOW], st[r, HIGH], st[r, PENDING], st[r, E_BITS], st[r, E_LEN] = low, high, pending, E, e
                codes[r, n] = word
                st[r, N_BYTES] = n + 1
                st[r, CUR] += 1
                if st[r, CUR] < seg_end[st[r, SEGMENT]] and n + 1 < max_n:
                    tok[r] = x
                    pos[r] = n + 1
                    active += 1
                    continue
            _close_window(st, r, codes, seg_nwin, seg_start, out_code, out_len, counter)
        while True:  # start windows until one needs M1, or the row runs out of segments
            if st[r, SEGMENT] == NEEDS_SEGMENT or st[r, CUR] >= seg_end[st[r, SEGMENT]]:
                s = next_seg[0]
                if s >= seg_start.shape[0]:
                    st[r, SEGMENT] = IDLE
                    break
                next_seg[0] = s + 1
                st[r, SEGMENT] = s
                st[r, CUR] = seg_start[s]
                continue
            x = data[st[r, CUR]]
            low, high, pending, E, e = _add_symbol(np.int64(0), np.int64(TOP), np.int64(0), np.int64(0),
                                                   np.int64(0), first_cum[x], first_cum[x + 1], precision)
            k, word = _padded_codeword(low, high, pending, E, e, b, codes[r], 0)
            st[r, LOW], st[r, HIGH], st[r, PENDING], st[r, E_BITS], st[r, E_LEN] = low, high, pending, E, e
            st[r, N_BYTES] = 1
            st[r, WSTART] = st[r, CUR]
            st[r, CUR] += 1
            codes[r, 0] = word
            if st[r, CUR] < seg_end[st[r, SEGMENT]] and max_n > 1:
                tok[r] = x
                pos[r] = 1
                active += 1
                break
            _close_window(st, r, codes, seg_nwin, seg_start, out_code, out_len, counter)
    return active


@numba.njit(cache=True)
def _decode_symbol(cum_row, st, r, winbits, precision, b, codes):
    """Decode one byte of row r's window with table cum_row [n + 1]; update the decoder and the
    mirrored encoder state; return (symbol, k, padded codeword of the prefix decoded so far), the
    codeword made unique against the shorter prefixes' (codes[r, :n]) exactly as the encoder does."""
    low, high, value, bpos = st[r, LOW], st[r, HIGH], st[r, VALUE], st[r, BIT_POS]
    lo = find_symbol(cum_row, decode_target(low, high, value, precision))
    c_lo, c_hi = cum_row[lo], cum_row[lo + 1]
    nlow, nhigh, value, bpos = decode_step(low, high, value, c_lo, c_hi, precision, winbits[r], bpos)
    _, _, pending, E, e = _add_symbol(low, high, st[r, PENDING], st[r, E_BITS], st[r, E_LEN], c_lo, c_hi, precision)
    st[r, LOW], st[r, HIGH], st[r, PENDING], st[r, E_BITS], st[r, E_LEN] = nlow, nhigh, pending, E, e
    st[r, VALUE], st[r, BIT_POS] = value, bpos
    n = st[r, N_BYTES]
    k, word = _padded_codeword(nlow, nhigh, pending, E, e, b, codes[r], n)
    codes[r, n] = word
    return lo, k, word


@numba.njit(cache=True)
def _start_decode(st, r, w, window_codes, winbits, b):
    _fresh_window(st, r)
    st[r, WINDOW] = w
    code = window_codes[w]
    for i in range(b):
        winbits[r, i] = (code >> (b - 1 - i)) & 1
    value = np.int64(0)
    for i in range(STATE_BITS):
        value = 2 * value + (np.int64(winbits[r, i]) if i < b else 0)
    st[r, VALUE] = value
    st[r, BIT_POS] = STATE_BITS


@numba.njit(cache=True)
def _decode_rows(cum_bn, first_cum, window_codes, next_win, st, winbits, codes, tok, pos, b, precision, max_n, out,
                 out_len):
    """Advance every row by one M1 step. Returns (rows that need the next step, first window that
    failed to decode within max_n bytes or IDLE)."""
    active = 0
    for r in range(st.shape[0]):
        w = st[r, WINDOW]
        if w == IDLE:
            continue
        while True:
            n = st[r, N_BYTES]
            s, k, word = _decode_symbol(cum_bn[r] if n > 0 else first_cum, st, r, winbits, precision, b, codes)
            out[w, n] = s
            st[r, N_BYTES] = n + 1
            if k <= b and word == window_codes[w]:  # the first matching prefix is the window
                out_len[w] = n + 1
                w = next_win[0]
                if w >= window_codes.shape[0]:
                    st[r, WINDOW] = IDLE
                    break
                next_win[0] = w + 1
                _start_decode(st, r, w, window_codes, winbits, b)
                continue
            if n + 1 >= max_n:
                return active, w
            tok[r] = s
            pos[r] = n + 1
            active += 1
            break
    return active, IDLE


# --------------------------------------------------------------------------------- drivers
@dataclasses.dataclass
class EncodedDocs:
    """Windows of a batch of documents: codes[w] holds window w's b bits (right-aligned, uint64)."""

    codes: np.ndarray  # uint64 [n_windows]
    window_bytes: np.ndarray  # int64 [n_windows]: bytes each window covers
    doc_windows: np.ndarray  # int64 [n_docs + 1]: offsets of each document's windows
    window_bits: int

    def doc_codes(self, i: int) -> np.ndarray:
        return self.codes[self.doc_windows[i] : self.doc_windows[i + 1]]


def _segments(docs: Sequence[bytes], segment_bytes: int):
    data = np.frombuffer(b"".join(docs), np.uint8).astype(np.int64) if docs else np.zeros(0, np.int64)
    starts, ends, doc_seg = [], [], [0]
    off = 0
    for d in docs:
        for s in range(0, len(d), segment_bytes):
            starts.append(off + s)
            ends.append(off + min(s + segment_bytes, len(d)))
        off += len(d)
        doc_seg.append(len(starts))
    return data, np.asarray(starts, np.int64), np.asarray(ends, np.int64), np.asarray(doc_seg, np.int64)


def encode_windows(m1: M1, docs: Sequence[bytes], window_bits: int, *,
                   segment_bytes: int = CompressConfig.segment_bytes,
                   progress: Callable[[int], None] | None = None, unique: bool = True) -> EncodedDocs:
    """Equal-Info windows of every document (each a bytes object), batched over M1's rows.

    unique=False packs greedily with the plain shortest codewords (ambiguous, generally NOT
    decodable): only for measuring what unique decoding costs.
    """
    if m1.symbols != BYTES:
        raise ConfigError("Equal-Info windows code bytes only: use an M1 with symbols='bytes'")
    check_window_bits(window_bits, 8, m1.precision)
    if segment_bytes < 1:
        raise ConfigError(f"segment_bytes={segment_bytes} must be >= 1")
    data, seg_start, seg_end, doc_seg = _segments(docs, segment_bytes)
    B = m1.batch
    cache = m1.start()
    st = np.zeros((B, ROW_SLOTS), np.int64)
    st[:, SEGMENT] = NEEDS_SEGMENT
    codes = np.zeros((B, m1.max_window_bytes), np.int64)
    tok, pos = np.zeros(B, np.int64), np.ones(B, np.int64)
    seg_nwin = np.zeros(len(seg_start), np.int64)
    out_code, out_len = np.zeros(len(data), np.int64), np.zeros(len(data), np.int64)  # <= 1 window per byte
    next_seg, counter = np.zeros(1, np.int64), np.zeros(1, np.int64)
    cum = np.zeros((B, m1.n_symbols + 1), np.int64)
    reported = 0
    while True:
        t0 = time.perf_counter()
        active = _encode_rows(cum, m1.first_cum, data, seg_start, seg_end, next_seg, st, codes, tok, pos,
                              window_bits, m1.precision, m1.max_window_bytes, seg_nwin, out_code, out_len, counter,
                              unique)
        if m1.timer is not None:
            m1.timer.record_kernel(time.perf_counter() - t0, active)
        if progress is not None and counter[0] > reported:
            progress(int(counter[0]) - reported)
            reported = int(counter[0])
        if active == 0:
            break
        cum, cache = m1.step(cache, tok, pos)
    # windows in document / segment order; segment s's windows sit at seg_start[s] ...
    order = np.concatenate([np.arange(a, a + k) for a, k in zip(seg_start, seg_nwin)] + [np.zeros(0, np.int64)])
    win_per_doc = [int(seg_nwin[doc_seg[i] : doc_seg[i + 1]].sum()) for i in range(len(docs))]
    doc_windows = np.concatenate([[0], np.cumsum(win_per_doc, dtype=np.int64)]).astype(np.int64)
    return EncodedDocs(out_code[order].view(np.uint64), out_len[order], doc_windows, window_bits)


def decode_windows(m1: M1, codes: np.ndarray, window_bits: int, *, chunk: int = 1 << 16,
                   progress: Callable[[int], None] | None = None) -> tuple[bytes, np.ndarray]:
    """Bytes of the windows `codes` (uint64 [n], b bits each), in order, and each window's length.

    A window that does not decode within M1's context is corrupt: CompressedFormatError.
    """
    check_window_bits(window_bits, 8, m1.precision)
    codes = np.asarray(codes, np.uint64)
    if window_bits < 64 and codes.size and int(codes.max()) >> window_bits:
        raise CompressedFormatError(f"a window code has more than b={window_bits} bits")
    parts, lengths = [], []
    for c0 in range(0, len(codes), chunk):
        piece = codes[c0 : c0 + chunk].view(np.int64)
        data, lens = _decode_chunk(m1, piece, window_bits, c0)
        parts.append(data)
        lengths.append(lens)
        if progress is not None:
            progress(len(data))
    if not parts:
        return b"", np.zeros(0, np.int64)
    return b"".join(parts), np.concatenate(lengths)


def _decode_chunk(m1: M1, codes: np.ndarray, b: int, offset: int) -> tuple[bytes, np.ndarray]:
    B, max_n, n = m1.batch, m1.max_window_bytes, len(codes)
    cache = m1.start()
    st = np.zeros((B, ROW_SLOTS), np.int64)
    st[:, WINDOW] = IDLE
    winbits = np.zeros((B, b), np.uint8)
    codes_rn = np.zeros((B, max_n), np.int64)  # padded codewords of each row's decoded prefixes
    for r in range(min(B, n)):  # rows start with n == 0: their first byte comes from first_cum
        _start_decode(st, r, r, codes, winbits, b)
    next_win = np.asarray([min(B, n)], np.int64)
    out = np.zeros((n, max_n), np.uint8)
    out_len = np.zeros(n, np.int64)
    tok, pos = np.zeros(B, np.int64), np.ones(B, np.int64)
    cum = np.zeros((B, m1.n_symbols + 1), np.int64)
    while True:
        t0 = time.perf_counter()
        active, bad = _decode_rows(cum, m1.first_cum, codes, next_win, st, winbits, codes_rn, tok, pos, b, m1.precision,
                                   max_n, out, out_len)
        if m1.timer is not None:
            m1.timer.record_kernel(time.perf_counter() - t0, active)
        if bad != IDLE:
            raise CompressedFormatError(
                f"window {offset + bad} does not decode within {max_n} bytes: the data is corrupt or was made "
                f"by another M1"
            )
        if active == 0:
            break
        cum, cache = m1.step(cache, tok, pos)
    return out[np.arange(max_n)[None, :] < out_len[:, None]].tobytes(), out_len
