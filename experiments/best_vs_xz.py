"""`pcomp compress --mode best` against xz -9e, PPMd and the other standard compressors on whole files, for one M1.

For each file: the size of the pcomp file in the best mode (plain arithmetic coding under M1, one
stream per `--segment-bytes` segment, M1's trained context restarting from BOS every context - 1
bytes, re-primed with `--context-overlap` of it: `pcomp.compress.codec`), header and framing included, as bits/byte; the same for the
standard compressors (`codec.baseline_sizes`: gzip -9, bzip2 -9, xz -9e; `harness.strong_compressors`:
zstd -19 --long, brotli -11, PPMd var. I order 6 and 8, each round-tripped through its own decoder;
pyppmd's decoder fails on some inputs, which the table names), and the ratios best / xz -9e
and best / PPMd o8 (< 1: pcomp wins); pcomp's compress and decompress KB/s. Each pcomp file is
decompressed again and compared with the original unless `--no-verify`. A file that is M1's
own training source (its config's data.source) is marked "seen by M1": only the others are held out.

Default files: every regular file of ../shared/data except README.md (the Canterbury-corpus
texts, tinyshakespeare, ...); they may not exist (the script then says so and stops).

    python -m experiments.best_vs_xz --m1 runs/m1                         # ../shared/data/*
    python -m experiments.best_vs_xz --m1 runs/m1 --files a.txt b.txt --max-bytes 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments.harness import markdown_table, strong_compressors, write_json

from pcomp.compress import codec, fileformat
from pcomp.config import CompressConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BASELINES = ("gzip -9", "bzip2 -9", "xz -9e", "zstd -19 --long", "brotli -11", "PPMd o6", "PPMd o8")


def default_files() -> list[Path]:
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.iterdir() if p.is_file() and p.name != "README.md")


def m1_source(m1_path: str) -> str | None:
    cfg = Path(m1_path) / "config.json"
    return json.loads(cfg.read_text())["data"]["source"] if cfg.is_file() else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m1", required=True, help="M1 run directory (a byte-level model trained with BOS first)")
    p.add_argument("--files", nargs="*", default=None, help="files to compress (default: ../shared/data/*)")
    p.add_argument("--max-bytes", type=int, default=0, help="compress only each file's first this many bytes (0 = all)")
    p.add_argument("--segment-bytes", type=int, default=CompressConfig.segment_bytes)
    p.add_argument("--batch", type=int, default=CompressConfig.m1_batch, help="M1 rows per step")
    p.add_argument("--precision", type=int, default=CompressConfig.precision)
    p.add_argument("--context-overlap", type=float, default=CompressConfig.context_overlap)
    p.add_argument("--no-verify", action="store_true", help="skip decompressing each file again")
    p.add_argument("--out", default="results/best_vs_xz")
    args = p.parse_args(argv)
    files = [Path(f) for f in args.files] if args.files is not None else default_files()
    if not files:
        sys.exit(f"no files: {SHARED} does not exist; pass --files")
    cfg = CompressConfig(m1_batch=args.batch, segment_bytes=args.segment_bytes, precision=args.precision,
                         context_overlap=args.context_overlap).validate()
    m1 = codec.m1_for(args.m1, cfg, "best")
    strong = strong_compressors()
    source = m1_source(args.m1)
    print(f"M1 {args.m1} (trained on {source}), context {m1.context - 1} bytes, segments of {cfg.segment_bytes} "
          f"bytes, batch {cfg.m1_batch}", flush=True)
    rows = []
    for f in files:
        data = f.read_bytes()[: args.max_bytes or None]
        if not data:
            continue
        t0 = time.perf_counter()
        blob = codec.compress(m1, data, cfg, mode="best")
        seconds = time.perf_counter() - t0
        verified, decompress_s = None, None
        if not args.no_verify:
            t0 = time.perf_counter()
            verified = codec.decompress(m1, blob, str(f)) == data
            decompress_s = time.perf_counter() - t0
        base = codec.baseline_sizes(data)
        unverified = []  # baselines whose own decoder did not give the data back (pyppmd 1.3.1 does that)
        for name, enc, dec in strong:
            packed = enc(data)
            base[name] = len(packed)
            try:
                ok = dec(packed, len(data)) == data
            except ValueError:
                ok = False
            if not ok:
                unverified.append(name)
                print(f"{f}: {name}'s decoder did not restore the data; its size is the encoder's output",
                      flush=True)
        header, _ = fileformat.unpack(blob)
        seen = source is not None and Path(source).resolve() == f.resolve()
        row = {"file": f.name + (" (seen by M1)" if seen else ""), "bytes": len(data),
               "best": 8 * len(blob) / len(data), "best_payload": 8 * fileformat.payload_size(header) / len(data),
               **{k: 8 * v / len(data) for k, v in base.items()},
               "ratio_xz": len(blob) / base["xz -9e"], "ratio_ppmd": len(blob) / base["PPMd o8"], "seconds": seconds,
               "compress_kbs": len(data) / 1e3 / seconds,
               "decompress_kbs": len(data) / 1e3 / decompress_s if decompress_s else None,
               "verified": verified, "baselines_unverified": ", ".join(unverified) or "-", "held_out": not seen}
        rows.append(row)
        print(f"{row['file']}: best {row['best']:.3f} bits/byte, xz -9e {row['xz -9e']:.3f}, ratio "
              f"{row['ratio_xz']:.3f} ({seconds:.0f} s{', round trip ok' if verified else ''})", flush=True)
        if verified is False:
            raise AssertionError(f"{f}: decompress did not give the original back")
    held = [r for r in rows if r["held_out"]]
    if held:
        n = sum(r["bytes"] for r in held)
        total = {"file": "all held-out files", "bytes": n}
        for k in ("best", "best_payload", *BASELINES):
            total[k] = sum(r[k] * r["bytes"] for r in held) / n
        total["ratio_xz"] = total["best"] / total["xz -9e"]
        total["ratio_ppmd"] = total["best"] / total["PPMd o8"]
        total["baselines_unverified"] = ", ".join(sorted({n for r in held for n in r["baselines_unverified"].split(", ")
                                                         if n != "-"})) or "-"
        rows.append(total)
    kbs = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    cols = [("file", "file", "s"), ("bytes", "bytes", ","), ("best", "pcomp best bits/byte", ".3f"),
            ("best_payload", "(payload only)", ".3f"), *((k, k, ".3f") for k in BASELINES),
            ("ratio_xz", "best / xz -9e", ".3f"), ("ratio_ppmd", "best / PPMd o8", ".3f"),
            ("compress_kbs", "compress KB/s", kbs), ("decompress_kbs", "decompress KB/s", kbs),
            ("verified", "round trip", lambda v: "ok" if v else ("-" if v is None else "FAILED")),
            ("baselines_unverified", "baselines not round-tripping", "s")]
    table = markdown_table(rows, cols)
    print("\n" + table)
    out = Path(args.out)
    write_json(out / "results.json", {"m1": args.m1, "m1_source": source, "m1_context": m1.context,
                                      "segment_bytes": cfg.segment_bytes, "batch": cfg.m1_batch, "rows": rows})
    (out / "table.md").write_text(f"M1 `{args.m1}` (trained on `{source}`), `pcomp compress --mode best`, segments "
                                  f"of {cfg.segment_bytes} bytes; bits/byte of whole files (header included).\n\n"
                                  + table + "\n")
    print(f"wrote {out / 'table.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
