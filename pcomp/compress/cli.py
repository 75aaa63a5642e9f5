"""`pcomp compress`, `pcomp decompress` and `pcomp prepare` subcommands.

`pcomp compress --mode windows|best` (`pcomp.compress.codec`); after compressing, one line on
stdout (sizes) and, unless --no-compare, a small table on stderr beside gzip -9, bzip2 -9 and xz -9e.

Nothing is lost: an output that is the input (same file, by any path or hard link) is refused; an
existing output is kept unless --force; the output is claimed before the work and written as
`pcomp.output.Output` writes files (a temporary file renamed into place, so an error, disk full
included, leaves no partial file; a device or FIFO written directly, never renamed over).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

from pcomp.config import TOKENIZER_KINDS, CompressConfig
from pcomp.errors import ConfigError, DataError
from pcomp.output import Output

_DEFAULT = CompressConfig()


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True)


@contextlib.contextmanager
def _one_line_warnings():
    """An `M1Warning` raised inside as one `pcomp: warning: ...` line on stderr; others pass through."""
    from pcomp.compress.m1 import M1Warning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", M1Warning)
        try:
            yield
        finally:
            others = [w for w in caught if not issubclass(w.category, M1Warning)]
            for w in caught:
                if issubclass(w.category, M1Warning):
                    print(f"pcomp: warning: {w.message}", file=sys.stderr)
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _read_input(path: str) -> bytes:
    p = Path(path)
    if p.is_dir():
        raise DataError(f"input {path} is a directory; expected a file")
    if not p.exists():
        raise DataError(f"input file {path} does not exist")
    try:
        return p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read input {path}: {e.strerror or e}") from None


def _check_output(input_path: str, path: str, force: bool) -> Output:
    """The output, claimed (`pcomp.output.Output`) if writing it loses nothing: checked before any
    work is done, so a missing or read-only directory, an existing output without --force or another
    pcomp writing the same output fails at once."""
    out = Path(path)
    if out.exists() and not out.is_dir() and os.path.samefile(input_path, out):
        raise DataError(f"output {out} is the input {input_path} (the same file): choose another output")
    return Output(out, force=force).claim()


def _config(args) -> CompressConfig:
    return CompressConfig(window_bits=args.window_bits, token_bits=args.token_bits, precision=args.precision,
                          m1_batch=args.batch, segment_bytes=args.segment_bytes,
                          context_overlap=getattr(args, "context_overlap", _DEFAULT.context_overlap)).validate()


def _cmd_compress(args) -> None:
    from pcomp.compress import fileformat
    from pcomp.compress.codec import compress, m1_for

    cfg = _config(args)
    if args.max_window_bytes < 0:
        raise ConfigError(f"--max-window-bytes {args.max_window_bytes}: expected >= 1, or 0 for the default")
    data = _read_input(args.input)
    with _check_output(args.input, args.output, args.force) as out:
        with _one_line_warnings():
            m1 = m1_for(args.m1, cfg, args.mode, context=args.max_window_bytes + 1 if args.max_window_bytes else 0)
        with _progress(len(data), "compress") as bar:
            blob = compress(m1, data, cfg, progress=bar.update, mode=args.mode)
        out.write(blob)
    header, _ = fileformat.unpack(blob)
    payload = fileformat.payload_size(header)
    # bits per byte of an empty input would be the header's size over nothing: not a rate
    rate = f"{8 * len(blob) / len(data):.3f} bits/byte" if data else "empty input: no bits/byte"
    summary = f"{args.input}: {len(data)} -> {len(blob)} bytes ({rate}); "
    if args.mode == fileformat.WINDOWS:
        tokens = payload * 8 // cfg.token_bits
        per_token = f"{len(data) / tokens:.2f} bytes/token" if tokens else "no bytes/token"
        summary += (f"{tokens} tokens of {cfg.token_bits} bits ({per_token}) "
                    f"+ {len(blob) - payload} bytes of header and framing")
    else:
        summary += (f"{header['n_segments']} segments of <= {header['segment_bytes']} bytes, arithmetic-coded under M1 "
                    f"(context {m1.context - 1} bytes, re-primed with {header['m1_overlap']}) + "
                    f"{len(blob) - payload} bytes of header and framing")
    print(summary)
    if not args.no_compare:
        sys.stdout.flush()
        print(comparison_table(data, len(blob), f"pcomp {args.mode}"), file=sys.stderr)


def comparison_table(data: bytes, pcomp_bytes: int, label: str) -> str:
    """Sizes and bits/byte of the pcomp file beside gzip -9, bzip2 -9 and xz -9e on the same input
    (`pcomp.compress.codec.baseline_sizes`)."""
    from pcomp.compress.codec import baseline_sizes

    rows = [(label, pcomp_bytes), *baseline_sizes(data).items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':{width}}  {'bytes':>12}  bits/byte"]
    for name, size in rows:
        bpb = f"{8 * size / len(data):9.3f}" if data else f"{'-':>9}"
        lines.append(f"{name:{width}}  {size:>12,}  {bpb}")
    return "\n".join(lines)


def _cmd_decompress(args) -> None:
    from pcomp.compress import fileformat
    from pcomp.compress.codec import check_m1, decompress, load_m1_for

    blob = _read_input(args.input)
    with _check_output(args.input, args.output, args.force) as out:
        header, _ = fileformat.unpack(blob, args.input)
        with _one_line_warnings():
            m1 = load_m1_for(args.m1, header)
        check_m1(m1, header, args.input)
        with _progress(header["original_length"], "decompress") as bar:
            data = decompress(m1, blob, args.input, progress=bar.update)
        out.write(data)
    print(f"{args.input}: {len(blob)} -> {len(data)} bytes (checksum ok)")


def _cmd_prepare(args) -> None:
    from pcomp.compress.prepare import prepare

    with _one_line_warnings():
        prepare(m1_path=args.m1, source=args.data, out=args.out, cfg=_config(args), seq_len=args.seq_len,
                shard_docs=args.shard_docs, eval_fraction=args.eval_fraction, text_field=args.text_field,
                data_dir=args.data_dir or None, tokenizer=args.tokenizer, vocab_size=args.vocab_size)


def _add_settings(p, *, max_window_bytes: bool) -> None:
    """The `CompressConfig` flags, their defaults taken from it."""
    p.add_argument("--window-bits", type=int, default=_DEFAULT.window_bits,
                   help=f"bits per window b (default {_DEFAULT.window_bits})")
    p.add_argument("--token-bits", type=int, default=_DEFAULT.token_bits, choices=[8, 16],
                   help=f"bits per M2 token N (default {_DEFAULT.token_bits})")
    p.add_argument("--segment-bytes", type=int, default=_DEFAULT.segment_bytes,
                   help="windows never cross a segment; --mode best: one coder stream per segment (segments decode in "
                        "parallel)")
    p.add_argument("--precision", type=int, default=_DEFAULT.precision,
                   help=f"coder frequency precision in bits (default {_DEFAULT.precision})")
    p.add_argument("--batch", type=int, default=_DEFAULT.m1_batch,
                   help="M1 rows per step (recorded; decoding uses the same); --mode best: at most, the file uses "
                        "as many as its segments need")
    if max_window_bytes:
        p.add_argument("--max-window-bytes", type=int, default=0,
                       help="longest window (M1's KV cache = this + 1; recorded); 0 = min(2b, M1 context - 1); "
                            "--mode best: M1's context restarts every this many bytes (0 = its trained context - 1)")
        p.add_argument("--context-overlap", type=float, default=_DEFAULT.context_overlap,
                       help="--mode best: at each restart M1's context is re-primed with this fraction of it, the "
                            f"last bytes coded (default {_DEFAULT.context_overlap}; 0 = from BOS alone; recorded)")


def _add_files(parser, fn) -> None:
    """INPUT OUTPUT [--force] of compress and decompress, which run `fn`."""
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.set_defaults(fn=fn)


def add_commands(sub) -> None:
    c = sub.add_parser("compress", help="compress a file with M1 (Equal-Info windows, or --mode best)")
    c.add_argument("--m1", required=True, help="M1 run directory (a byte-level model, e.g. --config m1-3m)")
    c.add_argument("--mode", default="windows", choices=["windows", "best"],
                   help="windows (default): Equal-Info windows of --window-bits, the M2 tokenization; best: plain "
                        "arithmetic coding under M1, one stream per --segment-bytes segment (the smallest file). "
                        "Recorded in the file: decompress reads it")
    _add_settings(c, max_window_bytes=True)
    c.add_argument("--no-compare", action="store_true",
                   help="skip the gzip -9 / bzip2 -9 / xz -9e comparison printed on stderr")
    _add_files(c, _cmd_compress)

    d = sub.add_parser("decompress", help="decompress a file made by pcomp compress (same M1)")
    d.add_argument("--m1", required=True, help="the M1 run directory the file was made with")
    _add_files(d, _cmd_decompress)

    p = sub.add_parser("prepare", help="tokenize (compress) a corpus into an ArrayRecord dataset of M2 token sequences")
    p.add_argument("--m1", default=None, help="M1 run directory (needed by --tokenizer equal_info and ac)")
    p.add_argument("--tokenizer", default="equal_info", choices=list(TOKENIZER_KINDS),
                   help="equal_info (EqualInfoAC[b, 2**N], default) | ac (plain AC under M1) | gzip | static_ac | "
                        "bytes | sentencepiece")
    p.add_argument("--vocab-size", type=int, default=4096, help="pieces of --tokenizer sentencepiece")
    p.add_argument("--data", default="embedded", help="embedded | PATH | tfds:NAME")
    p.add_argument("--out", required=True, help="output directory (resumable)")
    _add_settings(p, max_window_bytes=False)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per record (= M2's data.seq_len)")
    p.add_argument("--shard-docs", type=int, default=512, help="documents per output shard")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--text-field", default="text")
    p.add_argument("--data-dir", default="")
    p.set_defaults(fn=_cmd_prepare)
