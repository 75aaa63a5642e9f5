"""Compressed-text tokenizers: text -> compressed bits -> N-bit tokens (vocab 2**N), and back.

Same interface as the plain tokenizers (`pcomp.data.tokenizers.Tokenizer`). Importing this module
registers them; `load_tokenizer` finds them without naming this package through the `pcomp.tokenizers`
entry points (setup.cfg) or the module recorded in a saved tokenizer.json:
  gzip        raw DEFLATE (zlib level 9, no header) of each document, chunked into N-bit tokens
  static_ac   arithmetic coding under a unigram byte model fitted on training text
  ac          arithmetic coding under M1, no windows (the paper's "ArithmeticCoding"; saved by
              pcomp <= 0.1 as kind "arith", which still loads)
  equal_info  Equal-Info Windows of b bits under M1 (the paper's "EqualInfoAC[b, v]")
None has BOS/EOS: a document's tokens end where its compressed stream ends.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import numba
import numpy as np

from pcomp.compress import arith, incremental, plain_ac
from pcomp.compress.m1 import BYTES, BYTES_EOS, M1
from pcomp.compress.packing import bits_to_tokens, codes_to_tokens, tokens_to_bits, tokens_to_codes
from pcomp.compress.quantize import cumulative, quantize_probs
from pcomp.compress.windows import WINDOW_RULE, check_window_bits, decode_windows, encode_windows
from pcomp.config import CompressConfig, check_token_bits
from pcomp.data.tokenizers import Tokenizer, register_tokenizer
from pcomp.errors import CheckpointError, ConfigError, DataError


class _CompressedTokenizer(Tokenizer):
    bos_id = None
    eos_id = None

    def __init__(self, token_bits: int):
        check_token_bits(token_bits)
        self.token_bits = token_bits
        self.vocab_size = 1 << token_bits


# --------------------------------------------------------------------------------- GZip
@register_tokenizer("gzip")
class GZipTokenizer(_CompressedTokenizer):
    """Raw DEFLATE (zlib level 9, no gzip/zlib header) chunked into N-bit tokens."""

    name = "gzip"

    def encode(self, data: bytes) -> np.ndarray:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        raw = c.compress(bytes(data)) + c.flush()
        return bits_to_tokens(np.unpackbits(np.frombuffer(raw, np.uint8)), self.token_bits)

    def decode(self, ids) -> bytes:
        raw = np.packbits(tokens_to_bits(ids, self.token_bits)).tobytes()
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(raw)
        except zlib.error as e:
            raise DataError(f"gzip tokens do not hold a valid DEFLATE stream: {e}") from None
        if not d.eof:
            raise DataError("gzip tokens end before the DEFLATE stream does")
        return out

    def prompt_ids(self, prompt: bytes) -> np.ndarray:
        return incremental.gzip_prompt_tokens(bytes(prompt), self.token_bits)

    def token_decoder(self, on_warning=None) -> incremental.GZipStreamDecoder:
        return incremental.GZipStreamDecoder(self.token_bits, on_warning)

    def to_config(self) -> dict:
        return {"kind": "gzip", "token_bits": self.token_bits}

    @classmethod
    def from_config(cls, config, directory=None):
        return cls(config["token_bits"])


# --------------------------------------------------------------------------------- StaticAC
@numba.njit(cache=True)
def _decode_until_eof(bits, cum, precision, eof, max_symbols):
    out = np.empty(max_symbols, np.int64)
    low, high, value, pos = arith.decoder_init(bits)
    for i in range(max_symbols):
        s = arith.find_symbol(cum, arith.decode_target(low, high, value, precision))
        if s == eof:
            return out[:i], True
        out[i] = s
        low, high, value, pos = arith.decode_step(low, high, value, cum[s], cum[s + 1], precision, bits, pos)
    return out, False


@register_tokenizer("static_ac")
class StaticACTokenizer(_CompressedTokenizer):
    """Arithmetic coding under one unigram distribution over bytes + end-of-document."""

    name = "static_ac"

    def __init__(self, freqs: np.ndarray, token_bits: int, precision: int = CompressConfig.precision):
        super().__init__(token_bits)
        self.freqs = np.asarray(freqs, np.int32)
        self.precision = precision
        if self.freqs.shape != (257,) or int(self.freqs.sum()) != 1 << precision or self.freqs.min() < 1:
            raise ConfigError("static_ac needs 257 frequencies >= 1 summing to 2**precision")
        self._cum = cumulative(self.freqs)

    @classmethod
    def fit(cls, docs: Sequence[bytes], token_bits: int, precision: int = CompressConfig.precision) -> StaticACTokenizer:
        """Unigram byte counts of `docs` (+1 smoothing) and one end-of-document per document."""
        counts = np.ones(257, np.float64)
        for d in docs:
            counts[:256] += np.bincount(np.frombuffer(d, np.uint8), minlength=256)
        counts[256] = max(len(docs), 1)
        return cls(quantize_probs(counts / counts.sum(), precision), token_bits, precision)

    def encode(self, data: bytes) -> np.ndarray:
        sym = np.append(np.frombuffer(bytes(data), np.uint8).astype(np.int64), 256)
        return bits_to_tokens(arith.encode(sym, self.freqs, self.precision), self.token_bits)

    def decode(self, ids) -> bytes:
        bits = tokens_to_bits(ids, self.token_bits)
        min_cost = self.precision - np.log2(self.freqs.max())  # bits of the cheapest symbol
        max_symbols = int(len(bits) / min_cost) + 2
        out, ok = _decode_until_eof(bits, self._cum, self.precision, 256, max_symbols)
        if not ok:
            raise DataError("static_ac tokens do not end with an end-of-document symbol")
        return out.astype(np.uint8).tobytes()

    def prompt_ids(self, prompt: bytes) -> np.ndarray:
        sym = np.frombuffer(bytes(prompt), np.uint8).astype(np.int64)
        return incremental.ac_prompt_tokens(self._cum[sym], self._cum[sym + 1], self.precision, self.token_bits)

    def token_decoder(self, on_warning=None) -> incremental.ArithStreamDecoder:
        return incremental.ArithStreamDecoder(incremental.StaticTables(self._cum), self.token_bits, self.precision)

    def to_config(self) -> dict:
        return {"kind": "static_ac", "token_bits": self.token_bits, "precision": self.precision,
                "freqs": self.freqs.tolist()}

    @classmethod
    def from_config(cls, config, directory=None):
        return cls(np.asarray(config["freqs"]), config["token_bits"], config.get("precision", CompressConfig.precision))


# --------------------------------------------------------------------------------- M1-driven
M1_COPY_DIR = "m1"  # a saved M1-driven tokenizer's own copy of M1 (see `_M1Tokenizer._save_files`)


def save_m1_copy(m1: M1, dest: Path) -> None:
    """M1's run directory reduced to what decoding needs: config.json (checkpoint_dir cleared, so the
    copy's own checkpoints/ is read), tokenizer/ and the checkpoint of the step `m1` was loaded from."""
    src = Path(m1.trained.workdir).absolute()
    dest = Path(dest).absolute()
    if src == dest:
        return
    cfg = json.loads((src / "config.json").read_text())
    ckpt_root = Path(cfg.get("training", {}).get("checkpoint_dir") or src / "checkpoints")
    step_dir = ckpt_root / str(m1.trained.step)
    if not step_dir.is_dir():
        raise CheckpointError(f"cannot copy M1: its checkpoint {step_dir} is not a local directory")
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    cfg.setdefault("training", {})["checkpoint_dir"] = ""
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    shutil.copytree(src / "tokenizer", tmp / "tokenizer")
    shutil.copytree(step_dir, tmp / "checkpoints" / step_dir.name)
    os.replace(tmp, dest)


