"""`pcomp compress --mode best`: plain arithmetic coding under M1 in the pcomp file format
(`pcomp.compress.codec`, `pcomp.compress.fileformat`), exact on any bytes, checked on bad input."""

from __future__ import annotations

import bz2
import dataclasses
import json
import lzma
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pcomp.cli import main
from pcomp.compress import codec, fileformat, plain_ac
from pcomp.config import CompressConfig
from pcomp.data.embedded import embedded_documents
from pcomp.errors import CompressedFormatError, ConfigError

INVALID_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\xed\xa0\x80\xc0\xaf\x80"
SEGMENT = 48  # bytes per segment in the property test: a few hundred bytes are several segments
CFG = CompressConfig(m1_batch=8, segment_bytes=SEGMENT)
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large,
                                                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def m1(random_m1_model):
    return codec.m1_for(random_m1_model, CFG, "best")


def _leb128(values) -> bytes:
    """Unsigned LEB128, written from its definition: 7-bit groups, low first, continuation bit 0x80."""
    out = b""
    for v in values:
        groups = [(v >> (7 * k)) & 0x7F for k in range(max(1, -(-v.bit_length() // 7)))]
        out += bytes(g | (0x80 if k < len(groups) - 1 else 0) for k, g in enumerate(groups))
    return out


def _read_leb128(payload: bytes, n: int) -> tuple[list[int], int]:
    values, at = [], 0
    for _ in range(n):
        groups = []
        while True:
            groups.append(payload[at])
            at += 1
            if groups[-1] < 0x80:
                break
        values.append(sum((g & 0x7F) << (7 * k) for k, g in enumerate(groups)))
    return values, at


def _parse(blob: bytes):
    """A naive reader of a "best" file, written from the format's description (not fileformat)."""
    version, hlen = struct.unpack(">HI", blob[8:14])
    header = json.loads(blob[14 : 14 + hlen])
    payload = blob[14 + hlen : -4]
    n = header["n_segments"]
    if version == 3:
        lengths, head = _read_leb128(payload, n)
    else:
        lengths, head = [struct.unpack(">I", payload[4 * i : 4 * i + 4])[0] for i in range(n)], 4 * n
    bits = "".join(f"{b:08b}" for b in payload[head:])
    streams, at = [], 0
    for k in lengths:
        streams.append(np.asarray([int(c) for c in bits[at : at + k]], np.uint8))
        at += k
    assert set(bits[at:]) <= {"0"} and len(bits) - at < 8  # zero padding to a byte only
    return header, streams


@pytest.mark.slow
def test_best_mode_m1_uses_its_trained_context(m1, random_m1_model):
    assert m1.context == 16 and m1.max_window_bytes == 15  # min(data.seq_len 16, max_seq_len 40)
    assert m1.symbols == "bytes+eos" and m1.batch == 8


@FEW
@given(data=st.binary(max_size=600))
@example(data=b"")
@example(data=INVALID_UTF8)
@example(data=bytes(range(256)) * 2)  # 512 bytes: 11 segments, each several M1 context blocks
@example(data=b"x" * SEGMENT)  # exactly one segment
def test_best_round_trips_any_bytes(m1, data):
    blob = codec.compress(m1, data, CFG, mode="best")
    assert codec.decompress(m1, blob) == data
    header, streams = _parse(blob)
    assert header["mode"] == "best" and header["original_length"] == len(data)
    assert header["stream_end"] == "length"  # streams hold the bytes alone: the lengths end them
    assert header["original_crc32"] == zlib.crc32(data)
    seg_bytes, batch = codec.best_layout(len(data), CFG, m1.max_window_bytes)
    assert (header["segment_bytes"], header["m1_batch"]) == (seg_bytes, batch) and seg_bytes <= SEGMENT
    segs = [data[i : i + seg_bytes] for i in range(0, len(data), seg_bytes)]
    assert len(streams) == header["n_segments"] == len(segs)
    got_header, got = fileformat.unpack(blob)
    assert got_header == header and [s.tolist() for s in got] == [s.tolist() for s in streams]
    overlap = header["m1_overlap"]
    assert overlap == int(CFG.context_overlap * m1.max_window_bytes) == 3  # a quarter of a 15-byte block
    m1b = m1.with_batch(batch)
    for seg, stream in zip(segs, streams):  # each segment's stream decodes alone, to that segment
        assert plain_ac.decode_docs(m1b, [stream], max_bytes=seg_bytes, overlap=overlap, lengths=[len(seg)]) == [seg]
    # arithmetic coding is within 2 bits of the ideal code length of the bytes alone (no end symbol) per
    # stream, and never below it - 1
    ideal = [plain_ac.ideal_bits(m1b, [s], overlap, eos=False) for s in segs]
    for stream, bits in zip(streams, ideal):
        assert bits - 1 <= len(stream) <= bits + 2 + 1e-3 * bits


@FEW
@given(n=st.integers(0, 1 << 22), segment=st.integers(1, 5000), block=st.integers(1, 300),
       batch=st.integers(1, 300))
@example(n=2000, segment=2048, block=127, batch=256)
def test_best_layout_cuts_small_inputs_into_parallel_segments(n, segment, block, batch):
    cfg = CompressConfig(m1_batch=batch, segment_bytes=segment)
    seg, b = codec.best_layout(n, cfg, block)
    n_seg = -(-n // seg)
    assert 1 <= seg <= segment and 1 <= b <= batch and (b == batch or b % codec.BATCH_MULTIPLE == 0)
    short = min(codec.PARALLEL_SEGMENTS, n // block)  # >= a context block each
    long = min(codec.FULL_STEP_SEGMENTS, n // max(block, codec.LONG_SEGMENT_BYTES))  # >= 1 KB and a block each
    wanted = max(short, long)
    if seg != segment:  # shortened only to give that many rows, never below a context block
        assert seg >= block and n_seg >= wanted
        if n >= wanted * (wanted - 1):  # ceil(n / wanted) bytes each gives exactly that many
            assert seg == -(-n // wanted) and n_seg == wanted
            assert seg >= codec.LONG_SEGMENT_BYTES or n_seg == short
        else:  # shorter inputs: the longest segments that still give that many
            assert -(-n // (seg + 1)) < wanted
    else:
        assert n_seg >= wanted
    assert b >= min(batch, n_seg)  # every segment has a row (while the batch allows)


def test_best_layout_examples():
    """m1-3m (context block 127 bytes), default settings: a 2,000-byte file is 8 chains of 250 bytes in a
    batch of 8, 10 KB 13 of 770 in 16 rows, 40 KB 48 of 834 in 48 rows, 100 KB 49 of 2,048 in 56 rows,
    1 MB fills the 256 rows."""
    cfg = CompressConfig()
    assert codec.best_layout(2000, cfg, 127) == (250, 8)
    assert codec.best_layout(10_000, cfg, 127) == (770, 16)
    assert codec.best_layout(40_000, cfg, 127) == (834, 48)
    assert codec.best_layout(100_000, cfg, 127) == (2048, 56)
    assert codec.best_layout(1 << 20, cfg, 127) == (2048, 256)
    assert codec.best_layout(100, cfg, 127) == (2048, 8)
    assert codec.best_layout(0, cfg, 127) == (2048, 8)


@pytest.mark.slow
@pytest.mark.parametrize("n, segment", [(300, 2048), (3000, 50)])
def test_best_files_record_the_batch_they_need(random_m1_model, n, segment):
    """Default batch 256: the file is coded (and decoded) with the rows its segments need."""
    cfg = CompressConfig(segment_bytes=segment)
    m1 = codec.m1_for(random_m1_model, cfg, "best")
    data = bytes(np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8))
    blob = codec.compress(m1, data, cfg, mode="best")
    header, _ = fileformat.unpack(blob)
    assert (header["segment_bytes"], header["m1_batch"]) == codec.best_layout(n, cfg, m1.max_window_bytes)
    assert header["m1_batch"] < m1.batch and header["n_segments"] >= codec.PARALLEL_SEGMENTS
    assert codec.decompress(m1, blob) == data
    assert codec.decompress(m1.with_batch(8), blob) == data  # any setup of the same M1 reads it


def test_windows_files_record_the_rows_their_segments_need(random_m1_model):
    """A windows segment is one sequential chain: 3,000 bytes in segments of 256 are 12 chains, coded in
    16 rows (12 rounded up to 8s), not the default 256, and any setup of the same M1 decodes the file."""
    cfg = CompressConfig(segment_bytes=256)
    m1 = codec.m1_for(random_m1_model, cfg, "windows")
    data = bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8))
    blob = codec.compress(m1, data, cfg, mode="windows")
    header, _ = fileformat.unpack(blob)
    assert header["m1_batch"] == 16 and m1.batch == 256
    assert codec.decompress(m1, blob) == data == codec.decompress(m1.with_batch(8), blob)


def test_best_is_smaller_than_windows_on_text(m1_run):
    """With a trained M1 the plain code beats Equal-Info windows of 16 bits (which pay for decodability)."""
    cfg = CompressConfig(m1_batch=16, segment_bytes=256)
    text = b"".join(embedded_documents()[5:7])[:2000]
    best = codec.compress(codec.m1_for(m1_run, cfg, "best"), text, cfg, mode="best")
    windows = codec.compress(codec.m1_for(m1_run, cfg, "windows"), text, cfg, mode="windows")
    assert fileformat.payload_size(fileformat.unpack(best)[0]) < fileformat.payload_size(fileformat.unpack(windows)[0])


def test_wrong_mode_or_m1_setup_is_refused(m1, random_m1_model):
    with pytest.raises(ConfigError, match="compression mode 'fast'"):
        codec.compress(m1, b"abc", CFG, mode="fast")
    with pytest.raises(ConfigError, match="mode windows needs M1 over symbols 'bytes'"):
        codec.compress(m1, b"abc", CFG, mode="windows")
    windows_m1 = codec.m1_for(random_m1_model, CFG, "windows")
    with pytest.raises(ConfigError, match="mode best needs M1 over symbols 'bytes\\+eos'"):
        codec.compress(windows_m1, b"abc", CFG, mode="best")
    blob = codec.compress(m1, b"some text", CFG, mode="best")
    with pytest.raises(CompressedFormatError, match="decompress with the same M1"):
        codec.decompress(windows_m1, blob)  # another fingerprint (symbols are part of it)


def _lengths_plus_8(header: dict, payload: bytes) -> bytes:
    lengths, head = _read_leb128(payload, header["n_segments"])
    return _leb128([lengths[0] + 8] + lengths[1:]) + payload[head:]


def _reseal(header: dict, payload: bytes, version: int = 3) -> bytes:
    head = json.dumps(header).encode()
    blob = b"PCOMPEIW" + struct.pack(">HI", version, len(head)) + head + payload
    return blob + struct.pack(">I", zlib.crc32(blob))


def _split(blob: bytes):
    hlen = struct.unpack(">I", blob[10:14])[0]
    return json.loads(blob[14 : 14 + hlen]), blob[14 + hlen : -4]


@pytest.mark.parametrize("change, needles", [
    (lambda h, p: ({**h, "mode": "fast"}, p), ["mode 'fast'", "windows, best"]),
    (lambda h, p: ({k: v for k, v in h.items() if k != "mode"}, p), ["lacks ['mode']"]),
    (lambda h, p: ({**h, "n_segments": h["n_segments"] + 1}, p), ["n_segments="]),
    (lambda h, p: ({**h, "segment_bytes": 0}, p), ["segment_bytes=0"]),
    (lambda h, p: ({**h, "payload_bytes": h["payload_bytes"] + 1}, p + b"\x00"), ["stream lengths add up"]),
    (lambda h, p: (h, _lengths_plus_8(h, p)), ["stream lengths add up"]),
    (lambda h, p: ({**h, "payload_bytes": 1}, p[:1]), ["stream lengths do not fit"]),
    (lambda h, p: ({**h, "m1_overlap": h["m1_context"] - 1}, p), ["m1_overlap=15"]),
    (lambda h, p: ({**h, "m1_overlap": "7"}, p), ["m1_overlap='7'"]),
    (lambda h, p: ({**h, "stream_end": "none"}, p), ["stream_end='none'"]),
], ids=["unknown-mode", "no-mode", "segments", "segment-bytes", "payload-longer", "stream-length",
        "lengths-cut", "overlap", "overlap-type", "stream-end"])
def test_crafted_best_files_fail_in_one_error(m1, change, needles):
    blob = codec.compress(m1, b"hello best mode " * 10, CFG, mode="best")
    bad = _reseal(*change(*_split(blob)))
    with pytest.raises(CompressedFormatError) as e:
        codec.decompress(m1, bad, "crafted")
    assert str(e.value).startswith("crafted") and "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


@pytest.mark.slow
def test_version_1_files_are_windows_files(random_m1_model):
    m1w = codec.m1_for(random_m1_model, CFG, "windows")
    data = b"an older pcomp wrote this"
    header, payload = _split(codec.compress(m1w, data, CFG))
    assert header.pop("mode") == "windows"
    assert codec.decompress(m1w, _reseal(header, payload, version=1)) == data
    with pytest.raises(CompressedFormatError, match="version 4; this pcomp reads versions 1, 2, 3"):
        fileformat.unpack(_reseal(header, payload, version=4))


def test_best_files_are_version_3_and_version_2_ones_still_read(m1, random_m1_model):
    """Best files are version 3 (m1_overlap, streams without an end symbol, varint lengths: the pcomp
    before refuses them at its version check instead of decoding other bytes); windows files stay
    version 2. A version 2 best file (u32 lengths, no m1_overlap: M1 restarts from BOS alone; each stream
    ends in M1's EOS) decodes as it did."""
    version = lambda blob: struct.unpack(">H", blob[8:10])[0]  # noqa: E731
    data = b"re-primed context blocks " * 4
    assert version(codec.compress(m1, data, CFG, mode="best")) == 3
    windows_m1 = codec.m1_for(random_m1_model, CFG, "windows")
    assert version(codec.compress(windows_m1, data, CFG)) == 2
    plain = codec.compress(m1, data, dataclasses.replace(CFG, context_overlap=0.0), mode="best")
    header, payload = _split(plain)
    assert header["m1_overlap"] == 0 and header["stream_end"] == "length"
    m1b = m1.with_batch(header["m1_batch"])
    seg = header["segment_bytes"]
    eos_streams = plain_ac.encode_docs(m1b, [data[i : i + seg] for i in range(0, len(data), seg)], 0, eos=True)
    assert len(eos_streams) == header["n_segments"] > 1
    bits = np.concatenate(eos_streams)
    old_payload = (b"".join(struct.pack(">I", len(s)) for s in eos_streams)
                   + np.packbits(np.pad(bits, (0, -len(bits) % 8))).tobytes())
    del header["m1_overlap"], header["stream_end"]
    header["payload_bytes"] = len(old_payload)
    assert codec.decompress(m1, _reseal(header, old_payload, version=2)) == data


@given(st.lists(st.integers(0, (1 << 40) - 1), max_size=20))
def test_varints_round_trip_and_match_leb128(values):
    assert fileformat.varints(values) == _leb128(values)
    blob = fileformat.varints(values)
    assert fileformat.read_varints(blob + b"\x07", len(values)) == (values, len(blob))
    if values:
        assert fileformat.read_varints(blob[:-1], len(values)) is None  # cut inside the last one


def _naive_block_start(j: int, lb: int, h: int) -> int:
    """The first symbol M1's context holds when symbol j is coded: 0 in the first block of lb symbols;
    then blocks of lb - h new symbols, each primed with the h symbols before it."""
    return 0 if j < lb else lb + (j - lb) // (lb - h) * (lb - h) - h


@pytest.mark.parametrize("n, overlap", [(40, 7), (40, 0), (31, 14), (15, 7), (16, 1)])
def test_each_symbol_is_coded_in_its_rule_context(m1, n, overlap):
    """symbol_intervals against a naive reference: symbol j's table is M1's after BOS and exactly the
    symbols from its block's start to j (fed one step at a time from a fresh cache)."""
    doc = bytes(np.random.default_rng(n + overlap).integers(0, 256, n, dtype=np.uint8))
    lo, hi = plain_ac.symbol_intervals(m1, [doc], overlap)[0]
    lo_bytes, hi_bytes = plain_ac.symbol_intervals(m1, [doc], overlap, eos=False)[0]
    assert lo_bytes.tolist() == lo[:n].tolist() and hi_bytes.tolist() == hi[:n].tolist()  # the same, less EOF
    sym = list(doc) + [plain_ac.EOF]
    lb = m1.max_window_bytes
    for j, s in enumerate(sym):
        context = sym[_naive_block_start(j, lb, overlap) : j]
        assert len(context) < lb and (j < lb or len(context) >= overlap)
        cache, cum = m1.start(), np.broadcast_to(m1.first_cum, (m1.batch, m1.n_symbols + 1))
        for pos, c in enumerate(context, start=1):
            cum, cache = m1.step(cache, np.full(m1.batch, c), np.full(m1.batch, pos))
        assert (lo[j], hi[j]) == (cum[0, s], cum[0, s + 1]), j


@pytest.mark.slow
def test_reprimed_context_blocks_decode(m1):
    """Every overlap from none to a block less one round-trips through the decoder's re-priming."""
    docs = [bytes(np.random.default_rng(k).integers(0, 256, 20 + 9 * k, dtype=np.uint8)) for k in range(6)]
    for overlap in range(m1.max_window_bytes):
        streams = plain_ac.encode_docs(m1, docs, overlap)
        assert plain_ac.decode_docs(m1, streams, max_bytes=80, overlap=overlap) == docs, overlap
        streams = plain_ac.encode_docs(m1, docs, overlap, eos=False)
        lengths = [len(d) for d in docs]
        assert plain_ac.decode_docs(m1, streams, max_bytes=80, overlap=overlap, lengths=lengths) == docs, overlap
    with pytest.raises(ConfigError, match="context overlap 15: expected 0 <= overlap < 15"):
        plain_ac.encode_docs(m1, docs, 15)


# ----------------------------------------------------------------------------- the command line
def _stderr_rows(err: str) -> dict:
    rows = {}
    for line in err.splitlines():
        parts = line.rsplit(None, 2)
        if len(parts) == 3 and parts[2].replace(".", "").isdigit():
            rows[parts[0].strip()] = (int(parts[1].replace(",", "")), float(parts[2]))
    return rows


@pytest.mark.slow
def test_cli_best_round_trip_and_comparison_table(m1_run, tmp_path, capsys):
    data = b"".join(embedded_documents()[5:7])[:1500] + INVALID_UTF8
    src, comp, back = tmp_path / "in.txt", tmp_path / "in.pcz", tmp_path / "back.txt"
    src.write_bytes(data)
    assert main(["compress", "--m1", str(m1_run), "--mode", "best", "--batch", "16", "--segment-bytes", "256",
                 str(src), str(comp)]) == 0
    captured = capsys.readouterr()
    blob = comp.read_bytes()
    assert f"{len(data)} -> {len(blob)} bytes ({8 * len(blob) / len(data):.3f} bits/byte)" in captured.out
    # 1,519 bytes at most 256 per segment: cut into PARALLEL_SEGMENTS = 8 of 190 (test-tiny: context 64)
    assert "8 segments of <= 190 bytes" in captured.out and "context 63 bytes" in captured.out
    rows = _stderr_rows(captured.err)
    expect = {"pcomp best": len(blob), "gzip -9": len(zlib.compress(data, 9)), "bzip2 -9": len(bz2.compress(data, 9)),
              "xz -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))}
    assert {k: v[0] for k, v in rows.items()} == expect
    for name, size in expect.items():
        assert rows[name][1] == pytest.approx(8 * size / len(data), abs=5e-4)
    header, _ = fileformat.read(comp)
    assert header["mode"] == "best" and header["m1_context"] == 64 and "window_bits" not in header
    assert main(["decompress", "--m1", str(m1_run), str(comp), str(back)]) == 0  # the mode comes from the file
    assert "checksum ok" in capsys.readouterr().out and back.read_bytes() == data
    # --no-compare: nothing but progress on stderr
    assert main(["compress", "--m1", str(m1_run), "--mode", "best", "--batch", "16", "--no-compare", "--force",
                 str(src), str(comp)]) == 0
    assert _stderr_rows(capsys.readouterr().err) == {}


def _error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith(("compress:",
                                                                                                     "decompress:"))]
    assert len(lines) == 1 and lines[0].startswith("pcomp: error: "), lines
    return lines[0]


def test_cli_bad_mode_and_bad_best_files(m1_run, tmp_path, capsys):
    src, comp, out = tmp_path / "in.txt", tmp_path / "in.pcz", tmp_path / "out.txt"
    src.write_bytes(b"some text to compress in the best mode")
    assert main(["compress", "--m1", str(m1_run), "--mode", "fastest", str(src), str(comp)]) == 2
    assert "fastest" in _error_line(capsys) and not comp.exists()
    assert main(["compress", "--m1", str(m1_run), "--mode", "best", "--batch", "16", "--no-compare",
                 str(src), str(comp)]) == 0
    capsys.readouterr()
    header, payload = _split(comp.read_bytes())
    crafted = tmp_path / "crafted.pcz"
    crafted.write_bytes(_reseal({**header, "mode": "turbo"}, payload))
    assert main(["decompress", "--m1", str(m1_run), str(crafted), str(out)]) == 2
    assert "mode 'turbo'" in _error_line(capsys) and not out.exists()
    flipped = tmp_path / "flipped.pcz"
    blob = comp.read_bytes()
    flipped.write_bytes(blob[:-6] + bytes([blob[-6] ^ 1]) + blob[-5:])
    assert main(["decompress", "--m1", str(m1_run), str(flipped), str(out)]) == 2
    assert "CRC32" in _error_line(capsys) and not out.exists()
    other = tmp_path / "other-m1"
    import shutil

    shutil.copytree(m1_run, other)
    shutil.rmtree(other / "checkpoints" / "20")  # the same run as of step 10: other parameters
    assert main(["decompress", "--m1", str(other), str(comp), str(out)]) == 2
    assert "same M1" in _error_line(capsys) and not out.exists()
