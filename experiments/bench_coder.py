"""Benchmark the arithmetic coder (`pcomp.compress.arith`): encode/decode MB/s, bits/byte, overhead vs ideal.

Cases (1 symbol = 1 byte):
  (a) static: one 256-ary table fitted to the data's byte histogram; `encode` / `decode` with the table.
  (b) per-position: an order-1 (bigram) model of the data gives position i the table of byte i-1;
      `encode_intervals` with the chosen intervals / `decode` with the [N, 256] tables.
Times are best-of-R through the public wrappers (input validation included), after a warm-up call so
numba compilation is excluded; MB/s from wall-clock time, and in "cpu" columns from this process's CPU
time (closer to the unloaded figure when other jobs share the cores; the load average is printed).
Overhead = (coded bits - ideal bits) / ideal bits.

Usage: python -m experiments.bench_coder [--data PATH] [--n-tables N] [--precision P] [--repeats R]
Without the data file, 1 MB of random bytes from a Zipf(1.3) distribution is used instead.

M1-driven files (issue #27), `--m1 PRESET|RUN_DIR[,...]`: `pcomp.compress.codec.compress` / `decompress`
of the first --m1-bytes of --m1-data in both modes, under an UNTRAINED M1 of each preset (seed 0,
trained context = the preset's data.seq_len) or the trained M1 in a run directory: an M1 step costs
the same whatever its weights, so a preset's speed is that of a trained M1 (its sizes are not: they
are an untrained model's). A 16-byte round
trip and one step of the run's batch shape first, so XLA and numba compilation (or cache loading)
and M1's fingerprint are excluded. Per run: KB/s, M1 steps, the rows per step,
median seconds of one step split into launch / compute / device->host copy, and of the numba kernel
between steps; the load average before and after. `--m1-only` skips the coder cases above.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

from pcomp.compress.arith import decode, encode, encode_intervals, ideal_code_length
from pcomp.compress.quantize import cumulative, quantize_probs
from pcomp.config import CompressConfig

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def load_bytes(path, seed=0):
    """The data file as uint8 [N], or 1 MB of Zipf-distributed random bytes if it does not exist."""
    if path.exists():
        return np.frombuffer(path.read_bytes(), dtype=np.uint8), str(path)
    p = 1.0 / np.arange(1, 257) ** 1.3
    data = np.random.default_rng(seed).choice(256, size=1 << 20, p=p / p.sum()).astype(np.uint8)
    return data, f"Zipf(1.3) random bytes ({path} not found)"


def best_times(fn, repeats):
    """Best wall-clock and best CPU seconds over `repeats` calls, and the last result."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu, out


def run_case(name, n, enc, dec, ideal, repeats):
    """Time encode and decode; return one table row (MB/s wall and cpu, bits/byte, overhead %)."""
    enc()  # warm-up: load/compile the numba kernels
    enc_wall, enc_cpu, bits = best_times(enc, repeats)
    dec(bits[:64])  # warm-up
    dec_wall, dec_cpu, _ = best_times(lambda: dec(bits), repeats)
    mbs = [n / 1e6 / t for t in (enc_wall, dec_wall, enc_cpu, dec_cpu)]
    return name, *mbs, len(bits) / n, 100 * (len(bits) - ideal) / ideal


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="text file to fit the models to")
    ap.add_argument("--n-tables", type=int, default=200_000, help="bytes for case (b) (N x 256 int32 tables)")
    ap.add_argument("--precision", type=int, default=CompressConfig.precision)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--m1", default="", help="comma-separated model presets (untrained) or run directories "
                    "(trained M1s) to time compress/decompress with")
    ap.add_argument("--m1-bytes", type=int, default=40_000)
    ap.add_argument("--m1-data", type=Path, default=DEFAULT_DATA.parent / "alice29.txt")
    ap.add_argument("--m1-modes", default="best,windows")
    ap.add_argument("--windows-segment-bytes", type=int, default=CompressConfig.segment_bytes)
    ap.add_argument("--m1-only", action="store_true")
    args = ap.parse_args(argv)
    if args.m1:
        bench_m1(args)
        if args.m1_only:
            return
    data, source = load_bytes(args.data)
    symbols = data.astype(np.int64)  # [N]
    print(f"data: {source}, {len(data)} bytes; precision {args.precision}; best of {args.repeats}")
    rows = []

    # (a) static table fitted to the byte histogram
    freqs = quantize_probs(np.bincount(data, minlength=256).astype(np.float64), args.precision)  # [256]
    rows.append(run_case(
        "(a) static 256-ary", len(symbols),
        lambda: encode(symbols, freqs, args.precision),
        lambda bits: decode(bits, freqs, len(symbols), args.precision),
        ideal_code_length(symbols, freqs, args.precision), args.repeats))
    assert (decode(encode(symbols, freqs, args.precision), freqs, len(symbols), args.precision) == symbols).all()

    # (b) per-position tables from a bigram model: position i uses the row of byte i - 1
    n = min(args.n_tables, len(data) - 1)
    bigram = np.ones((256, 256))
    np.add.at(bigram, (data[:-1], data[1:]), 1)
    t0 = time.perf_counter()
    row_freqs = quantize_probs(bigram, args.precision)  # [256, 256]
    t_quant = time.perf_counter() - t0
    tables = np.ascontiguousarray(row_freqs[data[:n]])  # [n, 256] int32
    sym_b = symbols[1:n + 1]  # [n]
    cum = cumulative(row_freqs)  # [256, 257]
    c_lo, c_hi = cum[data[:n], sym_b], cum[data[:n], sym_b + 1]  # [n]
    rows.append(run_case(
        "(b) per-position, intervals", n,
        lambda: encode_intervals(c_lo, c_hi, args.precision),
        lambda bits: decode(bits, tables, n, args.precision),
        ideal_code_length(sym_b, tables, args.precision), args.repeats))
    assert (decode(encode_intervals(c_lo, c_hi, args.precision), tables, n, args.precision) == sym_b).all()

    print(f"\n{'case':<30}{'enc MB/s':>9}{'dec MB/s':>9}{'enc cpu':>9}{'dec cpu':>9}{'bits/byte':>11}"
          f"{'overhead %':>12}")
    for name, *mbs, bpb, overhead in rows:
        print(f"{name:<30}" + "".join(f"{v:>9.2f}" for v in mbs) + f"{bpb:>11.4f}{overhead:>12.5f}")
    print(f"\n(quantize_probs of the 256 bigram rows: {1e3 * t_quant:.2f} ms; per-position tables are "
          f"{tables.nbytes / 1e6:.0f} MB of int32 read by the decoder; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores)")


