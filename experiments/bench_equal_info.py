"""Throughput of full EqualInfoAC with M1: encode_windows + decode_windows, and where the time goes.

For each window size b and M1 batch size B, `--bytes` of text are encoded with
`pcomp.compress.windows.encode_windows` and decoded back with `decode_windows` (the round trip is
checked). Reported per direction: bytes/s, M1 steps, M1 FLOP/s (steps * M1.flops_per_step() /
wall time) and that as a share of this device's measured dense-matmul rate
(`pcomp.train.metrics.measured_matmul_flops`), and the share of wall time spent outside the M1
step. Times come from the library's timing hook (`M1.timer`, a `pcomp.compress.m1.StepTimer`): each
M1 step runs the same jitted function with a `jax.block_until_ready` added between the launch and
the host copy, so it splits into launch (incl. host->device of tokens/positions), compute, and
device->host copy; the drivers also time each numba row-kernel call. "active rows" is the mean
share of the B rows that needed the step.

M1 runs with the KV cache `M1.for_windows` gives b-bit windows (`window_context`: BOS + 2b byte
positions, 33 at b=16). A `--profile` section then times the M1 step alone (min / median of
repeated calls) at KV-cache lengths 128 (the model's whole context), 33 and 2, to split the step
into attention over the cache versus the dense part.

By default M1 is the m1-3m architecture with random (untrained) weights, built in memory: speeds
per step are the same as a trained M1's, but window lengths (bytes per window, so steps per byte)
depend on M1's quality -- an untrained M1 needs ~8 bits per byte. Pass `--m1 RUN_DIR` for a
trained one.

    python experiments/bench_equal_info.py                      # 200 KB, b in {16, 32}, B in {64, 256, 1024}
    python experiments/bench_equal_info.py --m1 results/compression_table/m1 --bytes 100000
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import numpy as np

from pcomp.report import add_data_arg, markdown_table, min_median, write_json

from pcomp.compress import windows
from pcomp.compress.m1 import M1, StepTimer, window_context
from pcomp.config import CompressConfig
from pcomp.data.sources import load_documents
from pcomp.train.metrics import measured_matmul_flops

TARGET = 0.5  # M1 FLOP/s as a share of the matmul rate


# --------------------------------------------------------------------------------- M1 and data
def build_m1(args, batch: int, window_bits: int | None, context: int = 0) -> M1:
    """M1 from --m1, or an untrained m1-3m in memory, set up for b-bit windows (or with a KV cache of
    `context` positions), with a `StepTimer` as its timing hook."""
    from flax import nnx

    from pcomp.config import Config
    from pcomp.data.tokenizers import ByteTokenizer
    from pcomp.models.transformer import Transformer
    from pcomp.train.load import TrainedModel, load_trained

    if args.m1:
        trained = _load_cached(args.m1, load_trained)
    else:
        cfg = Config.preset("m1-3m")
        graphdef, params = _load_cached("untrained", lambda _: nnx.split(Transformer(cfg.model, nnx.Rngs(0))))
        trained = TrainedModel(cfg, ByteTokenizer(), graphdef, params, 0, Path("untrained-m1-3m"))
    m1 = M1.for_windows(trained, window_bits, precision=args.precision, batch=batch,
                        context=min(context, trained.cfg.model.max_seq_len))
    m1.timer = StepTimer()
    return m1


_CACHE: dict = {}


def remeasured_matmul_flops() -> float:
    """The matmul rate measured again now (other jobs share the CPU), not the cached first measurement."""
    measured_matmul_flops.cache_clear()
    return measured_matmul_flops()


def _load_cached(key, fn):
    if key not in _CACHE:
        _CACHE[key] = fn(key)
    return _CACHE[key]


def load_text(data: str, n_bytes: int) -> tuple[list[bytes], str]:
    """Documents holding n_bytes: the eval split, then the training split if the eval split is shorter."""
    docs, total, used = [], 0, []
    for split in ("eval", "train"):
        for d in load_documents(data, split):
            if total >= n_bytes:
                break
            d = d[: n_bytes - total]
            docs.append(d)
            total += len(d)
            if split not in used:
                used.append(split)
    return docs, "+".join(used)


# --------------------------------------------------------------------------------- one run
def summarize(kind, total_s, m1: M1, n_bytes, matmul) -> dict:
    t = m1.timer
    steps = t.steps
    per_step = t.step_seconds()
    step_s = float(per_step.sum())
    flops = steps * m1.flops_per_step()
    kernel_s = float(np.sum(t.kernel))
    active = np.asarray([a for a in t.active if a > 0], np.float64)  # one kernel call with active > 0 per step
    return {
        "dir": kind, "seconds": total_s, "bytes_per_s": n_bytes / total_s, "steps": steps,
        "row_evals_per_byte": float(active.sum()) / n_bytes,  # M1 row evaluations that were needed, per byte
        "step_ms_min": 1e3 * float(per_step.min()) if steps else None,
        "step_ms_med": 1e3 * float(np.median(per_step)) if steps else None,
        "flops_per_s": flops / total_s, "frac_matmul": flops / total_s / matmul,
        "step_flops_per_s": flops / step_s if step_s else None,
        "step_frac_matmul": flops / step_s / matmul if step_s else None,
        "best_step_frac_matmul": m1.flops_per_step() / per_step.min() / matmul if steps else None,
        "outside_share": 1 - step_s / total_s,
        "launch_share": float(np.sum(t.launch)) / total_s, "compute_share": float(np.sum(t.compute)) / total_s,
        "copy_share": float(np.sum(t.copy)) / total_s, "kernel_share": kernel_s / total_s,
        "python_share": (total_s - step_s - kernel_s) / total_s,
        "active_rows": float(active.mean()) / m1.batch if active.size else None,
    }


def run_one(args, b: int, batch: int, docs: list[bytes], matmul: float) -> list[dict]:
    m1 = build_m1(args, batch, b)
    n = sum(len(d) for d in docs)
    seg = args.segment_bytes if args.segment_bytes > 0 else min(CompressConfig.segment_bytes, math.ceil(n / batch))
    # warm-up: compile M1's step for this batch, the BOS cache and the numba kernels
    windows.decode_windows(m1, windows.encode_windows(m1, [docs[0][:300]], b, segment_bytes=seg).codes, b)
    out = []
    m1.timer.reset()
    t0 = time.perf_counter()
    enc = windows.encode_windows(m1, docs, b, segment_bytes=seg)
    t_enc = time.perf_counter() - t0
    out.append(summarize("encode", t_enc, m1, n, matmul))
    m1.timer.reset()
    t0 = time.perf_counter()
    data, lens = windows.decode_windows(m1, enc.codes, b)
    t_dec = time.perf_counter() - t0
    out.append(summarize("decode", t_dec, m1, n, matmul))
    ok = data == b"".join(docs) and np.array_equal(lens, enc.window_bytes)
    if not ok:
        raise AssertionError(f"b={b} B={batch}: decode_windows did not return the encoded text")
    for r in out:
        r.update({"b": b, "batch": batch, "segment_bytes": seg, "windows": len(enc.codes),
                  "bytes_per_window": n / len(enc.codes), "bits_per_byte": b * len(enc.codes) / n,
                  "max_window_bytes": int(enc.window_bytes.max()), "round_trip": ok})
    return out


# --------------------------------------------------------------------------------- profile
PROFILE_CACHES = (128, 33, 2)


def profile(args, batch: int, lengths=PROFILE_CACHES, repeats: int = 15) -> dict:
    """min / median ms of M1's step at KV-cache lengths `lengths` (positions drawn in range)."""
    res = {"batch": batch}
    rng = np.random.default_rng(0)
    for L in lengths:
        m1 = build_m1(args, batch, None, context=L)
        cache = m1.start()
        tok = rng.integers(0, 256, batch)
        for i in range(3 + repeats):
            pos = rng.integers(1, L, batch) if L > 1 else np.zeros(batch, np.int64)
            _, cache = m1.step(cache, tok, pos)
        comp = np.asarray(m1.timer.launch[3:]) + np.asarray(m1.timer.compute[3:])
        res[f"L{L}_ms_min"], res[f"L{L}_ms_med"] = (1e3 * x for x in min_median(list(comp)))
        res[f"L{L}_copy_ms_med"] = 1e3 * float(np.median(m1.timer.copy[3:]))
        res[f"L{L}_gflops"] = m1.flops_per_step() / min(comp) / 1e9
        res[f"L{L}_flops_per_step"] = m1.flops_per_step()
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arg(p)
    p.add_argument("--bytes", type=int, default=200_000, help="bytes of text to compress")
    p.add_argument("--m1", default=None, help="M1 run directory (default: untrained m1-3m built in memory)")
    p.add_argument("--window-bits", default="16,32")
    p.add_argument("--batch", default="64,256,1024", help="M1 batch sizes (rows per step)")
    p.add_argument("--segment-bytes", type=int, default=0,
                   help="encoder segment size; 0 = min(2048, bytes / batch) so every row gets a segment")
    p.add_argument("--precision", type=int, default=CompressConfig.precision)
    p.add_argument("--no-profile", action="store_true", help="skip the per-step M1 profile")
    p.add_argument("--profile-only", action="store_true", help="only the per-step M1 profile (no round trips)")
    p.add_argument("--out", default="results/bench_equal_info", help="directory for results.json")
    args = p.parse_args(argv)
    bs = [int(x) for x in args.window_bits.split(",")]
    batches = [int(x) for x in args.batch.split(",")]

    docs, splits = load_text(args.data, args.bytes)
    n = sum(len(d) for d in docs)
    matmul = measured_matmul_flops()
    dev = jax.local_devices()[0]
    m1_name = args.m1 or "untrained m1-3m (in memory)"
    print(f"{n:,} bytes of {args.data} ({splits} split, {len(docs)} docs); M1 {m1_name}"
          f"; device {dev.device_kind} ({jax.default_backend()}); measured f32 matmul rate {matmul / 1e9:.1f} GFLOP/s",
          flush=True)
    rows = []
    for batch in [] if args.profile_only else batches:
        for b in bs:
            t0 = time.perf_counter()
            local = remeasured_matmul_flops()  # re-measured per run: other jobs share the CPU
            rs = run_one(args, b, batch, docs, local)
            for r in rs:
                r["matmul_flops"] = local
            rows += rs
            e, d = rs
            print(f"b={b} B={batch}: encode {e['bytes_per_s']:,.0f} B/s, decode {d['bytes_per_s']:,.0f} B/s, "
                  f"{e['bytes_per_window']:.2f} bytes/window ({time.perf_counter() - t0:.0f} s)", flush=True)
    matmul_end = remeasured_matmul_flops()
    cols = [
        ("b", "b", "d"), ("batch", "B", "d"), ("segment_bytes", "seg", "d"), ("dir", "dir", "s"),
        ("bytes_per_s", "bytes/s", ",.0f"), ("steps", "M1 steps", ","), ("row_evals_per_byte", "row evals/byte", ".2f"),
        ("active_rows", "active rows", ".0%"), ("step_ms_min", "step ms min", ".1f"),
        ("step_ms_med", "step ms med", ".1f"), ("flops_per_s", "M1 GFLOP/s", lambda v: f"{v / 1e9:.2f}"),
        ("matmul_flops", "matmul GFLOP/s", lambda v: f"{v / 1e9:.0f}"), ("frac_matmul", "of matmul", ".1%"),
        ("step_frac_matmul", "in-step of matmul", ".1%"), ("best_step_frac_matmul", "fastest step of matmul", ".1%"),
        ("outside_share", "outside M1", ".1%"), ("kernel_share", "numba", ".1%"), ("python_share", "python", ".1%"),
        ("copy_share", "dev->host", ".1%"), ("bytes_per_window", "bytes/window", ".2f"),
        ("bits_per_byte", "bits/byte", ".3f"),
    ]
    table = markdown_table(rows, cols) if rows else ""
    print("\n" + table)
    prof_rows = []
    if not args.no_profile:
        for batch in batches:
            prof_rows.append({**profile(args, batch), "matmul_gflops": remeasured_matmul_flops() / 1e9})
        pcols = [("batch", "B", "d")]
        for L in PROFILE_CACHES:
            pcols += [(f"L{L}_ms_min", f"step ms min (cache {L})", ".2f"),
                      (f"L{L}_ms_med", f"median (cache {L})", ".2f"),
                      (f"L{L}_gflops", f"GFLOP/s (cache {L})", ".2f")]
        pcols += [("L128_copy_ms_med", "dev->host ms", ".3f"),
                  ("matmul_gflops", "matmul GFLOP/s", ".0f")]
        ptable = markdown_table(prof_rows, pcols)
        print("\nM1 step alone (launch + compute, no coder), KV cache of 128 / 33 / 2 positions:\n" + ptable)
    verdict = conclude(rows, prof_rows, matmul)
    print("\n" + verdict)
    out = Path(args.out)
    write_json(out / "results.json", {"data": args.data, "bytes": n, "m1": args.m1 or "untrained m1-3m",
                                      "device": dev.device_kind, "matmul_flops": matmul,
                                      "matmul_flops_end": matmul_end, "rows": rows, "profile": prof_rows})
    (out / "table.md").write_text(table + "\n\n" + (ptable if prof_rows else "") + "\n\n" + verdict + "\n")
    print(f"matmul rate at the start {matmul / 1e9:.1f}, at the end {matmul_end / 1e9:.1f} GFLOP/s; wrote "
          f"{out / 'results.json'} and {out / 'table.md'}")


