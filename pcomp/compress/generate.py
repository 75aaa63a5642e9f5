"""Text from an M2 trained over compressed tokens: sample M2 tokens and decode them as they come.

Equal-Info windows (`generate_text`, `WindowDecoder`): regroup the tokens into windows of b / N
tokens, decode each window with M1 as soon as it is complete, and stream the bytes.

Not every b-bit string is a window: under the unique-prefix rule (`pcomp.compress.windows`) a code
that no prefix of any text pads to never decodes within M1's context. M2 can sample one; such a
window is reported once (through `on_skip`, `pcomp generate` prints one `pcomp: warning:` line),
contributes no text and generation goes on with the next window.

The prompt is compressed with the same M1 and window settings first. Windows are always whole
(exactly b / N tokens): the prompt's last window is the one its last bytes make, closed by the end of
the prompt rather than by the b-bit budget, just as a document's last window is in the training data;
so nothing of the prompt is dropped, and M2 continues at a window boundary.

Stream codes (`generate_stream`, `stream_decoder`): gzip, static_ac and arith (plain AC under M1)
code a document as one stream, so the sampled tokens are one growing bit stream, decoded
incrementally:
  gzip       the bytes go through a raw-DEFLATE `zlib.decompressobj`. A sampled stream may stop being
             valid DEFLATE: that is reported once (`on_error`; `pcomp generate` prints one
             `pcomp: warning:` line) and generation stops there, with the text decoded so far. The
             end of the DEFLATE stream (its final block) ends the document and the generation.
  static_ac  any bit string decodes to some symbols, under the tokenizer's unigram table or, for
  arith      arith, M1 (context restarting every M1.max_window_bytes bytes, as `plain_ac` codes).
             A symbol is emitted only once the sampled bits determine it (every continuation of the
             bits decodes it), so nothing depends on padding; generation stops at the end-of-document
             symbol or at the sample length (the symbols the last bits leave open are not emitted).
The prompt is coded by the same tokenizer as the beginning of a document: gzip with a sync flush
(a non-final block, byte-aligned, plus an empty stored block when N = 16 needs an even byte count),
static_ac/arith with the arithmetic coder's minimal termination and no end-of-document, padded with
zeros to whole tokens: every continuation of those bits decodes to the prompt first (the
termination's dyadic interval lies inside the prompt's interval), so M2 continues the document.
Bytes that the prompt's bits already determine beyond the prompt count as generated text.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import Callable

import numpy as np

from pcomp.compress import arith, plain_ac
from pcomp.compress.packing import bits_to_tokens, tokens_to_bits, tokens_to_codes
from pcomp.compress.quantize import cumulative
from pcomp.compress.tokenizers import (ArithmeticCodingTokenizer, EqualInfoTokenizer, GZipTokenizer,
                                       StaticACTokenizer)
from pcomp.compress.windows import decode_windows
from pcomp.errors import CompressedFormatError, ConfigError
from pcomp.models.generate import generate
from pcomp.train.load import TrainedModel


def tokens_per_window(tok: EqualInfoTokenizer) -> int:
    return tok.window_bits // tok.token_bits


def encode_prompt(tok: EqualInfoTokenizer, prompt: bytes) -> np.ndarray:
    """The prompt's M2 tokens: whole windows of b / N tokens (see the module docstring)."""
    return np.asarray(tok.encode(bytes(prompt)), np.int32)


class WindowDecoder:
    """Feed M2 tokens one by one; each completed window comes back decoded (b"" when it is not a
    window; its index is then passed once to `on_skip` and recorded in `skipped`)."""

    def __init__(self, tok: EqualInfoTokenizer, on_skip: Callable[[int, str], None] | None = None):
        self.tok, self.on_skip = tok, on_skip
        self.per = tokens_per_window(tok)
        self.pending: list[int] = []
        self.windows = 0
        self.skipped: list[int] = []

    def feed(self, token: int) -> bytes:
        self.pending.append(int(token))
        if len(self.pending) < self.per:
            return b""
        codes = tokens_to_codes(self.pending, self.tok.window_bits, self.tok.token_bits)
        self.pending = []
        index, self.windows = self.windows, self.windows + 1
        try:
            data, _ = decode_windows(self.tok.m1, codes, self.tok.window_bits)
        except CompressedFormatError as e:
            self.skipped.append(index)
            if self.on_skip is not None:
                self.on_skip(index, str(e))
            return b""
        return data


