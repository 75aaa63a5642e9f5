"""Incremental decoding of sampled compressed tokens: what the compressed tokenizers
(`pcomp.compress.tokenizers`) supply for generation (`Tokenizer.prompt_ids`, `token_decoder`).

A decoder takes M2's sampled tokens one by one (`feed(token) -> bytes`, the bytes they determine so
far), is `done` once the document has ended, and reports what is not text through `on_warning`.

Equal-Info windows (`WindowDecoder`): tokens are regrouped into windows of b / N tokens
(`tokens_per_unit`), each decoded with M1 as soon as it is complete. Not every b-bit string is a
window: under the unique-prefix rule (`pcomp.compress.windows`) a code that no prefix of any text pads
to never decodes within M1's context. M2 can sample one; it is reported once (`on_warning`),
contributes no text, and generation goes on with the next window.

Stream codes: gzip, static_ac and ac (plain AC under M1, `pcomp.compress.plain_ac`) code a document as one stream, so the
sampled tokens are one growing bit stream, decoded incrementally:
  gzip       the bytes go through a raw-DEFLATE `zlib.decompressobj`. A sampled stream may stop being
             valid DEFLATE: that is reported once (`on_warning`) and the decoder is done, with the text
             decoded so far. The end of the DEFLATE stream (its final block) ends the document.
  static_ac  any bit string decodes to some symbols, under the tokenizer's unigram table or, for
  ac         ac, M1 (context restarting every M1.max_window_bytes bytes, as `plain_ac` codes).
             A symbol is emitted only once the sampled bits determine it (every continuation of the
             bits decodes it), so nothing depends on padding; the decoder is done at the
             end-of-document symbol.
A prompt is coded as the beginning of a document (`gzip_prompt_tokens`, `ac_prompt_tokens`): gzip
with a sync flush (a non-final block, byte-aligned, plus an empty stored block when N = 16 needs an
even byte count), static_ac/ac with the arithmetic coder's minimal termination and no
end-of-document, padded with zeros to whole tokens: every continuation of those bits decodes to the
prompt first (the termination's dyadic interval lies inside the prompt's interval), so M2 continues
the document. Bytes that the prompt's bits already determine beyond the prompt count as generated.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from pcomp.compress import arith, plain_ac
from pcomp.compress.packing import bits_to_tokens, tokens_to_bits, tokens_to_codes
from pcomp.compress.windows import decode_windows
from pcomp.data.tokenizers import TokenDecoder
from pcomp.errors import CompressedFormatError

Warn = Callable[[str], None] | None
_EMPTY_STORED_BLOCK = b"\x00\x00\x00\xff\xff"  # non-final, stored, LEN 0 (starts at a byte boundary)


def gzip_prompt_tokens(prompt: bytes, token_bits: int) -> np.ndarray:
    """A prompt as the beginning of a raw-DEFLATE stream (sync flush), in N-bit tokens."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = c.compress(prompt) + c.flush(zlib.Z_SYNC_FLUSH) if prompt else b""
    if 8 * len(raw) % token_bits:
        raw += _EMPTY_STORED_BLOCK
    return bits_to_tokens(np.unpackbits(np.frombuffer(raw, np.uint8)), token_bits)


def ac_prompt_tokens(c_lo: np.ndarray, c_hi: np.ndarray, precision: int, token_bits: int) -> np.ndarray:
    """A prompt's coder intervals (no end-of-document) as a terminated stream, in N-bit tokens."""
    return bits_to_tokens(arith.encode_intervals(c_lo, c_hi, precision), token_bits)


class WindowDecoder(TokenDecoder):
    """Feed M2 tokens one by one; each completed window comes back decoded (b"" when it is not a
    window: its index among the sampled windows is recorded in `skipped` and reported once through
    `on_warning`). `windows` counts the sampled windows (the prompt's are not counted)."""

    def __init__(self, m1, window_bits: int, token_bits: int, on_warning: Warn = None):
        self.m1, self.window_bits, self.token_bits, self.on_warning = m1, window_bits, token_bits, on_warning
        self.tokens_per_unit = window_bits // token_bits
        self.pending: list[int] = []
        self.windows = 0
        self.skipped: list[int] = []

    def feed(self, token: int) -> bytes:
        self.pending.append(int(token))
        if len(self.pending) < self.tokens_per_unit:
            return b""
        codes = tokens_to_codes(self.pending, self.window_bits, self.token_bits)
        self.pending = []
        index, self.windows = self.windows, self.windows + 1
        try:
            data, _ = decode_windows(self.m1, codes, self.window_bits)
        except CompressedFormatError as e:
            self.skipped.append(index)
            if self.on_warning is not None:
                self.on_warning(f"sampled window {index} is not a window M1 decodes ({e}); skipped")
            return b""
        return data

    def prompt(self, ids) -> bytes:
        out = super().prompt(ids)
        self.windows, self.skipped = 0, []  # (a prompt's windows always decode: it was encoded)
        return out


