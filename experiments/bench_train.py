"""Training throughput: tokens/s, model FLOP/s and MFU of the jitted train step for a few sizes.

MFU here is achieved model FLOP/s (6N + 12 L d T per token, PaLM convention) divided by the
device's dense-matmul rate: the vendor peak on TPU/GPU, the measured float32 matmul rate on CPU
(the practical limit there). Compile time is excluded; the best of `--repeats` timed steps is
reported together with the median.

    python -m experiments.bench_train                       # demo, m1-3m, 25m on this machine
    python -m experiments.bench_train --models 125m --batch 8 --seq 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pcomp.config import MeshConfig, TrainingConfig
from pcomp.presets import MODEL_PRESETS
from pcomp.models.sharding import make_mesh
from pcomp.models.transformer import count_params
from pcomp.train.step import build_program
from pcomp.train.metrics import flops_per_position, measured_matmul_flops, peak_flops_per_device


def bench(model: str, batch: int, seq: int, repeats: int, attention: str, dtype: str) -> dict:
    cfg = dataclasses.replace(MODEL_PRESETS[model], vocab_size=258, max_seq_len=max(seq, 2), attention=attention,
                              dtype=dtype)
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    program = build_program(cfg, TrainingConfig(), mesh, steps=100)
    fn = program.step
    with jax.set_mesh(mesh):
        state = program.init(None)
        rng = np.random.default_rng(0)
        data = {"tokens": jnp.asarray(rng.integers(0, 256, (batch, seq)), jnp.int32),
                "mask": jnp.ones((batch, seq), jnp.int32)}
        state, m = fn(state, data)
        jax.block_until_ready(m)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            state, m = fn(state, data)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
    best, med = min(times), statistics.median(times)
    flops = batch * seq * flops_per_position(cfg, seq)
    return {"model": model, "params": count_params(cfg), "batch": batch, "seq": seq, "attention": attention,
            "step_s": best, "median_s": med, "tokens_per_s": batch * seq / best, "flops_per_s": flops / best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,m1-3m,25m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attention", default="auto", choices=["auto", "blocked", "fused"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    peak, source = peak_flops_per_device(args.dtype)
    matmul = measured_matmul_flops(args.dtype) if jax.default_backend() == "cpu" else peak
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); limit {matmul / 1e9:.1f} GFLOP/s "
          f"({source})")
    print("| model | params | batch x seq | step (best / median) | tokens/s | model GFLOP/s | of limit |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = bench(name, args.batch, args.seq, args.repeats, args.attention, args.dtype)
        print(f"| {name} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq']} | {r['step_s'] * 1e3:.0f} / "
              f"{r['median_s'] * 1e3:.0f} ms | {r['tokens_per_s']:.0f} | {r['flops_per_s'] / 1e9:.1f} | "
              f"{r['flops_per_s'] / matmul:.1%} |", flush=True)
    # the limit again after the runs: the CPU rate drifts with load, so the table shows both ends
    if jax.default_backend() == "cpu":
        measured_matmul_flops.cache_clear()
        print(f"matmul rate re-measured after the runs: {measured_matmul_flops(args.dtype) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