def generate_text(run: TrainedModel, prompt: bytes, *, max_windows: int, temperature: float = 0.8,
                  top_k: int = 40, seed: int = 0, on_bytes: Callable[[bytes], None] | None = None,
                  on_skip: Callable[[int, str], None] | None = None,
                  echo_prompt: bool = False) -> tuple[bytes, WindowDecoder]:
    """Continue `prompt` with `max_windows` windows sampled from the M2 `run` (whose tokenizer is an
    `EqualInfoTokenizer`); each decoded window's bytes go to `on_bytes` as soon as it is complete.
    With `echo_prompt` the prompt goes to `on_bytes` first, once it is known to fit.
    Returns (the generated bytes, without the prompt; the decoder: its `skipped` windows)."""
    tok = run.tokenizer
    if not isinstance(tok, EqualInfoTokenizer):
        raise ConfigError(f"generation through M1 needs an M2 over equal_info windows; this run's tokenizer is "
                          f"{tok.name}")
    ids = encode_prompt(tok, prompt)
    _check_prompt(run, ids, "max_windows", max_windows, f" ({len(ids) // tokens_per_window(tok)} windows)")
    if echo_prompt and on_bytes is not None:
        on_bytes(bytes(prompt))
    decoder = WindowDecoder(tok, on_skip)
    out: list[bytes] = []

    def emit(token: int) -> None:
        data = decoder.feed(token)
        if data:
            out.append(data)
            if on_bytes is not None:
                on_bytes(data)

    generate(run.graphdef, run.params, ids, max_new_tokens=max_windows * decoder.per, max_len=run.cfg.model.max_seq_len,
             temperature=temperature, top_k=top_k, seed=seed, on_token=emit)
    return b"".join(out), decoder


# ----------------------------------------------------------------------------- stream codes
STREAM_KINDS = ("gzip", "static_ac", "arith")  # tokenizer names `generate_stream` decodes
_EMPTY_STORED_BLOCK = b"\x00\x00\x00\xff\xff"  # non-final, stored, LEN 0 (starts at a byte boundary)


def encode_stream_prompt(tok, prompt: bytes) -> np.ndarray:
    """The prompt's M2 tokens as the beginning of a document (see the module docstring)."""
    prompt = bytes(prompt)
    if isinstance(tok, GZipTokenizer):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        raw = c.compress(prompt) + c.flush(zlib.Z_SYNC_FLUSH) if prompt else b""
        if 8 * len(raw) % tok.token_bits:
            raw += _EMPTY_STORED_BLOCK
        return bits_to_tokens(np.unpackbits(np.frombuffer(raw, np.uint8)), tok.token_bits)
    if isinstance(tok, StaticACTokenizer):
        cum = cumulative(tok.freqs)
        sym = np.frombuffer(prompt, np.uint8).astype(np.int64)
        bits = arith.encode_intervals(cum[sym], cum[sym + 1], tok.precision)
    elif isinstance(tok, ArithmeticCodingTokenizer):
        lo, hi = plain_ac.symbol_intervals(tok.m1, [prompt])[0]
        bits = arith.encode_intervals(lo[:-1], hi[:-1], tok.m1.precision)  # without the end-of-document
    else:
        raise ConfigError(f"tokenizer {tok.name} is not a stream code; expected one of {', '.join(STREAM_KINDS)}")
    return bits_to_tokens(bits, tok.token_bits)


class GZipStreamDecoder:
    """Feed sampled tokens; returns the bytes the raw DEFLATE stream yields so far. `done` once the
    stream ends (final block) or turns invalid; the latter is passed once to `on_error` (`error`)."""

    def __init__(self, tok: GZipTokenizer, on_error: Callable[[str], None] | None = None):
        self.tok, self.on_error = tok, on_error
        self._d = zlib.decompressobj(-15)
        self._bits = np.zeros(0, np.uint8)
        self.done, self.error, self.decoded = False, None, 0

    def feed(self, token: int) -> bytes:
        if self.done:
            return b""
        self._bits = np.concatenate([self._bits, tokens_to_bits([int(token)], self.tok.token_bits)])
        whole = len(self._bits) // 8 * 8
        raw, self._bits = np.packbits(self._bits[:whole]).tobytes(), self._bits[whole:]
        try:
            out = self._d.decompress(raw)
        except zlib.error as e:
            self.done, self.error = True, f"the sampled gzip tokens stop being a valid DEFLATE stream after " \
                                          f"{self.decoded} bytes ({e})"
            if self.on_error is not None:
                self.on_error(self.error)
            return b""
        self.decoded += len(out)
        self.done = self._d.eof
        return out


class _StaticTables:
    """The coder's table for every symbol: one unigram table."""

    def __init__(self, cum: np.ndarray):
        self.cum = cum

    def table(self) -> np.ndarray:
        return self.cum

    def advance(self, symbol: int) -> None:
        pass


class _M1Tables:
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


