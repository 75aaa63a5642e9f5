"""`pcomp compress --mode best` against M1's own cross-entropy, by context overlap (issue #23, item 1).

For each `--overlaps` fraction f (`CompressConfig.context_overlap`): the file's size, and what it
is made of, on the same bytes and the same M1:
  nll      M1's cross-entropy of the bytes in the file's own contexts (each context block from BOS,
           re-primed with h = f * block bytes), its float32 softmax over the coder's symbols (bytes
           and EOS: the rest of the vocabulary is never coded), summed in float64: the code length
           an ideal coder of this M1 would reach;
  ideal    the same under the coder's quantized tables (`plain_ac.ideal_bits` of the bytes alone:
           best files code no end symbol): nll plus quantization;
  file     the whole .pcomp file (header, stream lengths, coder termination included);
  overhead (file - nll) / nll: what the format and coder cost beyond M1's cross-entropy; split into
           (ideal - nll), which quantization can make negative (its floor of 2**-precision per
           symbol caps what a byte M1 found very unlikely costs), and (file - ideal) / nll: the
           header, the varint stream lengths and each stream's termination.
f = 0 is the restart-from-BOS rule of format version 2; the nll column across f is what the
re-prime buys. Also compress and decompress speed (one process, configurations run in order; stop
other work while it runs) and a round-trip check of every file.

    python -m experiments.best_overlap --m1 runs/m1 --file ../shared/data/alice29.txt --max-bytes 40000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from experiments.harness import markdown_table, write_json, write_section
from pcomp.compress import codec, plain_ac
from pcomp.compress.m1 import M1
from pcomp.config import CompressConfig

COLUMNS = [("overlap", "context_overlap", ".2f"), ("h", "re-primed bytes h", "d"),
           ("nll_bpb", "M1 nll bits/byte", ".4f"), ("ideal_bpb", "quantized bits/byte", ".4f"),
           ("file_bpb", "file bits/byte", ".4f"), ("overhead_pct", "file - nll", lambda v: f"{v:+.2f}%"),
           ("framing_pct", "file - quantized", lambda v: f"{v:+.2f}%"),
           ("compress_kbs", "compress KB/s", ".2f"), ("decompress_kbs", "decompress KB/s", ".2f")]


def context_windows(segments: list[bytes], bos: int, block: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) [windows, block + 1]: one window per context block of every segment: BOS, the
    block's fed bytes; mask 1 on the bytes it codes (the re-primed ones are context)."""
    rows, masks = [], []
    for seg in segments:
        for fed, coded in plain_ac.context_blocks(len(seg), block, overlap):
            piece = list(seg[fed : fed + block])
            tokens = np.zeros(block + 1, np.int32)
            mask = np.zeros(block + 1, np.int32)
            tokens[0], tokens[1 : 1 + len(piece)] = bos, piece
            mask[1 + coded - fed : 1 + len(piece)] = 1  # targets: the coded bytes
            rows.append(tokens)
            masks.append(mask)
    return np.stack(rows), np.stack(masks)


def symbol_nll_bits(m1: M1, tokens: np.ndarray, mask: np.ndarray, batch: int = 16) -> tuple[float, int]:
    """(bits, targets): -log2 of M1's float32 softmax over bytes + EOS at each masked target, in float64."""
    ids = np.asarray(list(range(256)) + [m1.trained.tokenizer.eos_id])

    @jax.jit
    def log_probs(params, tokens_bt):
        logits = nnx.merge(m1.trained.graphdef, params)(tokens_bt)[:, :-1][..., ids]
        return jax.nn.log_softmax(logits, axis=-1)

    total, count = 0.0, 0
    for i in range(0, len(tokens), batch):
        tok, msk = tokens[i : i + batch], mask[i : i + batch]
        pad = batch - len(tok)
        tok = np.pad(tok, ((0, pad), (0, 0)))
        lp = np.asarray(log_probs(m1.trained.params, tok), np.float64)[: len(msk)]
        target = np.take_along_axis(lp, tok[: len(msk), 1:, None], axis=-1)[..., 0]
        valid = msk[:, 1:].astype(bool)
        total -= float(target[valid].sum())
        count += int(valid.sum())
    return total / np.log(2), count


def measure(m1_path: str, data: bytes, overlap: float, batch: int) -> dict:
    cfg = CompressConfig(context_overlap=overlap, m1_batch=batch).validate()
    m1 = codec.m1_for(m1_path, cfg, "best")
    seg_bytes, rows = codec.best_layout(len(data), cfg, m1.max_window_bytes)
    m1.with_batch(rows).start()  # compiles the step at the file's batch outside the timing
    t0 = time.perf_counter()
    blob = codec.compress(m1, data, cfg, mode="best")
    t1 = time.perf_counter()
    back = codec.decompress(m1, blob)
    t2 = time.perf_counter()
    if back != data:
        raise SystemExit(f"round trip failed at context_overlap={overlap}")
    h = codec.overlap_bytes(cfg, m1.max_window_bytes)
    segs = codec.segments(data, seg_bytes)
    nll, count = symbol_nll_bits(m1, *context_windows(segs, m1.bos_id, m1.max_window_bytes, h))
    assert count == len(data), (count, len(data))
    ideal = plain_ac.ideal_bits(m1.with_batch(rows), segs, h, eos=False)
    n = len(data)
    return {"overlap": overlap, "h": h, "segment_bytes": seg_bytes, "m1_batch": rows, "bytes": n,
            "file_bytes": len(blob), "nll_bpb": nll / n, "ideal_bpb": ideal / n, "file_bpb": 8 * len(blob) / n,
            "overhead_pct": 100 * (8 * len(blob) - nll) / nll, "framing_pct": 100 * (8 * len(blob) - ideal) / nll, "compress_kbs": n / 1e3 / (t1 - t0),
            "decompress_kbs": n / 1e3 / (t2 - t1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m1", required=True, help="M1 run directory")
    p.add_argument("--file", required=True)
    p.add_argument("--max-bytes", type=int, default=40_000, help="the file's first this many bytes (0 = all)")
    p.add_argument("--overlaps", default="0,0.25,0.5", help="context_overlap fractions, comma-separated")
    p.add_argument("--batch", type=int, default=CompressConfig.m1_batch)
    p.add_argument("--out", default="results/best_overlap")
    p.add_argument("--results-md", default="", help="also write the table into this RESULTS.md section")
    args = p.parse_args(argv)
    data = Path(args.file).read_bytes()
    data = data[: args.max_bytes] if args.max_bytes else data
    rows = []
    for f in (float(x) for x in args.overlaps.split(",")):
        rows.append(measure(args.m1, data, f, args.batch))
        print(markdown_table(rows[-1:], COLUMNS), flush=True)
    table = markdown_table(rows, COLUMNS)
    write_json(Path(args.out) / "results.json", {"m1": args.m1, "file": args.file, "bytes": len(data), "rows": rows})
    text = (f"M1 `{args.m1}`, first {len(data):,} bytes of `{Path(args.file).name}`, "
            f"`pcomp compress --mode best` (segments of {rows[0]['segment_bytes']} bytes, batch {rows[0]['m1_batch']}):\n\n"
            f"{table}\n\nCommand: `python -m experiments.best_overlap --m1 {args.m1} --file {args.file} "
            f"--max-bytes {args.max_bytes} --overlaps {args.overlaps}`")
    (Path(args.out) / "table.md").write_text(text + "\n")
    print(text)
    if args.results_md:
        write_section(args.results_md, "best-overlap", text)


if __name__ == "__main__":
    main()
