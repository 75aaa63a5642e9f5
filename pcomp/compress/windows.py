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
from collections.abc import Callable, Sequence

import numba
import numpy as np

from pcomp.compress.arith import (HALF, QUARTER, STATE_BITS, THREE_QUARTERS, TOP, decode_step, decode_target,
                                  find_symbol, termination_jm)
from pcomp.compress.m1 import BYTES, M1
from pcomp.errors import CompressedFormatError, ConfigError

MAX_WINDOW_BITS = 64  # codewords are held in 64-bit registers
# Which unique-decoding rule made the windows; recorded in files and tokenizers, checked on decoding.
WINDOW_RULE = "unique-prefix-codewords/1"


def window_context(window_bits: int, max_seq_len: int) -> int:
    """Default M1 KV-cache length for b-bit windows: BOS + at most 2b bytes (a byte coded in under
    half a bit is rare even for a strong M1), capped by the model's context. Attention reads the whole
    cache every step, so this is what makes the M1 step fast (~3x at b=16 against a 128 cache)."""
    return min(max_seq_len, 2 * window_bits + 1)


def check_window_bits(window_bits: int, token_bits: int, precision: int) -> None:
    if token_bits not in (8, 16):
        raise ConfigError(f"token bits N={token_bits}: expected 8 or 16")
    if window_bits % token_bits:
        raise ConfigError(f"window bits b={window_bits} is not a multiple of the token bits N={token_bits}")
    if window_bits < precision + 2:
        raise ConfigError(
            f"window bits b={window_bits} cannot hold every byte: a byte of frequency 1 / 2**{precision} may need "
            f"{precision + 2} bits; expected b >= precision + 2 = {precision + 2}"
        )
    if window_bits > MAX_WINDOW_BITS:
        raise ConfigError(f"window bits b={window_bits}: expected at most {MAX_WINDOW_BITS}")


# --------------------------------------------------------------------------------- numba helpers
@numba.njit(cache=True)
def _add_symbol(low, high, pending, E, e, c_lo, c_hi, precision):
    """Encoder step that appends settled bits to the 64-bit register E (e bits so far; e > 64 means
    the window overflowed and E is no longer tracked)."""
    rng = high - low + 1
    high = low + ((rng * c_hi) >> precision) - 1
    low = low + ((rng * c_lo) >> precision)
    while True:
        if high < HALF:
            bit = 0
        elif low >= HALF:
            bit = 1
            low -= HALF
            high -= HALF
        elif low >= QUARTER and high < THREE_QUARTERS:
            pending += 1
            low = 2 * (low - QUARTER)
            high = 2 * (high - QUARTER) + 1
            continue
        else:
            break
        shift = 1 + pending
        if e + shift <= 64:
            new = (np.int64(bit) << pending) | ((np.int64(1 - bit) << pending) - (1 - bit))
            E = new if shift >= 64 else ((E << shift) | new)
        e += shift
        pending = 0
        low = 2 * low
        high = 2 * high + 1
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
    st[r, 0] = 0  # low
    st[r, 1] = TOP  # high
    st[r, 2] = 0  # pending
    st[r, 3] = 0  # E
    st[r, 4] = 0  # e
    st[r, 5] = 0  # bytes in window


# encoder row state columns: 0 low, 1 high, 2 pending, 3 E, 4 e, 5 n (bytes in window),
# 6 segment (-1 idle, -2 needs one), 7 cur (next byte, absolute), 8 wstart (window's first byte)
@numba.njit(cache=True)
def _close_window(st, r, codes, seg_nwin, seg_base, out_code, out_len, counter):
    """Emit the window's n bytes as its last prefix codeword; the next window starts after them."""
    n = st[r, 5]
    s = st[r, 6]
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
        if st[r, 6] == -1:
            continue
        if st[r, 5] > 0:
            x = data[st[r, 7]]
            low, high, pending, E, e = _add_symbol(st[r, 0], st[r, 1], st[r, 2], st[r, 3], st[r, 4],
                                                   cum_bn[r, x], cum_bn[r, x + 1], precision)
            n = st[r, 5]
            k, word = _padded_codeword(low, high, pending, E, e, b, codes[r], n if unique else 0)
            if k <= b:
                st[r, 0], st[r, 1], st[r, 2], st[r, 3], st[r, 4] = low, high, pending, E, e
                codes[r, n] = word
                st[r, 5] = n + 1
                st[r, 7] += 1
                if st[r, 7] < seg_end[st[r, 6]] and n + 1 < max_n:
                    tok[r] = x
                    pos[r] = n + 1
                    active += 1
                    continue
            _close_window(st, r, codes, seg_nwin, seg_start, out_code, out_len, counter)
        while True:  # start windows until one needs M1, or the row runs out of segments
            if st[r, 6] < 0 or st[r, 7] >= seg_end[st[r, 6]]:
                s = next_seg[0]
                if s >= seg_start.shape[0]:
                    st[r, 6] = -1
                    break
                next_seg[0] = s + 1
                st[r, 6] = s
                st[r, 7] = seg_start[s]
                continue
            x = data[st[r, 7]]
            low, high, pending, E, e = _add_symbol(np.int64(0), np.int64(TOP), np.int64(0), np.int64(0),
                                                   np.int64(0), first_cum[x], first_cum[x + 1], precision)
            k, word = _padded_codeword(low, high, pending, E, e, b, codes[r], 0)
            st[r, 0], st[r, 1], st[r, 2], st[r, 3], st[r, 4] = low, high, pending, E, e
            st[r, 5] = 1
            st[r, 8] = st[r, 7]
            st[r, 7] += 1
            codes[r, 0] = word
            if st[r, 7] < seg_end[st[r, 6]] and max_n > 1:
                tok[r] = x
                pos[r] = 1
                active += 1
                break
            _close_window(st, r, codes, seg_nwin, seg_start, out_code, out_len, counter)
    return active


