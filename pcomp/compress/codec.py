"""Whole-file compression with M1: `compress` / `decompress` (the CLI's engine), in two modes.

"windows" (the default): Equal-Info windows of b bits (`pcomp.compress.windows`), the tokenization
M2 trains on; each window is decodable alone, which costs compression. Windows never cross a segment
of `segment_bytes`, so each segment is one sequential chain of M1 steps: the M1 batch is sized to
the segments (`rows_for`, at most `m1_batch`) and recorded.

"best": plain arithmetic coding under M1 (`pcomp.compress.plain_ac`, the one coder of
`pcomp.compress.arith`), the best code M1 gives. The input is cut into segments of at most
`segment_bytes` (`best_layout`); each segment is one coder stream over its bytes alone (every
segment but the last holds segment_bytes, so none needs an end symbol; version 2 files end each in
M1's EOS, which M1's tables still hold so that they decode), so segments decode in parallel (one row
of the M1 batch each) and the file stores only each stream's length in bits. Decoding is
sequential within a segment, one M1 step per byte, so its speed is set by how many rows each step fills: `best_layout` cuts an
input into enough segments to fill a step (`parallel_segments`: a 2 KB file decodes as 8 chains of
250 bytes, not one of 2,048; 40 KB as 48 of 834) and sizes the M1 batch to them (at most
`m1_batch`), since a step costs about as much per row, busy or idle. The header records both; decoding reads them.
Within a segment M1 sees its trained context: M1's KV cache holds `m1_context` positions (the
positions M1 was trained on, min(data.seq_len, model.max_seq_len)), so a segment is coded in
context blocks (`plain_ac.context_blocks`); when a block is full, M1's context restarts from BOS
re-primed with the last `m1_overlap` bytes (`context_overlap` of a block, recorded), so every byte
after the first block is coded with at least that much context. Restarting (rather than sliding
the context by one byte every step) keeps one KV-cache step per byte, the same step the windows
use, and is exact by construction; the re-prime costs m1_overlap steps per block.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax

from pcomp.compress import fileformat, plain_ac
from pcomp.compress.fileformat import MODES, WINDOWS
from pcomp.compress.m1 import BYTES, BYTES_EOS, M1
from pcomp.compress.windows import WINDOW_RULE, decode_windows, encode_windows
from pcomp.config import CompressConfig
from pcomp.errors import CompressedFormatError, ConfigError


def baseline_sizes(data: bytes) -> dict[str, int]:
    """Compressed sizes of `data` under the standard compressors at their strongest settings, through
    Python's zlib, bz2 and lzma: gzip -9 (zlib level 9: DEFLATE + 6 bytes of zlib framing; gzip's is
    18), bzip2 -9, xz -9e (lzma preset 9 | PRESET_EXTREME, the .xz container)."""
    import bz2
    import lzma

    return {"gzip -9": len(zlib.compress(data, 9)), "bzip2 -9": len(bz2.compress(data, 9)),
            "xz -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"compression mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def trained_context(trained) -> int:
    """Positions M1 was trained on: min(data.seq_len, model.max_seq_len) (at least 2: BOS + a byte)."""
    return max(2, min(trained.cfg.data.seq_len, trained.cfg.model.max_seq_len))


def m1_for(source, cfg: CompressConfig, mode: str = WINDOWS, context: int = 0) -> M1:
    """M1 set up for `mode` from the settings: windows size its KV cache from cfg.window_bits; best
    codes bytes + EOS with M1's trained context (`trained_context`). `context` > 0 overrides it."""
    if check_mode(mode) == WINDOWS:
        return M1.for_windows(source, cfg.window_bits, precision=cfg.precision, batch=cfg.m1_batch, context=context)
    from pcomp.train.load import TrainedModel, load_trained

    trained = source if isinstance(source, TrainedModel) else load_trained(source)
    return M1.for_windows(trained, None, precision=cfg.precision, batch=cfg.m1_batch, symbols=BYTES_EOS,
                          context=context or trained_context(trained))