def _m1_location(config: dict, directory) -> str:
    """The tokenizer's own M1 copy when it has one, else the M1 it recorded."""
    if directory is not None and (Path(directory) / M1_COPY_DIR / "config.json").is_file():
        return str(Path(directory) / M1_COPY_DIR)
    return config["m1_path"]


# Tokenizers over the same M1 with the same setup share one (loading it and compiling its step is slow).
_shared_m1 = functools.lru_cache(maxsize=4)(M1.for_windows)


class _M1Tokenizer(_CompressedTokenizer):
    symbols = BYTES
    window_bits = None  # Equal-Info: sizes M1's KV cache to the windows (`M1.for_windows`); None: no windows

    def __init__(self, m1_path: str | Path, token_bits: int, *, precision: int = CompressConfig.precision,
                 batch: int = CompressConfig.m1_batch, fingerprint: str | None = None, context: int = 0,
                 load_from: str | Path | None = None):
        super().__init__(token_bits)
        self.m1_path = str(Path(m1_path).absolute())  # as recorded (part of the tokenizer's identity)
        self._load_from = str(Path(load_from or m1_path).absolute())  # where M1 is read: the saved copy if any
        self.precision, self.batch, self._fingerprint, self._context = precision, batch, fingerprint, context

    @property
    def m1_dir(self) -> str:
        """The M1 run directory this tokenizer reads (its saved copy when it has one)."""
        return self._load_from

    @functools.cached_property
    def m1(self) -> M1:
        """Loaded on first use: training M2 on prepared tokens needs only the vocabulary."""
        m1 = _shared_m1(self._load_from, self.window_bits, precision=self.precision, batch=self.batch,
                        symbols=self.symbols, context=self._context)
        if self._fingerprint is not None and self._fingerprint != m1.fingerprint:
            raise CheckpointError(
                f"the M1 at {self._load_from} (fingerprint {m1.fingerprint[:16]}) is not the M1 this tokenizer "
                f"was made with (fingerprint {self._fingerprint[:16]})"
            )
        return m1

    def encode(self, data: bytes) -> np.ndarray:
        return self.encode_batch([data])[0]

    def _save_files(self, directory) -> None:
        """A copy of M1 (its config, tokenizer and the checkpoint this tokenizer codes with) in
        directory/m1, so a saved tokenizer, and an M2 run that copies it, decodes wherever it is
        moved; `from_config` prefers that copy and the fingerprint check still applies to it."""
        save_m1_copy(self.m1, Path(directory) / M1_COPY_DIR)

    def _m1_config(self) -> dict:
        return {"m1_path": self.m1_path, "token_bits": self.token_bits, "precision": self.precision,
                "batch": self.batch, "fingerprint": self._fingerprint or self.m1.fingerprint,
                "context": self._context or self.m1.context}


