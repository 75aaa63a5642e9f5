"""Bit packing, the one place it is done: 0/1 bits or b-bit window codes <-> N-bit tokens, big-endian.

Used by the compressed-text tokenizers (N = 8 or 16) and by the file format, whose payload is each
window's code as b / 8 bytes (tokens of N = 8).
"""

from __future__ import annotations

import numpy as np

from pcomp.errors import DataError


def bits_to_tokens(bits: np.ndarray, token_bits: int) -> np.ndarray:
    """0/1 bits [k] -> int32 tokens [ceil(k / N)], big-endian, the last one zero-padded."""
    bits = np.asarray(bits, np.uint8)
    pad = (-len(bits)) % token_bits
    padded = np.concatenate([bits, np.zeros(pad, np.uint8)]).reshape(-1, token_bits)
    weights = (1 << np.arange(token_bits - 1, -1, -1)).astype(np.int64)
    return (padded.astype(np.int64) @ weights).astype(np.int32)


def tokens_to_bits(tokens, token_bits: int) -> np.ndarray:
    """Inverse of `bits_to_tokens` (with the padding): uint8 0/1 bits [len(tokens) * N]."""
    tokens = check_tokens(tokens, token_bits)
    shifts = np.arange(token_bits - 1, -1, -1)
    return ((tokens[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)


def codes_to_tokens(codes: np.ndarray, window_bits: int, token_bits: int) -> np.ndarray:
    """b-bit window codes (uint64 [n]) -> int32 tokens [n * b / N], most significant first."""
    per = window_bits // token_bits
    codes = np.asarray(codes, np.uint64)
    shifts = np.asarray([(per - 1 - i) * token_bits for i in range(per)], np.uint64)
    mask = np.uint64((1 << token_bits) - 1)
    return ((codes[:, None] >> shifts) & mask).astype(np.int32).reshape(-1)


def tokens_to_codes(tokens, window_bits: int, token_bits: int) -> np.ndarray:
    """Inverse of `codes_to_tokens`: uint64 codes [len(tokens) * N / b]; partial windows are a DataError."""
    tokens = check_tokens(tokens, token_bits)
    per = window_bits // token_bits
    if len(tokens) % per:
        raise DataError(f"{len(tokens)} tokens do not form whole windows of {per} tokens (b={window_bits}, "
                        f"N={token_bits})")
    codes = np.zeros(len(tokens) // per, np.uint64)
    for i in range(per):
        codes = (codes << np.uint64(token_bits)) | tokens[i::per].astype(np.uint64)
    return codes


def check_tokens(tokens, token_bits: int) -> np.ndarray:
    """Tokens as int64 [n], each in [0, 2**N) (DataError naming the first one that is not)."""
    t = np.asarray(tokens, np.int64).reshape(-1)
    if t.size and (t.min() < 0 or t.max() >= 1 << token_bits):
        raise DataError(f"token {int(t[(t < 0) | (t >= 1 << token_bits)][0])} is outside [0, {1 << token_bits})")
    return t
