"""The `pcomp compress` file: magic, version, JSON header, payload, CRC32 trailer.

    magic     8 bytes  b"PCOMPEIW"
    version   u16 big-endian: 3 for "best" files (m1_overlap, no EOS, varint stream lengths), 2 for
              windows files (unchanged since version 2, so older pcomp reads them); version 1 files
              (windows) and version 2 "best" files are read too
    hlen      u32 big-endian, then hlen bytes of UTF-8 JSON header: "mode" (absent in version 1 =
              "windows"), the coder settings, m1_fingerprint, m1_context, m1_name, platform,
              original_length, original_crc32, and per mode:
                windows  window_bits, token_bits, precision, m1_batch, segment_bytes, window_rule, n_windows
                best     precision, m1_batch, segment_bytes, n_segments, payload_bytes, m1_overlap and
                         stream_end ("length": streams hold bytes only; version 2: absent, = 0 and
                         "eos": each stream ends in M1's end-of-document symbol)
    payload   windows: n_windows * window_bits / 8 bytes, each window's b bits, big-endian
              best:    n_segments stream lengths in bits (version 3: unsigned LEB128 varints, 2 bytes for
                       a stream under 16,384 bits; version 2: u32 big-endian), then the segments'
                       arithmetic-coded bit streams one after another, packed big-endian, zero-padded
                       to a byte
    trailer   u32 big-endian CRC32 of everything before it

Reading checks, in order: magic (not our file), version, header (fields, types, ranges, mode),
payload length (truncated), CRC32 (corrupted), and for "best" that the stream lengths add up to the
payload. The M1 fingerprint and the decoded bytes' length and CRC32 are checked by the caller; any
failure is a `CompressedFormatError`, never silent garbage.
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
VERSION = 3  # the newest version written (`_version`)
READS = (1, 2, 3)  # format versions this pcomp reads
WINDOWS, BEST = "windows", "best"
MODES = (WINDOWS, BEST)  # "windows": Equal-Info windows (the M2 tokenization); "best": plain AC under M1
_FIXED = len(MAGIC) + 2 + 4
_COMMON = ("precision", "m1_fingerprint", "m1_batch", "m1_context", "original_length", "original_crc32")
REQUIRED = {WINDOWS: ("window_bits", "window_rule", "token_bits", "n_windows") + _COMMON,
            BEST: ("segment_bytes", "n_segments", "payload_bytes") + _COMMON}


def _seal(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    blob = MAGIC + struct.pack(">HI", _version(header), len(head)) + head + payload
    return blob + struct.pack(">I", zlib.crc32(blob))


def _version(header: dict) -> int:
    """3 for "best" files (a pcomp that cannot re-prime M1 or read varint lengths refuses them at its
    version check instead of decoding other bytes), 2 for windows files."""
    return VERSION if header.get("mode") == BEST else 2


def varints(values) -> bytes:
    """Unsigned LEB128: 7 bits a byte, least significant first, the high bit set on all but the last."""
    out = bytearray()
    for v in values:
        v = int(v)
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def read_varints(data: bytes, n: int) -> tuple[list[int], int] | None:
    """The first n LEB128 varints of data and the bytes they took, or None if data ends inside them
    (or a varint runs past 8 bytes: no stream is that long)."""
    values, at = [], 0
    for _ in range(n):
        v = shift = 0
        while True:
            if at >= len(data) or shift > 49:
                return None
            b = data[at]
            at += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        values.append(v)
    return values, at


def pack(header: dict, codes: np.ndarray) -> bytes:
    """Serialize windows `codes` (uint64 [n], header['window_bits'] bits each) with `header` (mode "windows")."""
    codes = np.asarray(codes, np.uint64)
    payload = codes_to_tokens(codes, header["window_bits"], 8).astype(np.uint8).tobytes()
    return _seal({**header, "mode": WINDOWS, "n_windows": int(len(codes))}, payload)


def pack_streams(header: dict, streams: list[np.ndarray]) -> bytes:
    """Serialize arithmetic-coded bit streams (uint8 0/1 each, one per segment) with `header` (mode "best")."""
    bits = np.concatenate([np.asarray(s, np.uint8) for s in streams]) if streams else np.zeros(0, np.uint8)
    payload = varints(len(s) for s in streams) + np.packbits(bits).tobytes()
    return _seal({**header, "mode": BEST, "n_segments": len(streams), "payload_bytes": len(payload)}, payload)


def unpack(blob: bytes, name: str = "input") -> tuple[dict, np.ndarray | list[np.ndarray]]:
    """(header, payload) of a file written by `pack` or `pack_streams`, or a CompressedFormatError saying
    why not. The payload is, by header["mode"], the window codes (uint64 [n_windows]) or the segments'
    bit streams (a list of uint8 0/1 arrays); a version 1 header gets mode "windows"."""
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise CompressedFormatError(f"{name} is not a pcomp compressed file (bad magic)")
    if len(blob) < _FIXED + 4:
        raise CompressedFormatError(f"{name} is truncated ({len(blob)} bytes)")
    version, hlen = struct.unpack(">HI", blob[len(MAGIC) : _FIXED])
    if version not in READS:
        raise CompressedFormatError(f"{name} has format version {version}; this pcomp reads versions "
                                    f"{', '.join(map(str, READS))}")
    if _FIXED + hlen + 4 > len(blob):
        raise CompressedFormatError(f"{name} is truncated (header of {hlen} bytes does not fit)")
    try:
        header = json.loads(blob[_FIXED : _FIXED + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CompressedFormatError(f"{name} is corrupted (unreadable header)") from None
    if version == 1 and isinstance(header, dict):
        header.setdefault("mode", WINDOWS)
    _check_header(header, name)
    expected = _FIXED + hlen + payload_size(header) + 4
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "corrupted (trailing bytes)"
        raise CompressedFormatError(f"{name} is {what}: {len(blob)} bytes, expected {expected}")
    (crc,) = struct.unpack(">I", blob[-4:])
    if crc != zlib.crc32(blob[:-4]):
        raise CompressedFormatError(f"{name} is corrupted (CRC32 mismatch)")
    payload = np.frombuffer(blob[_FIXED + hlen : -4], np.uint8)
    if header["mode"] == WINDOWS:
        return header, tokens_to_codes(payload, header["window_bits"], 8)
    return header, _split_streams(payload, header["n_segments"], name, version)


def _split_streams(payload: np.ndarray, n: int, name: str, version: int) -> list[np.ndarray]:
    """The bit streams of a "best" payload: n lengths (varints; version 2: u32), then the concatenated
    bits, padded to a byte."""
    if version >= 3:
        got = read_varints(payload[: 10 * n].tobytes(), n)
    else:
        got = (np.frombuffer(payload[: 4 * n].tobytes(), ">u4").tolist(), 4 * n) if len(payload) >= 4 * n else None
    if got is None:
        raise CompressedFormatError(f"{name} is corrupted ({n} stream lengths do not fit in {len(payload)} bytes)")
    lengths, head = np.asarray(got[0], np.int64), got[1]
    total = int(lengths.sum())
    if -(-total // 8) != len(payload) - head:
        raise CompressedFormatError(f"{name} is corrupted (stream lengths add up to {total} bits; the payload "
                                    f"holds {8 * (len(payload) - head)})")
    bits = np.unpackbits(payload[head:])
    ends = np.cumsum(lengths)
    return [bits[e - k : e] for e, k in zip(ends, lengths)]


def payload_size(header: dict) -> int:
    """Bytes of the payload; the rest of a file (magic, version, header, CRC32) is framing."""
    if header.get("mode", WINDOWS) == BEST:
        return header["payload_bytes"]
    return header["n_windows"] * header["window_bits"] // 8


def _check_header(header, name: str) -> None:
    """Every field the decoder relies on has the right type and range (a CRC only proves integrity)."""
    if not isinstance(header, dict) or "mode" not in header:
        raise CompressedFormatError(f"{name} is corrupted (header lacks ['mode'])")
    if header["mode"] not in MODES:
        raise CompressedFormatError(f"{name} has mode {header['mode']!r}; this pcomp decodes modes "
                                    f"{', '.join(MODES)}")
    missing = [k for k in REQUIRED[header["mode"]] if k not in header]
    if missing:
        raise CompressedFormatError(f"{name} is corrupted (header lacks {missing})")

    def is_int(v, lo, hi):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    checks = {
        "precision": is_int(header["precision"], 2, 24),
        "m1_fingerprint": isinstance(header["m1_fingerprint"], str) and len(header["m1_fingerprint"]) == 64,
        "m1_batch": is_int(header["m1_batch"], 1, 1 << 20),
        "m1_context": is_int(header["m1_context"], 2, 1 << 20),
        "original_length": is_int(header["original_length"], 0, 1 << 56),
        "original_crc32": is_int(header["original_crc32"], 0, (1 << 32) - 1),
    }
    if header["mode"] == WINDOWS:
        checks.update({
            "window_bits": is_int(header["window_bits"], 8, 64) and header["window_bits"] % 8 == 0,
            "token_bits": header["token_bits"] in (8, 16) and not isinstance(header["token_bits"], bool),
            "n_windows": is_int(header["n_windows"], 0, 1 << 48),
        })
    else:
        seg_ok = is_int(header["segment_bytes"], 1, 1 << 40)
        n_expected = -(-header["original_length"] // header["segment_bytes"]) if seg_ok and checks[
            "original_length"] else None  # one stream per segment of the original
        checks.update({
            "segment_bytes": seg_ok,
            "n_segments": is_int(header["n_segments"], 0, 1 << 40) and header["n_segments"] == n_expected,
            "payload_bytes": is_int(header["payload_bytes"], 0, 1 << 56),
            "m1_overlap": is_int(header.get("m1_overlap", 0), 0, header["m1_context"] - 2)
            if checks["m1_context"] else False,
            "stream_end": header.get("stream_end", "eos") in ("eos", "length"),
        })
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise CompressedFormatError(f"{name} is corrupted (bad header fields: " +
                                    ", ".join(f"{k}={header[k]!r}" for k in bad) + ")")


def read(path: str | Path) -> tuple[dict, np.ndarray | list[np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise CompressedFormatError(f"compressed file {path} does not exist")
    return unpack(path.read_bytes(), str(path))