@register_tokenizer("ac")
class ArithmeticCodingTokenizer(_M1Tokenizer):
    """Plain arithmetic coding under M1 (no windows): one stream per document, ended by EOS."""

    name = "ac"
    symbols = BYTES_EOS

    def encode_batch(self, docs) -> list[np.ndarray]:
        return [bits_to_tokens(b, self.token_bits) for b in plain_ac.encode_docs(self.m1, [bytes(d) for d in docs])]

    def decode(self, ids) -> bytes:
        bits = tokens_to_bits(ids, self.token_bits)
        return plain_ac.decode_docs(self.m1, [bits], max_bytes=plain_ac.max_symbols(len(bits), self.m1))[0]

    def prompt_ids(self, prompt: bytes) -> np.ndarray:
        lo, hi = plain_ac.symbol_intervals(self.m1, [bytes(prompt)])[0]
        return incremental.ac_prompt_tokens(lo[:-1], hi[:-1], self.m1.precision, self.token_bits)  # no EOS

    def token_decoder(self, on_warning=None) -> incremental.ArithStreamDecoder:
        return incremental.ArithStreamDecoder(incremental.M1Tables(self.m1), self.token_bits, self.m1.precision)

    def to_config(self) -> dict:
        return {"kind": "ac", **self._m1_config()}

    @classmethod
    def from_config(cls, config, directory=None):
        return cls(config["m1_path"], config["token_bits"], precision=config["precision"], batch=config["batch"],
                   load_from=_m1_location(config, directory),
                   fingerprint=config["fingerprint"], context=config.get("context", 0))


register_tokenizer("arith")(ArithmeticCodingTokenizer)  # its kind's name until 0.1: saved ones still load


@register_tokenizer("equal_info")
class EqualInfoTokenizer(_M1Tokenizer):
    """Equal-Info Windows of b bits under M1, each window b / N tokens (`pcomp.compress.windows`)."""

    name = "equal_info"

    def __init__(self, m1_path, window_bits: int, token_bits: int, *,
                 segment_bytes: int = CompressConfig.segment_bytes, **kw):
        super().__init__(m1_path, token_bits, **kw)
        check_window_bits(window_bits, token_bits, self.precision)
        self.window_bits = window_bits  # (before the lazy M1 loads: it sizes the cache)
        self.segment_bytes = segment_bytes

    def encode_batch(self, docs) -> list[np.ndarray]:
        enc = encode_windows(self.m1, [bytes(d) for d in docs], self.window_bits, segment_bytes=self.segment_bytes)
        return [codes_to_tokens(enc.doc_codes(i), self.window_bits, self.token_bits) for i in range(len(docs))]

    def decode(self, ids) -> bytes:
        codes = tokens_to_codes(ids, self.window_bits, self.token_bits)
        return decode_windows(self.m1, codes, self.window_bits)[0]

    def prompt_ids(self, prompt: bytes) -> np.ndarray:
        """Whole windows, the last one closed by the end of the prompt (as a document's last window
        is by the document's end): nothing of the prompt is dropped, and M2 continues at a window
        boundary."""
        return np.asarray(self.encode(bytes(prompt)), np.int32)

    def token_decoder(self, on_warning=None) -> incremental.WindowDecoder:
        return incremental.WindowDecoder(self.m1, self.window_bits, self.token_bits, on_warning)

    def to_config(self) -> dict:
        return {"kind": "equal_info", "window_bits": self.window_bits, "window_rule": WINDOW_RULE,
                "segment_bytes": self.segment_bytes, **self._m1_config()}

    @classmethod
    def from_config(cls, config, directory=None):
        if config.get("window_rule") != WINDOW_RULE:
            raise DataError(f"tokenizer at {directory} made its windows with rule {config.get('window_rule')!r}; "
                            f"this pcomp decodes {WINDOW_RULE!r}")
        return cls(config["m1_path"], config["window_bits"], config["token_bits"],
                   load_from=_m1_location(config, directory),
                   segment_bytes=config.get("segment_bytes", CompressConfig.segment_bytes),
                   precision=config["precision"],
                   batch=config["batch"], fingerprint=config["fingerprint"], context=config.get("context", 0))
