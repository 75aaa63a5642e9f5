"""The `pcomp compress` file: magic, version, JSON header, window payload, CRC32 trailer.

    magic     8 bytes  b"PCOMPEIW"
    version   u16 big-endian (1)
    hlen      u32 big-endian, then hlen bytes of UTF-8 JSON header: the `CompressConfig` fields
              (window_bits, token_bits, precision, m1_batch, segment_bytes, window_rule), then
              m1_fingerprint, m1_context, m1_name, platform, n_windows, original_length, original_crc32
    payload   n_windows * window_bits / 8 bytes: each window's b bits, big-endian
    trailer   u32 big-endian CRC32 of everything before it

Reading checks, in order: magic (not our file), version, header, payload length (truncated),
CRC32 (corrupted). The M1 fingerprint and the decoded bytes' length and CRC32 are checked by the
caller; any failure is a `CompressedFormatError`, never silent garbage.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from pcomp.compress.packing import codes_to_tokens, tokens_to_codes
from pcomp.errors import CompressedFormatError

MAGIC = b"PCOMPEIW"
VERSION = 1
_FIXED = len(MAGIC) + 2 + 4
REQUIRED = ("window_bits", "window_rule", "token_bits", "precision", "m1_fingerprint", "m1_batch", "m1_context",
            "n_windows", "original_length", "original_crc32")


def pack(header: dict, codes: np.ndarray) -> bytes:
    """Serialize windows `codes` (uint64 [n], header['window_bits'] bits each) with `header`."""
    codes = np.asarray(codes, np.uint64)
    payload = codes_to_tokens(codes, header["window_bits"], 8).astype(np.uint8).tobytes()
    head = json.dumps({**header, "n_windows": int(len(codes))}, sort_keys=True).encode()
    blob = MAGIC + struct.pack(">HI", VERSION, len(head)) + head + payload
    return blob + struct.pack(">I", zlib.crc32(blob))


def unpack(blob: bytes, name: str = "input") -> tuple[dict, np.ndarray]:
    """(header, codes uint64 [n]) of a file written by `pack`, or a CompressedFormatError saying why not."""
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise CompressedFormatError(f"{name} is not a pcomp compressed file (bad magic)")
    if len(blob) < _FIXED + 4:
        raise CompressedFormatError(f"{name} is truncated ({len(blob)} bytes)")
    version, hlen = struct.unpack(">HI", blob[len(MAGIC) : _FIXED])
    if version != VERSION:
        raise CompressedFormatError(f"{name} has format version {version}; this pcomp reads version {VERSION}")
    if _FIXED + hlen + 4 > len(blob):
        raise CompressedFormatError(f"{name} is truncated (header of {hlen} bytes does not fit)")
    try:
        header = json.loads(blob[_FIXED : _FIXED + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CompressedFormatError(f"{name} is corrupted (unreadable header)") from None
    _check_header(header, name)
    b, n = header["window_bits"], header["n_windows"]
    expected = _FIXED + hlen + n * b // 8 + 4
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "corrupted (trailing bytes)"
        raise CompressedFormatError(f"{name} is {what}: {len(blob)} bytes, expected {expected}")
    (crc,) = struct.unpack(">I", blob[-4:])
    if crc != zlib.crc32(blob[:-4]):
        raise CompressedFormatError(f"{name} is corrupted (CRC32 mismatch)")
    return header, tokens_to_codes(np.frombuffer(blob[_FIXED + hlen : -4], np.uint8), b, 8)


def payload_size(header: dict) -> int:
    """Bytes of the window payload; the rest of a file (magic, version, header, CRC32) is framing."""
    return header["n_windows"] * header["window_bits"] // 8


def _check_header(header, name: str) -> None:
    """Every field the decoder relies on has the right type and range (a CRC only proves integrity)."""
    missing = [k for k in REQUIRED if not isinstance(header, dict) or k not in header]
    if missing:
        raise CompressedFormatError(f"{name} is corrupted (header lacks {missing})")

    def is_int(v, lo, hi):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    checks = {
        "window_bits": is_int(header["window_bits"], 8, 64) and header["window_bits"] % 8 == 0,
        "token_bits": header["token_bits"] in (8, 16) and not isinstance(header["token_bits"], bool),
        "precision": is_int(header["precision"], 2, 24),
        "m1_fingerprint": isinstance(header["m1_fingerprint"], str) and len(header["m1_fingerprint"]) == 64,
        "m1_batch": is_int(header["m1_batch"], 1, 1 << 20),
        "m1_context": is_int(header["m1_context"], 2, 1 << 20),
        "n_windows": is_int(header["n_windows"], 0, 1 << 48),
        "original_length": is_int(header["original_length"], 0, 1 << 56),
        "original_crc32": is_int(header["original_crc32"], 0, (1 << 32) - 1),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise CompressedFormatError(f"{name} is corrupted (bad header fields: " +
                                    ", ".join(f"{k}={header[k]!r}" for k in bad) + ")")


def read(path: str | Path) -> tuple[dict, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise CompressedFormatError(f"compressed file {path} does not exist")
    return unpack(path.read_bytes(), str(path))