def conclude(rows, prof_rows, matmul) -> str:
    lines = []
    if rows:
        best = max(rows, key=lambda r: r["frac_matmul"])
        lines.append(f"Best: b={best['b']} B={best['batch']} {best['dir']} at {best['frac_matmul']:.1%} of the matmul "
                     f"rate ({best['flops_per_s'] / 1e9:.2f} of {best['matmul_flops'] / 1e9:.1f} GFLOP/s measured just "
                     f"before); target >= {TARGET:.0%}: " + ("met." if best["frac_matmul"] >= TARGET else "NOT met."))
        lines.append("Median share of wall time outside the M1 step (numba coder + windowing + Python): "
                     f"{np.median([r['outside_share'] for r in rows]):.1%}; inside the step M1 itself runs at "
                     f"{np.median([r['step_frac_matmul'] for r in rows]):.1%} of the matmul rate (median).")
    if prof_rows:
        for pr in prof_rows:
            a, w = pr["L128_ms_min"], pr["L33_ms_min"]
            lines.append(f"B={pr['batch']}: step {a:.1f} ms with a 128-position cache, {w:.1f} ms with 33 (b=16's), "
                         f"{pr['L2_ms_min']:.1f} ms with 2 -> attention is ~{max(w - pr['L2_ms_min'], 0) / w:.0%} of "
                         f"the b=16 step; dense part {pr['L2_gflops']:.1f} GFLOP/s (matmul {pr['matmul_gflops']:.0f}).")
    for b in sorted({r["b"] for r in rows}):
        rb = [r for r in rows if r["b"] == b]
        lines.append(f"b={b}: {np.mean([r['bytes_per_window'] for r in rb]):.2f} bytes/window, longest window "
                     f"{max(r['max_window_bytes'] for r in rb)} bytes (cap {window_context(b, 10**9) - 1}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
