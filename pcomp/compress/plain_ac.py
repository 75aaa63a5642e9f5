"""Plain arithmetic coding with M1 (no windows): the baseline the Equal-Info paper finds unlearnable.

One coder stream per document over bytes followed by an end-of-document symbol (M1's EOS), so a
stream decodes without a stored length (`eos=False`: bytes only, for callers that know each
document's length, as `pcomp compress --mode best` does). M1's KV cache holds BOS + lb =
`M1.max_window_bytes` bytes, so a document is coded in context blocks (the coder stream runs on
across them):
  block 0    BOS, then symbols 0 .. lb-1, each predicted from BOS and the symbols before it;
  block k>0  BOS, then the `overlap` bytes just before the block (fed to M1, not coded: "re-primed"),
             then the next lb - overlap symbols.
With overlap 0 a block restarts from BOS alone (its first bytes are coded with almost no context);
with overlap h every symbol after the first block sees at least h bytes, at h extra M1 steps per
block. Encoding scores all blocks of all documents in parallel (each is independent for M1: its
prime is known text); decoding is sequential within a document and parallel across documents,
and re-primes a block from the bytes it has just decoded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numba
import numpy as np

from pcomp.compress import arith
from pcomp.compress.m1 import BYTES_EOS, M1
from pcomp.errors import CompressedFormatError, ConfigError

EOF = 256  # coder symbol after the bytes

# Decoder row state (`_decode_rows`): one int64 row of ROW_SLOTS per M1 batch row.
LOW, HIGH, VALUE = 0, 1, 2  # the decoder's registers and 32-bit code value
BIT_POS = 3  # next bit of the row's stream (relative to its start)
ACTIVE = 4  # 1 while the row's stream has not reached EOF
CONTEXT_POS = 5  # the next symbol's position in M1's current context block (0: use first_cum)
PRIME = 6  # bytes of the re-prime still to feed before the block codes again
ROW_SLOTS = 7


def _check(m1: M1) -> None:
    if m1.symbols != BYTES_EOS:
        raise ConfigError("plain arithmetic coding needs M1 over bytes + EOS (symbols='bytes+eos')")


def context_blocks(n_symbols: int, lb: int, overlap: int) -> list[tuple[int, int]]:
    """(first fed symbol, first coded symbol) of each M1 context block of a document of n_symbols
    symbols (its bytes and EOF): block 0 feeds from symbol 0, block k>0 re-primes the `overlap`
    symbols before the ones it codes. A block ends lb symbols after its first fed one."""
    if not 0 <= overlap < lb:
        raise ConfigError(f"context overlap {overlap}: expected 0 <= overlap < {lb} (M1's context block)")
    blocks = [(0, 0)]
    while blocks[-1][0] + lb < n_symbols:
        coded = blocks[-1][0] + lb
        blocks.append((coded - overlap, coded))
    return blocks


def symbol_intervals(m1: M1, docs: Sequence[bytes], overlap: int = 0,
                     eos: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per document, the coder intervals (c_lo, c_hi) [len + 1] of its bytes and the final EOF ([len]:
    its bytes, without `eos`), each symbol under M1's table in its context block (`context_blocks`)."""
    _check(m1)
    lb = m1.max_window_bytes
    # rows: one per (document, block): the symbols it feeds M1 (prime included) and its first coded one
    blocks = []  # (doc index, first fed symbol index, symbols fed, index of the first coded one in them)
    for i, d in enumerate(docs):
        sym = np.frombuffer(d, np.uint8).astype(np.int64)
        sym = np.append(sym, EOF) if eos else sym
        for fed, coded in context_blocks(len(sym), lb, overlap):
            blocks.append((i, fed, sym[fed : fed + lb], coded - fed))
    out = [(np.zeros(len(d) + eos, np.int64), np.zeros(len(d) + eos, np.int64)) for d in docs]
    m1.start()
    for b0 in range(0, len(blocks), m1.batch):
        group = blocks[b0 : b0 + m1.batch]
        longest = max(len(sym) for _, _, sym, _ in group)
        sym_rs = np.zeros((m1.batch, longest), np.int64)  # EOF (always last) is never fed to M1
        for r, (_, _, sym, _) in enumerate(group):
            sym_rs[r, : len(sym)] = np.where(sym == EOF, 0, sym)
        cache = m1.start()
        for off in range(longest):
            if off == 0:
                cum = np.broadcast_to(m1.first_cum, (m1.batch, m1.n_symbols + 1))
            else:  # feed the previous symbol at its position: M1's table for the symbol at `off`
                cum, cache = m1.step(cache, sym_rs[:, off - 1], np.full(m1.batch, off, np.int64))
            for r, (i, start, sym, first) in enumerate(group):
                if first <= off < len(sym):
                    out[i][0][start + off] = cum[r, sym[off]]
                    out[i][1][start + off] = cum[r, sym[off] + 1]
    return out


def encode_docs(m1: M1, docs: Sequence[bytes], overlap: int = 0, eos: bool = True) -> list[np.ndarray]:
    """Terminated bit streams (uint8 0/1) of each document."""
    return [arith.encode_intervals(lo, hi, m1.precision) for lo, hi in symbol_intervals(m1, docs, overlap, eos)]


