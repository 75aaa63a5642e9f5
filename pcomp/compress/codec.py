"""Whole-file Equal-Info compression with M1: `compress` / `decompress` (the CLI's engine)."""

from __future__ import annotations

import dataclasses
import zlib

import jax

from pcomp.compress import fileformat
from pcomp.compress.m1 import M1
from pcomp.compress.windows import WINDOW_RULE, decode_windows, encode_windows
from pcomp.config import CompressConfig
from pcomp.errors import CompressedFormatError, ConfigError


def compress(m1: M1, data: bytes, cfg: CompressConfig = CompressConfig(), progress=None) -> bytes:
    """`data` as a pcomp file: Equal-Info windows of `cfg.window_bits` under `m1` (see fileformat).

    The header is `cfg` plus what identifies M1 and the original; m1 must be set up as cfg says.
    """
    cfg.validate()
    if (cfg.precision, cfg.m1_batch) != (m1.precision, m1.batch):
        raise ConfigError(f"M1 is set up with precision {m1.precision} and batch {m1.batch}, the settings say "
                          f"{cfg.precision} and {cfg.m1_batch}: build it with M1.for_windows from the same settings")
    enc = encode_windows(m1, [data], cfg.window_bits, segment_bytes=cfg.segment_bytes, progress=progress)
    header = {
        **cfg.to_dict(),
        "m1_fingerprint": m1.fingerprint,
        "m1_context": m1.context,
        "m1_name": m1.trained.cfg.model.name,
        "platform": jax.default_backend(),
        "original_length": len(data),
        "original_crc32": zlib.crc32(data),
    }
    return fileformat.pack(header, enc.codes)


def config_of(header: dict) -> CompressConfig:
    """The settings a file was made with (its header's `CompressConfig` fields)."""
    names = [f.name for f in dataclasses.fields(CompressConfig)]
    return CompressConfig(**{k: header[k] for k in names if k in header})


def load_m1_for(path, header: dict) -> M1:
    """The M1 at `path`, set up as the file's header requires (precision, batch, KV-cache length)."""
    cfg = config_of(header)
    return M1.for_windows(path, cfg.window_bits, precision=cfg.precision, batch=cfg.m1_batch,
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
