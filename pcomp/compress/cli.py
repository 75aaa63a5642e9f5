"""`pcomp compress`, `pcomp decompress` and `pcomp prepare` subcommands."""

from __future__ import annotations

import os
from pathlib import Path

from pcomp.errors import DataError


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True)


def _check_output(path: str) -> Path:
    out = Path(path)
    if not out.parent.is_dir():
        raise DataError(f"output directory {out.parent} does not exist")
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_input(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file {path} does not exist")
    return p.read_bytes()


def _cmd_compress(args) -> None:
    from pcomp.compress.codec import compress, m1_for_windows

    data = _read_input(args.input)
    out = _check_output(args.output)
    m1 = m1_for_windows(args.m1, args.window_bits, precision=args.precision, batch=args.batch,
                        context=args.max_window_bytes + 1 if args.max_window_bytes else 0)
    with _progress(len(data), "compress") as bar:
        blob = compress(m1, data, window_bits=args.window_bits, token_bits=args.token_bits,
                        segment_bytes=args.segment_bytes, progress=bar.update)
    _write_atomic(out, blob)
    print(f"{args.input}: {len(data)} -> {len(blob)} bytes ({8 * len(blob) / max(len(data), 1):.3f} bits/byte, "
          f"{len(data) / max(len(blob) - 64, 1) * args.token_bits / 8:.2f} bytes/token incl. header)")


def _cmd_decompress(args) -> None:
    from pcomp.compress import fileformat
    from pcomp.compress.codec import check_m1, decompress, load_m1_for

    blob = _read_input(args.input)
    out = _check_output(args.output)
    header, _ = fileformat.unpack(blob, args.input)
    m1 = load_m1_for(args.m1, header)
    check_m1(m1, header, args.input)
    with _progress(header["original_length"], "decompress") as bar:
        data = decompress(m1, blob, args.input, progress=bar.update)
    _write_atomic(out, data)
    print(f"{args.input}: {len(blob)} -> {len(data)} bytes (checksum ok)")


def _cmd_prepare(args) -> None:
    from pcomp.compress.prepare import prepare

    prepare(m1_path=args.m1, source=args.data, out=args.out, window_bits=args.window_bits,
            token_bits=args.token_bits, seq_len=args.seq_len, shard_docs=args.shard_docs,
            eval_fraction=args.eval_fraction, text_field=args.text_field, data_dir=args.data_dir or None,
            batch=args.batch)


def add_commands(sub) -> None:
    c = sub.add_parser("compress", help="compress a file with M1 into Equal-Info windows")
    c.add_argument("--m1", required=True, help="M1 run directory (a byte-level model, e.g. --config m1-3m)")
    c.add_argument("--window-bits", type=int, default=16, help="bits per window b (default 16)")
    c.add_argument("--token-bits", type=int, default=16, choices=[8, 16], help="bits per M2 token N")
    c.add_argument("--segment-bytes", type=int, default=2048, help="windows never cross a segment (parallelism)")
    c.add_argument("--precision", type=int, default=14, help="coder frequency precision (bits)")
    c.add_argument("--batch", type=int, default=256, help="M1 rows per step (recorded; decoding uses the same)")
    c.add_argument("--max-window-bytes", type=int, default=0,
                   help="longest window (M1's KV cache = this + 1; recorded); 0 = min(2b, M1 context - 1)")
    c.add_argument("input")
    c.add_argument("output")
    c.set_defaults(fn=_cmd_compress)

    d = sub.add_parser("decompress", help="decompress a file made by pcomp compress (same M1)")
    d.add_argument("--m1", required=True, help="the M1 run directory the file was made with")
    d.add_argument("input")
    d.add_argument("output")
    d.set_defaults(fn=_cmd_decompress)

    p = sub.add_parser("prepare", help="compress a corpus into an ArrayRecord dataset of M2 token sequences")
    p.add_argument("--m1", required=True)
    p.add_argument("--data", default="embedded", help="embedded | PATH | tfds:NAME")
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--window-bits", type=int, default=16)
    p.add_argument("--token-bits", type=int, default=16, choices=[8, 16])
    p.add_argument("--seq-len", type=int, default=256, help="tokens per record (= M2's data.seq_len)")
    p.add_argument("--shard-docs", type=int, default=512, help="documents per output shard")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--text-field", default="text")
    p.add_argument("--data-dir", default="")
    p.add_argument("--batch", type=int, default=256)
    p.set_defaults(fn=_cmd_prepare)
