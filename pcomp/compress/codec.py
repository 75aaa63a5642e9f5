"""Whole-file Equal-Info compression with M1: `compress` / `decompress` (the CLI's engine)."""

from __future__ import annotations

import zlib

import jax

from pcomp.compress import fileformat
from pcomp.compress.m1 import M1
from pcomp.compress.windows import WINDOW_RULE, check_window_bits, decode_windows, encode_windows, window_context
from pcomp.train.load import load_trained
from pcomp.errors import CompressedFormatError


def compress(m1: M1, data: bytes, *, window_bits: int = 16, token_bits: int = 16, segment_bytes: int = 2048,
             progress=None) -> bytes:
    """`data` as a pcomp file: Equal-Info windows of `window_bits` under `m1` (see fileformat)."""
    check_window_bits(window_bits, token_bits, m1.precision)
    enc = encode_windows(m1, [data], window_bits, segment_bytes=segment_bytes, progress=progress)
    header = {
        "window_bits": window_bits,
        "window_rule": WINDOW_RULE,
        "token_bits": token_bits,
        "precision": m1.precision,
        "segment_bytes": segment_bytes,
        "m1_fingerprint": m1.fingerprint,
        "m1_batch": m1.batch,
        "m1_context": m1.context,
        "m1_name": m1.trained.cfg.model.name,
        "platform": jax.default_backend(),
        "original_length": len(data),
        "original_crc32": zlib.crc32(data),
    }
    return fileformat.pack(header, enc.codes)


def m1_for_windows(path, window_bits: int, *, precision: int = 14, batch: int = 256, context: int = 0) -> M1:
    """The M1 at `path` set up for b-bit windows (KV cache sized by `window_context` unless given)."""
    trained = load_trained(path)
    context = context or window_context(window_bits, trained.cfg.model.max_seq_len)
    return M1(trained, precision=precision, batch=batch, context=context)


def load_m1_for(path, header: dict) -> M1:
    """The M1 at `path`, set up as the file's header requires (precision, batch, KV-cache length)."""
    return m1_for_windows(path, header["window_bits"], precision=header["precision"], batch=header["m1_batch"],
                          context=header["m1_context"])


def check_m1(m1: M1, header: dict, name: str = "input") -> None:
    """The file was made by this M1, set up the same way, with this window rule."""
    if header["window_rule"] != WINDOW_RULE:
        raise CompressedFormatError(
            f"{name} was made with window rule {header['window_rule']!r}; this pcomp decodes {WINDOW_RULE!r}"
        )
    if header["m1_fingerprint"] != m1.fingerprint:
        raise CompressedFormatError(
            f"{name} was made with M1 {header['m1_fingerprint'][:16]}, but the given M1 is {m1.fingerprint[:16]}: "
            "decompress with the same M1 checkpoint"
        )
    if (header["precision"], header["m1_batch"], header["m1_context"]) != (m1.precision, m1.batch, m1.context):
        raise CompressedFormatError(
            f"{name} needs M1 precision {header['precision']}, batch {header['m1_batch']} and context "
            f"{header['m1_context']}, got {m1.precision}, {m1.batch} and {m1.context}"
        )


def decompress(m1: M1, blob: bytes, name: str = "input", progress=None) -> bytes:
    """Inverse of `compress`; a wrong M1, a corrupt file or a failed check is a CompressedFormatError."""
    header, codes = fileformat.unpack(blob, name)
    check_m1(m1, header, name)
    data, _ = decode_windows(m1, codes, header["window_bits"], progress=progress)
    if len(data) != header["original_length"] or zlib.crc32(data) != header["original_crc32"]:
        where = header.get("platform", "?")
        raise CompressedFormatError(
            f"{name}: decoded {len(data)} bytes do not match the original ({header['original_length']} bytes, "
            f"CRC32 {header['original_crc32']}); the file is corrupted, or M1's logits differ on this device "
            f"({jax.default_backend()}) from the one it was made on ({where})"
        )
    return data