# decoder row state: 0 low, 1 high, 2 pending, 3 E, 4 e, 5 n, 6 window (-1 idle), 7 value, 8 bit position
@numba.njit(cache=True)
def _decode_symbol(cum_row, st, r, winbits, precision, b, codes):
    """Decode one byte of row r's window with table cum_row [n + 1]; update the decoder and the
    mirrored encoder state; return (symbol, k, padded codeword of the prefix decoded so far), the
    codeword made unique against the shorter prefixes' (codes[r, :n]) exactly as the encoder does."""
    low, high, value, bpos = st[r, 0], st[r, 1], st[r, 7], st[r, 8]
    lo = find_symbol(cum_row, decode_target(low, high, value, precision))
    c_lo, c_hi = cum_row[lo], cum_row[lo + 1]
    nlow, nhigh, value, bpos = decode_step(low, high, value, c_lo, c_hi, precision, winbits[r], bpos)
    _, _, pending, E, e = _add_symbol(low, high, st[r, 2], st[r, 3], st[r, 4], c_lo, c_hi, precision)
    st[r, 0], st[r, 1], st[r, 2], st[r, 3], st[r, 4], st[r, 7], st[r, 8] = nlow, nhigh, pending, E, e, value, bpos
    n = st[r, 5]
    k, word = _padded_codeword(nlow, nhigh, pending, E, e, b, codes[r], n)
    codes[r, n] = word
    return lo, k, word


@numba.njit(cache=True)
def _start_decode(st, r, w, window_codes, winbits, b):
    _fresh_window(st, r)
    st[r, 6] = w
    code = window_codes[w]
    for i in range(b):
        winbits[r, i] = (code >> (b - 1 - i)) & 1
    value = np.int64(0)
    for i in range(32):
        value = 2 * value + (np.int64(winbits[r, i]) if i < b else 0)
    st[r, 7] = value
    st[r, 8] = 32


@numba.njit(cache=True)
def _decode_rows(cum_bn, first_cum, window_codes, next_win, st, winbits, codes, tok, pos, b, precision, max_n, out,
                 out_len):
    """Advance every row by one M1 step. Returns (rows that need the next step, first window that
    failed to decode within max_n bytes or -1)."""
    active = 0
    for r in range(st.shape[0]):
        w = st[r, 6]
        if w < 0:
            continue
        while True:
            n = st[r, 5]
            s, k, word = _decode_symbol(cum_bn[r] if n > 0 else first_cum, st, r, winbits, precision, b, codes)
            out[w, n] = s
            st[r, 5] = n + 1
            if k <= b and word == window_codes[w]:  # the first matching prefix is the window
                out_len[w] = n + 1
                w = next_win[0]
                if w >= window_codes.shape[0]:
                    st[r, 6] = -1
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
    return active, -1


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


def encode_windows(m1: M1, docs: Sequence[bytes], window_bits: int, *, segment_bytes: int = 2048,
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
    st = np.zeros((B, 9), np.int64)
    st[:, 6] = -2  # every row first takes a segment
    codes = np.zeros((B, m1.max_window_bytes), np.int64)
    tok, pos = np.zeros(B, np.int64), np.ones(B, np.int64)
    seg_nwin = np.zeros(len(seg_start), np.int64)
    out_code, out_len = np.zeros(len(data), np.int64), np.zeros(len(data), np.int64)  # <= 1 window per byte
    next_seg, counter = np.zeros(1, np.int64), np.zeros(1, np.int64)
    cum = np.zeros((B, m1.n_symbols + 1), np.int64)
    reported = 0
    while True:
        active = _encode_rows(cum, m1.first_cum, data, seg_start, seg_end, next_seg, st, codes, tok, pos,
                              window_bits, m1.precision, m1.max_window_bytes, seg_nwin, out_code, out_len, counter,
                              unique)
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
    st = np.zeros((B, 9), np.int64)
    st[:, 6] = -1
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
        active, bad = _decode_rows(cum, m1.first_cum, codes, next_win, st, winbits, codes_rn, tok, pos, b, m1.precision,
                                   max_n, out, out_len)
        if bad >= 0:
            raise CompressedFormatError(
                f"window {offset + bad} does not decode within {max_n} bytes: the data is corrupt or was made "
                f"by another M1"
            )
        if active == 0:
            break
        cum, cache = m1.step(cache, tok, pos)
    return out[np.arange(max_n)[None, :] < out_len[:, None]].tobytes(), out_len