class GZipStreamDecoder(TokenDecoder):
    """Feed sampled tokens; returns the bytes the raw DEFLATE stream yields so far. `done` once the
    stream ends (final block) or turns invalid; the latter is reported once (`error`, `on_warning`)."""

    def __init__(self, token_bits: int, on_warning: Warn = None):
        self.token_bits, self.on_warning = token_bits, on_warning
        self._d = zlib.decompressobj(-15)
        self._bits = np.zeros(0, np.uint8)
        self.done, self.error, self.decoded = False, None, 0

    def feed(self, token: int) -> bytes:
        if self.done:
            return b""
        self._bits = np.concatenate([self._bits, tokens_to_bits([int(token)], self.token_bits)])
        whole = len(self._bits) // 8 * 8
        raw, self._bits = np.packbits(self._bits[:whole]).tobytes(), self._bits[whole:]
        try:
            out = self._d.decompress(raw)
        except zlib.error as e:
            self.done, self.error = True, f"the sampled gzip tokens stop being a valid DEFLATE stream after " \
                                          f"{self.decoded} bytes ({e})"
            if self.on_warning is not None:
                self.on_warning(f"{self.error}; generation stopped")
            return b""
        self.decoded += len(out)
        self.done = self._d.eof
        return out


class StaticTables:
    """The coder's table for every symbol: one unigram table (cumulative, [n + 1])."""

    def __init__(self, cum: np.ndarray):
        self.cum = cum

    def table(self) -> np.ndarray:
        return self.cum

    def advance(self, symbol: int) -> None:
        pass


class M1Tables:
    """M1's table for the next symbol, its context restarting every max_window_bytes bytes exactly as
    `plain_ac` codes (row 0 of M1's fixed batch; rows do not affect each other)."""

    def __init__(self, m1):
        self.m1 = m1
        self.cache = m1.start()
        self.cum, self.pos = m1.first_cum, 0

    def table(self) -> np.ndarray:
        return self.cum

    def advance(self, symbol: int) -> None:
        self.pos += 1
        if self.pos == self.m1.max_window_bytes:  # the context restarts: the next symbol from BOS alone
            self.cum, self.pos = self.m1.first_cum, 0
            return
        cum, self.cache = self.m1.step(self.cache, np.full(self.m1.batch, symbol, np.int64),
                                       np.full(self.m1.batch, self.pos, np.int64))
        self.cum = cum[0]


class ArithStreamDecoder(TokenDecoder):
    """Incremental arithmetic decoder of a growing bit stream (static_ac, ac): `feed` returns the
    bytes the bits received so far determine (see the module docstring); `done` after end-of-document.

    The register `value` is decoded with unknown (not yet sampled) bits taken as 0; a symbol is
    emitted only when the all-0 and the all-1 continuations select the same symbol. When bits
    arrive, those already shifted into `value` are added in at their place (the decoder is linear in
    them: each renormalization doubles value and the unknown bits alike)."""

    error = None  # any bit string decodes

    def __init__(self, tables, token_bits: int, precision: int):
        self.tables, self.token_bits, self.precision = tables, token_bits, precision
        self.bits = np.zeros(0, np.uint8)
        self.low, self.high, self.value, self.pos = (int(x) for x in arith.decoder_init(self.bits))
        self.done, self.decoded = False, 0

    def feed(self, token: int) -> bytes:
        if self.done:
            return b""
        old = len(self.bits)
        self.bits = np.concatenate([self.bits, tokens_to_bits([int(token)], self.token_bits)])
        for i in range(old, min(len(self.bits), self.pos)):  # bits already in the value register
            if self.bits[i] and self.pos - 1 - i < arith.STATE_BITS:
                self.value += 1 << (self.pos - 1 - i)
        return self._decode()

    def _decode(self) -> bytes:
        out = bytearray()
        while not self.done:
            unknown = min(max(self.pos - len(self.bits), 0), arith.STATE_BITS)
            cum = self.tables.table()
            s = arith.find_symbol(cum, arith.decode_target(self.low, self.high, self.value, self.precision))
            top = self.value + (1 << unknown) - 1
            if arith.find_symbol(cum, arith.decode_target(self.low, self.high, top, self.precision)) != s:
                break  # the bits so far do not determine the next symbol
            self.low, self.high, self.value, self.pos = (int(x) for x in arith.decode_step(
                self.low, self.high, self.value, cum[s], cum[s + 1], self.precision, self.bits, self.pos))
            if s == plain_ac.EOF:
                self.done = True
                break
            out.append(int(s))
            self.tables.advance(int(s))
        self.decoded += len(out)
        return bytes(out)