def ideal_bits(m1: M1, docs: Sequence[bytes], overlap: int = 0, eos: bool = True) -> float:
    """Sum over documents of -log2 q(symbol) under M1's quantized model (bytes, and EOF with `eos`),
    in the context blocks of `overlap`."""
    total = 0.0
    for lo, hi in symbol_intervals(m1, docs, overlap, eos):
        total += float(np.sum(m1.precision - np.log2((hi - lo).astype(np.float64))))
    return total


@numba.njit(cache=True)
def _decode_rows(cum_bn, first_cum, bits, bit_start, bit_end, st, out, out_n, tok, pos, precision, lb, overlap,
                 stop):
    """One symbol (or one re-prime byte) per active row (row state: the slots above); a row ends at EOF,
    or after stop[r] bytes where stop[r] >= 0. Returns the number of rows needing an M1 step, or
    -1 - row for a row whose stream runs past out's capacity without EOF."""
    active = 0
    for r in range(st.shape[0]):
        if st[r, ACTIVE] == 0:
            continue
        while st[r, PRIME] == 0:
            table = cum_bn[r] if st[r, CONTEXT_POS] > 0 else first_cum
            stream = bits[bit_start[r] : bit_end[r]]
            target = arith.decode_target(st[r, LOW], st[r, HIGH], st[r, VALUE], precision)
            s = arith.find_symbol(table, target)
            low, high, value, bp = arith.decode_step(st[r, LOW], st[r, HIGH], st[r, VALUE], table[s], table[s + 1],
                                                     precision, stream, st[r, BIT_POS])
            st[r, LOW], st[r, HIGH], st[r, VALUE], st[r, BIT_POS] = low, high, value, bp
            if s == EOF:
                st[r, ACTIVE] = 0
                break
            if out_n[r] >= out.shape[1]:
                return -1 - r
            out[r, out_n[r]] = s
            out_n[r] += 1
            if out_n[r] == stop[r]:  # a known length: no EOF follows
                st[r, ACTIVE] = 0
                break
            st[r, CONTEXT_POS] += 1
            if st[r, CONTEXT_POS] == lb:  # the block is full: a new one starts from BOS ...
                st[r, CONTEXT_POS] = 0
                st[r, PRIME] = overlap  # ... re-primed with the last `overlap` bytes (0: none)
                continue
            tok[r] = s
            pos[r] = st[r, CONTEXT_POS]
            active += 1
            break
        if st[r, ACTIVE] == 1 and st[r, PRIME] > 0:  # feed the next re-prime byte at its position
            tok[r] = out[r, out_n[r] - st[r, PRIME]]
            pos[r] = overlap - st[r, PRIME] + 1
            st[r, PRIME] -= 1
            st[r, CONTEXT_POS] = pos[r]  # after the last one: the step's table is the next symbol's
            active += 1
    return active


def max_symbols(n_bits: int, m1: M1) -> int:
    """Most symbols n_bits can hold: every frequency is >= 1, so the likeliest symbol costs at least
    -log2(1 - (n - 1) / 2**precision) bits."""
    min_cost = -np.log2(1.0 - (m1.n_symbols - 1) / (1 << m1.precision))
    return int(n_bits / min_cost) + 2


def decode_docs(m1: M1, streams: Sequence[np.ndarray], max_bytes: int, overlap: int = 0,
                lengths: Sequence[int] | None = None) -> list[bytes]:
    """Inverse of `encode_docs` (same `overlap`): EOF-terminated streams, or with `lengths` the streams
    of `encode_docs(..., eos=False)`, each decoded to its length (a stream that decodes EOF first
    ends there: shorter than its length). A stream that runs past max_bytes without EOF is corrupt."""
    _check(m1)
    context_blocks(0, m1.max_window_bytes, overlap)  # checks the overlap
    out_docs: list[bytes] = []
    for g0 in range(0, len(streams), m1.batch):
        group = [np.asarray(s, np.uint8) for s in streams[g0 : g0 + m1.batch]]
        B = m1.batch
        bits = np.concatenate(group + [np.zeros(1, np.uint8)])
        lens = np.asarray([len(s) for s in group] + [0] * (B - len(group)), np.int64)
        bit_start = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        bit_end = bit_start + lens
        st = np.zeros((B, ROW_SLOTS), np.int64)
        stop = np.full(B, -1, np.int64)  # -1: until EOF
        for r, s in enumerate(group):
            st[r, LOW], st[r, HIGH], st[r, VALUE], st[r, BIT_POS] = arith.decoder_init(s)
            if lengths is not None:
                stop[r] = lengths[g0 + r]
            st[r, ACTIVE] = int(stop[r] != 0)
        out = np.zeros((len(group), max_bytes), np.uint8)
        out_n = np.zeros(B, np.int64)
        tok, pos = np.zeros(B, np.int64), np.ones(B, np.int64)
        cache = m1.start()
        cum = np.zeros((B, m1.n_symbols + 1), np.int64)
        while True:
            t0 = time.perf_counter()
            active = _decode_rows(cum, m1.first_cum, bits, bit_start, bit_end, st, out, out_n, tok, pos,
                                  m1.precision, m1.max_window_bytes, overlap, stop)
            if m1.timer is not None:
                m1.timer.record_kernel(time.perf_counter() - t0, active)
            if active < 0:
                raise CompressedFormatError(f"stream {g0 - 1 - active} decodes past {max_bytes} bytes without EOF")
            if active == 0:
                break
            cum, cache = m1.step(cache, tok, pos)
        out_docs += [out[r, : out_n[r]].tobytes() for r in range(len(group))]
    return out_docs