class ArithStreamDecoder:
    """Incremental arithmetic decoder of a growing bit stream (static_ac, arith): `feed` returns the
    bytes the bits received so far determine (see the module docstring); `done` after end-of-document.

    The register `value` is decoded with unknown (not yet sampled) bits taken as 0; a symbol is
    emitted only when the all-0 and the all-1 continuations select the same symbol. When bits
    arrive, those already shifted into `value` are added in at their place (the decoder is linear in
    them: each renormalization doubles value and the unknown bits alike)."""

    def __init__(self, tables, token_bits: int, precision: int):
        self.tables, self.token_bits, self.precision = tables, token_bits, precision
        self.bits = np.zeros(0, np.uint8)
        self.low, self.high, self.value, self.pos = (int(x) for x in arith.decoder_init(self.bits))
        self.done, self.error, self.decoded = False, None, 0

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


def stream_decoder(tok, on_error: Callable[[str], None] | None = None):
    """The incremental decoder of a stream-coded tokenizer's sampled tokens."""
    if isinstance(tok, GZipTokenizer):
        return GZipStreamDecoder(tok, on_error)
    if isinstance(tok, StaticACTokenizer):
        return ArithStreamDecoder(_StaticTables(cumulative(tok.freqs)), tok.token_bits, tok.precision)
    if isinstance(tok, ArithmeticCodingTokenizer):
        return ArithStreamDecoder(_M1Tables(tok.m1), tok.token_bits, tok.m1.precision)
    raise ConfigError(f"tokenizer {tok.name} is not a stream code; expected one of {', '.join(STREAM_KINDS)}")


def generate_stream(run: TrainedModel, prompt: bytes, *, max_tokens: int, temperature: float = 0.8,
                    top_k: int = 40, seed: int = 0, on_bytes: Callable[[bytes], None] | None = None,
                    on_error: Callable[[str], None] | None = None, echo_prompt: bool = False):
    """Continue `prompt` with up to `max_tokens` tokens sampled from the M2 `run` over a stream code
    (gzip, static_ac, arith), decoding as they come (see the module docstring); decoded bytes go to
    `on_bytes` as soon as they are known, the prompt first with `echo_prompt`. Stops early at the end
    of the document or (gzip) an invalid stream, which goes once to `on_error`.
    Returns (the generated bytes, without the prompt; the decoder: `done`, `error`)."""
    tok = run.tokenizer
    if tok.name not in STREAM_KINDS:
        raise ConfigError(f"tokenizer {tok.name} is not a stream code; expected one of {', '.join(STREAM_KINDS)}")
    ids = encode_stream_prompt(tok, prompt)
    _check_prompt(run, ids, "max_tokens", max_tokens)
    decoder = stream_decoder(tok, on_error)
    head = b"".join(decoder.feed(t) for t in ids)
    if head[: len(prompt)] != bytes(prompt):
        raise RuntimeError(f"the prompt's {tok.name} tokens decode to {head[:80]!r}, not the prompt")
    if echo_prompt and on_bytes is not None:
        on_bytes(bytes(prompt))
    out: list[bytes] = []

    def emit(data: bytes) -> None:
        if data:
            out.append(data)
            if on_bytes is not None:
                on_bytes(data)

    emit(head[len(prompt):])

    def on_token(token: int) -> bool:
        emit(decoder.feed(token))
        return decoder.done

    if not decoder.done:  # (the prompt's bits may already determine the end of the document)
        generate(run.graphdef, run.params, ids, max_new_tokens=max_tokens, max_len=run.cfg.model.max_seq_len,
                 temperature=temperature, top_k=top_k, seed=seed, on_token=on_token)
    return b"".join(out), decoder


class Utf8Stream:
    """Bytes -> text written as it arrives, a UTF-8 sequence split across windows held until complete,
    invalid bytes shown as U+FFFD."""

    def __init__(self, write: Callable[[str], object]):
        self.write = write
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, data: bytes) -> None:
        text = self._dec.decode(data)
        if text:
            self.write(text)

    def close(self) -> None:
        text = self._dec.decode(b"", final=True)
        if text:
            self.write(text)


def _check_prompt(run, ids, length_name: str, length: int, detail: str = "") -> None:
    """The checks every M2-over-compressed-tokens generation makes before sampling: a positive length,
    a non-empty prompt (such an M2 has no BOS) that fits the model's context."""
    if length < 1:
        raise ConfigError(f"{length_name}={length} must be >= 1")
    if len(ids) == 0:
        raise ConfigError("--prompt is empty and an M2 over compressed tokens has no BOS to start from; give a prompt")
    context = run.cfg.model.max_seq_len
    if len(ids) > context:
        raise ConfigError(f"--prompt compresses to {len(ids)} tokens{detail} but the model's context is {context} "
                          f"tokens (model.max_seq_len); shorten the prompt")
