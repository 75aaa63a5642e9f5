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

`--prepare KINDS` also times `pcomp prepare` end to end (`pcomp.compress.prepare.prepare`: loading
M1, compressing both splits, writing the ArrayRecord shards) for each tokenizer kind on `--data`
(bounded to its first `--prepare-bytes` bytes, written as a .jsonl, when that is > 0): bytes/s of
original text. Then, on each prepared dataset, `--m2-steps` training steps of a small M2
(`--m2-preset`, through the trainer, `pcomp.train.trainer.train`) give M2 training tokens/s per
tokenization: the median of the trainer's perf/tokens_per_s over the logged steps after the first
(which includes compilation). Without `--m1`, the M1-driven kinds use an m1-3m trained for one step
here (speed per M1 step is a trained one's; bytes per window is not).

    python -m experiments.bench_equal_info                      # 200 KB, b in {16, 32}, B in {64, 256, 1024}
    python -m experiments.bench_equal_info --m1 results/compression_table/m1 --bytes 100000
    python -m experiments.bench_equal_info --prepare equal_info,ac,gzip,static_ac,bytes --prepare-bytes 50000 \
        --no-round-trips --no-profile                          # prepare bytes/s and M2 tokens/s only
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from experiments.harness import add_data_arg, markdown_table, min_median, write_json

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


# --------------------------------------------------------------------------------- prepare and M2 training
M1_KINDS = ("equal_info", "ac")


def prepare_source(args, out: Path) -> tuple[str, int]:
    """(source for `prepare`, its bytes): --data itself, or its first --prepare-bytes bytes as a .jsonl."""
    if args.prepare_bytes <= 0:
        return args.data, sum(len(d) for split in ("train", "eval") for d in load_documents(args.data, split))
    docs, total = [], 0
    for split in ("train", "eval"):
        for d in load_documents(args.data, split):
            d = d[: args.prepare_bytes - total]
            while d and d[-1] & 0xC0 == 0x80:  # not inside a UTF-8 character (JSON holds text)
                d = d[:-1]
            if d:
                docs.append(d)
                total += len(d)
            if total >= args.prepare_bytes:
                break
    path = out / "prepare-source.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d.decode("utf-8", "replace")}) + "\n" for d in docs))
    return str(path), sum(len(json.loads(line)["text"].encode()) for line in path.read_text().splitlines())


def prepare_m1(args, out: Path) -> str:
    """--m1, or an m1-3m trained one step here (cached in out/m1-1step)."""
    if args.m1:
        return args.m1
    from experiments.harness import train_m1

    run = train_m1(out / "m1-1step", "training.steps=1", "training.warmup_steps=1", "data.eval_max_bytes=2048")
    return str(run)


def time_prepare(args, kind: str, source: str, n_bytes: int, m1_path: str | None, out: Path) -> dict:
    """`prepare` of `source` with tokenizer `kind` from scratch, timed end to end."""
    from pcomp.compress.prepare import prepare

    ds = out / f"prepared-{kind}"
    shutil.rmtree(ds, ignore_errors=True)
    token_bits = 8 if kind in ("gzip", "static_ac", "ac") else 16
    cfg = CompressConfig(window_bits=16, token_bits=token_bits, precision=args.precision,
                         m1_batch=args.prepare_batch)
    t0 = time.perf_counter()
    prepare(m1_path=m1_path if kind in M1_KINDS else None, source=source, out=str(ds), cfg=cfg,
            seq_len=args.seq_len, progress=False, tokenizer=kind, vocab_size=args.sp_vocab)
    seconds = time.perf_counter() - t0
    counts = [json.loads(f.read_text()) for f in sorted(ds.glob("*-[0-9][0-9][0-9][0-9][0-9].json"))]
    tokens = sum(c.get("tokens", 0) for c in counts)
    return {"kind": kind, "dataset": str(ds), "bytes": n_bytes, "seconds": seconds, "bytes_per_s": n_bytes / seconds,
            "tokens": tokens, "bytes_per_token": n_bytes / tokens if tokens else None,
            "vocab": json.loads((ds / "dataset.json").read_text()).get("vocab_size")}


def time_m2(args, dataset: str, out: Path) -> float | None:
    """Median trainer tokens/s of --m2-steps steps of a --m2-preset M2 on a prepared dataset."""
    from pcomp.config import Config
    from experiments.harness import train_to_end

    run = Path(out) / f"m2-{Path(dataset).name}"
    shutil.rmtree(run, ignore_errors=True)
    train_to_end(Config.preset(args.m2_preset).override(
        f"data.source={dataset}", f"data.seq_len={args.seq_len}", f"training.steps={args.m2_steps}",
        f"training.batch_size={args.m2_batch}", "training.log_every=1", "training.progress=false",
        f"training.checkpoint_every={args.m2_steps}", f"training.workdir={run}"))
    rates = [r["perf/tokens_per_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "perf/tokens_per_s" in r]
    return statistics.median(rates) if rates else None


def prepare_section(args, out: Path) -> tuple[list[dict], str]:
    kinds = [k for k in args.prepare.split(",") if k]
    source, n = prepare_source(args, out)
    m1_path = prepare_m1(args, out) if any(k in M1_KINDS for k in kinds) else None
    print(f"prepare: {n:,} bytes of {source}" + (f"; M1 {m1_path}" if m1_path else ""), flush=True)
    rows = []
    for kind in kinds:
        r = time_prepare(args, kind, source, n, m1_path, out)
        if args.m2_steps > 0:
            r["m2_tokens_per_s"] = time_m2(args, r["dataset"], out)
            if r["m2_tokens_per_s"] and r["bytes_per_token"]:
                r["m2_bytes_per_s"] = r["m2_tokens_per_s"] * r["bytes_per_token"]
        rows.append(r)
        print(f"{kind}: prepare {r['bytes_per_s']:,.0f} bytes/s ({r['seconds']:.1f} s), {r['tokens']:,} tokens"
              + (f"; M2 {r['m2_tokens_per_s']:,.0f} tokens/s" if r.get("m2_tokens_per_s") else ""), flush=True)
    cols = [("kind", "tokenizer", "s"), ("vocab", "vocab", ","), ("bytes", "bytes", ","),
            ("seconds", "prepare s", ".1f"), ("bytes_per_s", "prepare bytes/s", ",.0f"), ("tokens", "tokens", ","),
            ("bytes_per_token", "bytes/token", ".2f"), ("m2_tokens_per_s", f"M2 ({args.m2_preset}) tokens/s", ",.0f"),
            ("m2_bytes_per_s", "M2 original bytes/s", ",.0f")]
    return rows, markdown_table(rows, cols)


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
    p.add_argument("--no-round-trips", action="store_true", help="skip the encode/decode round trips")
    p.add_argument("--prepare", default="",
                   help="tokenizer kinds to time `pcomp prepare` for, comma-separated (equal_info, ac, gzip, "
                        "static_ac, bytes, sentencepiece); empty = skip")
    p.add_argument("--prepare-bytes", type=int, default=0,
                   help="--prepare on the first this many bytes of --data (0 = all of it; embedded: ~1 MB)")
    p.add_argument("--prepare-batch", type=int, default=CompressConfig.m1_batch, help="M1 rows per step in prepare")
    p.add_argument("--seq-len", type=int, default=128, help="M2 tokens per record (prepare) and per sequence")
    p.add_argument("--sp-vocab", type=int, default=1024, help="--prepare sentencepiece vocabulary")
    p.add_argument("--m2-steps", type=int, default=5, help="M2 train steps per prepared dataset (0 = skip)")
    p.add_argument("--m2-preset", default="test-tiny", help="M2's preset for the tokens/s measurement")
    p.add_argument("--m2-batch", type=int, default=8, help="M2 sequences per step")
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
    for batch in [] if args.profile_only or args.no_round_trips else batches:
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
    prep_rows, prep_table = prepare_section(args, out) if args.prepare else ([], "")
    if prep_rows:
        print("\n`pcomp prepare` end to end, and M2 training tokens/s per tokenization:\n" + prep_table)
    write_json(out / "results.json", {"data": args.data, "bytes": n, "m1": args.m1 or "untrained m1-3m",
                                      "device": dev.device_kind, "matmul_flops": matmul,
                                      "matmul_flops_end": matmul_end, "rows": rows, "profile": prof_rows,
                                      "prepare": prep_rows})
    (out / "table.md").write_text(table + "\n\n" + (ptable if prof_rows else "") + "\n\n" + verdict + "\n\n"
                                  + prep_table + "\n")
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