def compress(m1: M1, data: bytes, cfg: CompressConfig = CompressConfig(), progress=None,
             mode: str = WINDOWS) -> bytes:
    """`data` as a pcomp file under `m1` in `mode` (see the module docstring and fileformat).

    The header is the mode's settings plus what identifies M1 and the original; m1 must be set up as
    `m1_for(..., cfg, mode)` sets it up.
    """
    cfg.validate()
    check_mode(mode)
    if (cfg.precision, cfg.m1_batch) != (m1.precision, m1.batch):
        raise ConfigError(f"M1 is set up with precision {m1.precision} and batch {m1.batch}, the settings say "
                          f"{cfg.precision} and {cfg.m1_batch}: build it with codec.m1_for from the same settings")
    want = BYTES if mode == WINDOWS else BYTES_EOS
    if m1.symbols != want:
        raise ConfigError(f"mode {mode} needs M1 over symbols {want!r}, this one codes {m1.symbols!r}: "
                          "build it with codec.m1_for(..., mode)")
    common = {
        "m1_fingerprint": m1.fingerprint,
        "m1_context": m1.context,
        "m1_name": m1.trained.cfg.model.name,
        "platform": jax.default_backend(),
        "original_length": len(data),
        "original_crc32": zlib.crc32(data),
    }
    if mode == WINDOWS:
        batch = rows_for(-(-len(data) // cfg.segment_bytes), cfg)
        enc = encode_windows(m1.with_batch(batch), [data], cfg.window_bits, segment_bytes=cfg.segment_bytes,
                             progress=progress)
        settings = {k: v for k, v in cfg.to_dict().items() if k != "context_overlap"}  # "best" only
        return fileformat.pack({**settings, **common, "m1_batch": batch}, enc.codes)
    segment_bytes, batch = best_layout(len(data), cfg, m1.max_window_bytes)
    overlap = overlap_bytes(cfg, m1.max_window_bytes)
    m1 = m1.with_batch(batch)
    streams = []
    for seg in _chunks(segments(data, segment_bytes), _segments_per_call(m1, segment_bytes, overlap)):
        streams += plain_ac.encode_docs(m1, seg, overlap, eos=False)
        if progress is not None:
            progress(sum(len(s) for s in seg))
    header = {"precision": cfg.precision, "m1_batch": batch, "segment_bytes": segment_bytes, **common,
              "m1_overlap": overlap, "stream_end": "length"}
    return fileformat.pack_streams(header, streams)


PARALLEL_SEGMENTS = 8  # "best": an input longer than 8 M1 context blocks is cut into at least 8 segments
FULL_STEP_SEGMENTS = 48  # "best": ... and into at least 48 while each keeps LONG_SEGMENT_BYTES
LONG_SEGMENT_BYTES = 768  # each segment costs a few bytes (its varint length, the coder's end, a cold context)
BATCH_MULTIPLE = 8  # "best": the M1 batch is the segments rounded up to this (fewer compiled shapes)


def parallel_segments(n_bytes: int, block_bytes: int) -> int:
    """The fewest segments a "best" file of n_bytes is cut into (block_bytes = M1's context block):
    PARALLEL_SEGMENTS of at least a context block (a short file still decodes in parallel rows), or
    FULL_STEP_SEGMENTS of at least LONG_SEGMENT_BYTES (and a block) where the input has that many.
    An M1 step costs about as much for 8 rows as for 24, and far less per row at 48 or 64, so rows
    per step is what makes decoding fast; the price is a few bytes per segment (the trade, measured:
    RESULTS.md, "Decompression speed")."""
    return max(min(PARALLEL_SEGMENTS, n_bytes // block_bytes),
               min(FULL_STEP_SEGMENTS, n_bytes // max(block_bytes, LONG_SEGMENT_BYTES)))


def best_layout(n_bytes: int, cfg: CompressConfig, block_bytes: int) -> tuple[int, int]:
    """(segment_bytes, M1 batch) of a "best" file of n_bytes; block_bytes = M1's context block.

    Segments: cfg.segment_bytes each, unless that gives fewer than `parallel_segments`; then that
    many equal ones (a few more where an input under wanted * (wanted - 1) bytes has no length that
    gives exactly that many), never shorter than a context block: a segment starts M1 from BOS
    alone, so a shorter one would code more bytes with little context, besides its stream end and
    length.
    Batch: `rows_for` the segments. Decoding steps M1 ceil(segments / batch) * segment_bytes times; encoding, about as many.
    """
    n_segments = -(-n_bytes // cfg.segment_bytes)
    segment_bytes = cfg.segment_bytes
    wanted = parallel_segments(n_bytes, block_bytes)
    if n_segments < wanted:
        segment_bytes = -(-n_bytes // wanted)
        while -(-n_bytes // segment_bytes) < wanted:  # rounding up leaves fewer under wanted * (wanted - 1) bytes
            segment_bytes -= 1  # stops by block_bytes: wanted <= n_bytes // block_bytes
        n_segments = -(-n_bytes // segment_bytes)
    return segment_bytes, rows_for(n_segments, cfg)


def overlap_bytes(cfg: CompressConfig, block_bytes: int) -> int:
    """Bytes a "best" file re-primes M1's context with at each restart: cfg.context_overlap of a
    context block of block_bytes, rounded down (so always < block_bytes)."""
    return int(cfg.context_overlap * block_bytes)


def rows_for(n_segments: int, cfg: CompressConfig) -> int:
    """The M1 batch of a file of n_segments segments (either mode: a segment is one sequential chain
    of M1 steps, so it needs one row): n_segments rounded up to BATCH_MULTIPLE, at most cfg.m1_batch.
    An idle row costs about as much as a busy one."""
    return min(cfg.m1_batch, max(BATCH_MULTIPLE, -(-n_segments // BATCH_MULTIPLE) * BATCH_MULTIPLE))


def segments(data: bytes, segment_bytes: int) -> list[bytes]:
    """The "best" mode's segments: data cut every segment_bytes bytes (none for empty data)."""
    return [data[i : i + segment_bytes] for i in range(0, len(data), segment_bytes)]


def _segments_per_call(m1: M1, segment_bytes: int, overlap: int) -> int:
    """Segments per encoder call: enough context blocks to fill the M1 batch (progress is per call)."""
    blocks = len(plain_ac.context_blocks(segment_bytes + 1, m1.max_window_bytes, overlap))
    return max(1, m1.batch // blocks)


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def config_of(header: dict) -> CompressConfig:
    """The settings a file was made with (its header's `CompressConfig` fields)."""
    names = [f.name for f in dataclasses.fields(CompressConfig)]
    return CompressConfig(**{k: header[k] for k in names if k in header})


def load_m1_for(path, header: dict) -> M1:
    """The M1 at `path`, set up as the file's header requires (mode, precision, batch, KV-cache length)."""
    return m1_for(path, config_of(header), header.get("mode", WINDOWS), context=header["m1_context"])


def check_m1(m1: M1, header: dict, name: str = "input") -> None:
    """The file was made by this M1, set up the same way, with this window rule."""
    if header.get("mode", WINDOWS) == WINDOWS and header["window_rule"] != WINDOW_RULE:
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
    header, payload = fileformat.unpack(blob, name)
    m1 = m1.with_batch(header["m1_batch"])  # the file's batch: M1's tables depend on it
    check_m1(m1, header, name)
    if header["mode"] == WINDOWS:
        data, _ = decode_windows(m1, payload, header["window_bits"], progress=progress)
    else:
        data = _decode_segments(m1, payload, header["segment_bytes"], header["original_length"],
                                header.get("m1_overlap", 0), header.get("stream_end", "eos") == "eos", name,
                                progress)
    if len(data) != header["original_length"] or zlib.crc32(data) != header["original_crc32"]:
        where = header.get("platform", "?")
        raise CompressedFormatError(
            f"{name}: decoded {len(data)} bytes do not match the original ({header['original_length']} bytes, "
            f"CRC32 {header['original_crc32']}); the file is corrupted, or M1's logits differ on this device "
            f"({jax.default_backend()}) from the one it was made on ({where})"
        )
    return data


def _decode_segments(m1: M1, streams, segment_bytes: int, length: int, overlap: int, eos: bool, name: str,
                     progress=None) -> bytes:
    """The "best" payload decoded: every segment but the last holds segment_bytes bytes (streams end in
    EOS, or with `eos` False at those lengths)."""
    out = []
    sizes = [min(segment_bytes, length - i * segment_bytes) for i in range(len(streams))]
    for g0 in range(0, len(streams), m1.batch):
        group = streams[g0 : g0 + m1.batch]
        try:
            decoded = plain_ac.decode_docs(m1, group, max_bytes=segment_bytes, overlap=overlap,
                                           lengths=None if eos else sizes[g0 : g0 + m1.batch])
        except CompressedFormatError as e:
            raise CompressedFormatError(f"{name} is corrupted or was made by another M1 setup ({e})") from None
        for i, d in enumerate(decoded):
            want = sizes[g0 + i]
            if len(d) != want:
                raise CompressedFormatError(f"{name}: segment {g0 + i} decodes to {len(d)} bytes, expected {want}; "
                                            "the file is corrupted or M1's logits differ on this device")
        out += decoded
        if progress is not None:
            progress(sum(len(d) for d in decoded))
    return b"".join(out)