def untrained_m1_model(preset):
    """An untrained byte model of `preset` (seed 0), BOS-first, trained context = its data.seq_len."""
    import dataclasses

    from flax import nnx

    from pcomp.config import Config
    from pcomp.data.tokenizers import ByteTokenizer
    from pcomp.models.transformer import Transformer
    from pcomp.train.load import TrainedModel

    cfg = Config.preset(preset)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, bos_first=True))
    graphdef, params = nnx.split(Transformer(cfg.model, nnx.Rngs(0)))
    return TrainedModel(cfg, ByteTokenizer(), graphdef, params, 0, Path("untrained"))


def _warm(m1):
    """Compile M1's step for its batch shape (one step), so the timed run excludes compilation."""
    cache = m1.start()
    m1.step(cache, np.zeros(m1.batch, np.int64), np.ones(m1.batch, np.int64))


def bench_m1(args):
    """compress / decompress KB/s of --m1-bytes of --m1-data per preset and mode (module docstring)."""
    from pcomp.compress import codec, fileformat
    from pcomp.compress.m1 import StepTimer

    data = args.m1_data.read_bytes()[: args.m1_bytes]
    print(f"M1 compress/decompress: {len(data)} bytes of {args.m1_data}; untrained M1s; "
          f"{os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{'preset':<10}{'mode':<9}{'ctx':>4}{'seg':>6}{'batch':>6}{'bytes out':>10}{'comp KB/s':>10}"
          f"{'dec KB/s':>10}{'dec/comp':>9}{'c steps':>8}{'d steps':>8}{'c ms/st':>8}{'d ms/st':>8}"
          f"{'launch':>7}{'compute':>8}{'copy':>6}{'kernel':>7}  load")
    from pcomp.train.load import load_trained

    for preset in [p for p in args.m1.split(",") if p]:
        model = load_trained(preset) if Path(preset).is_dir() else untrained_m1_model(preset)
        preset = model.cfg.model.name + ("" if preset == model.cfg.model.name else "*")  # *: trained (RUN_DIR)
        for mode in args.m1_modes.split(","):
            seg_bytes = args.windows_segment_bytes if mode == "windows" else CompressConfig.segment_bytes
            cfg = CompressConfig(precision=args.precision, segment_bytes=seg_bytes)
            m1 = codec.m1_for(model, cfg, mode)
            batch = m1.batch
            if mode == "best" and hasattr(codec, "best_layout"):
                batch = codec.best_layout(len(data), cfg, m1.max_window_bytes)[1]
            run_m1 = m1.with_batch(batch) if hasattr(m1, "with_batch") else m1
            assert codec.decompress(m1, codec.compress(m1, data[:16], cfg, mode=mode)) == data[:16]  # numba, hash
            _warm(run_m1)
            timer = StepTimer()
            run_m1.timer = m1.timer = timer
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            blob = codec.compress(m1, data, cfg, mode=mode)
            t_c = time.perf_counter() - t0
            c_steps, c_step = timer.steps, np.median(timer.step_seconds())
            timer.reset()
            t0 = time.perf_counter()
            out = codec.decompress(m1, blob)
            t_d = time.perf_counter() - t0
            assert out == data
            header, _ = fileformat.unpack(blob)
            med = [1e3 * np.median(x) if len(x) else float("nan")
                   for x in (timer.launch, timer.compute, timer.copy, timer.kernel)]
            print(f"{preset:<10}{mode:<9}{m1.context:>4}{header['segment_bytes']:>6}{header['m1_batch']:>6}"
                  f"{len(blob):>10}{len(data) / 1e3 / t_c:>10.2f}{len(data) / 1e3 / t_d:>10.2f}{t_c / t_d:>9.2f}"
                  f"{c_steps:>8}{timer.steps:>8}{1e3 * c_step:>8.1f}{1e3 * np.median(timer.step_seconds()):>8.1f}"
                  + "".join(f"{v:>{w}.2f}" for v, w in zip(med, (7, 8, 6, 7)))
                  + f"  {load0:.1f}/{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
