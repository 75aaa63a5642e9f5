"""Throughput of a patch-level train step against a token-level train step of the same model.

Both steps run the same transformer over the same B x T positions; the patch step (patch size K)
consumes B x K*T tokens per step, the token step B x T. The ideal tokens/s ratio patch/token is K.
Steps are built with `pcomp.train.step.build_program` on a one-device mesh, warmed up (compile
excluded), then timed interleaved (the order rotates every round) and repeated; min and median
per-step times are reported.

    python -m experiments.bench_patch                       # demo model, K in {2, 4, 8}
    python -m experiments.bench_patch --model 25m --batch 4 --seq-len 256
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from pcomp.config import Config, MeshConfig
from pcomp.presets import MODEL_PRESETS, RUN_PRESETS
from pcomp.models.sharding import batch_sharding, make_mesh
from pcomp.models.transformer import count_params
from experiments.harness import interleaved_times, markdown_table, min_median, write_json
from pcomp.train.step import build_program


def build(cfg: Config, patch_sizes: list[int], steps_hint: int = 1000):
    """(mesh, initial state, {K: jitted train step}) for one device; K = 1 is the token step."""
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    tc = cfg.override("training.grad_accum=1").training
    programs = {k: build_program(cfg.model, tc, mesh, steps=steps_hint, patch_size=k) for k in [1] + patch_sizes}
    with jax.set_mesh(mesh):
        state = programs[1].init(None)  # one state: every K's step has the same optimizer and shardings
    return mesh, state, {k: p.step for k, p in programs.items()}


def batches(mesh, b: int, t: int, patch_sizes: list[int], vocab: int, seed: int = 0) -> dict:
    """{K: {tokens [b, K*t], mask [b, K*t]}} on the mesh."""
    rng = np.random.default_rng(seed)
    sh = batch_sharding(mesh)
    out = {}
    for k in [1] + patch_sizes:
        tokens = rng.integers(0, vocab, (b, k * t)).astype(np.int32)
        out[k] = {"tokens": jax.device_put(tokens, sh), "mask": jax.device_put(np.ones_like(tokens), sh)}
    return out


def measure(mesh, state, fns: dict, data: dict, steps: int, repeats: int, warmup: int = 2):
    """{K: [seconds per step, one per repeat]}: `experiments.harness.interleaved_times` over one
    train state that every configuration's step advances (async dispatch: each round blocks on it)."""
    held = {"state": state, "metrics": None}

    def step(k):
        def run():
            held["state"], held["metrics"] = fns[k](held["state"], data[k])
        return run

    with jax.set_mesh(mesh):
        return interleaved_times({k: step(k) for k in fns}, steps, repeats, warmup,
                                 sync=lambda _: jax.block_until_ready((held["state"], held["metrics"])))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo", help=f"model preset: {', '.join(MODEL_PRESETS)}")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default: the preset's)")
    p.add_argument("--seq-len", type=int, default=None, help="model positions T (default: the preset's)")
    p.add_argument("--patch-sizes", default="2,4,8")
    p.add_argument("--steps", type=int, default=5, help="steps per timed measurement")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--dtype", default=None, help="compute dtype override: float32 | bfloat16")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    base = RUN_PRESETS.get(args.model, Config())
    over = [] if args.model in RUN_PRESETS else [f"model={args.model}"]
    if args.batch:
        over.append(f"training.batch_size={args.batch}")
    if args.seq_len:
        over.append(f"data.seq_len={args.seq_len}")
    if args.dtype:
        over.append(f"model.dtype={args.dtype}")
    cfg = base.override(*over).validate()
    ks = [int(k) for k in args.patch_sizes.split(",")]
    b, t = cfg.training.batch_size, cfg.data.seq_len

    print(f"{args.model}: {count_params(cfg.model) / 1e6:.2f}M params, {cfg.model.dtype}; B={b}, T={t} positions; "
          f"device {jax.devices()[0].device_kind} ({jax.default_backend()}); {args.repeats} rounds x "
          f"{args.steps} steps", flush=True)
    mesh, state, fns = build(cfg, ks)
    data = batches(mesh, b, t, ks, cfg.model.vocab_size)
    times = measure(mesh, state, fns, data, args.steps, args.repeats)

    tok_min, tok_med = min_median(times[1])
    rows = []
    for k in [1] + ks:
        t_min, t_med = min_median(times[k])
        tokens = b * k * t
        rows.append({
            "level": "token" if k == 1 else "patch", "K": k, "tokens_step": tokens,
            "ms_min": 1e3 * t_min, "ms_med": 1e3 * t_med,
            "tps_min": tokens / t_min, "tps_med": tokens / t_med,
            "ratio_min": tok_min * k / t_min, "ratio_med": tok_med * k / t_med,
            "eff": tok_min / t_min,  # ratio / K
            "times_s": times[k],
        })
    print(markdown_table(rows, [
        ("level", "step", "s"), ("K", "K", "d"), ("tokens_step", "tokens/step", ","),
        ("ms_min", "ms/step min", ".1f"), ("ms_med", "ms/step median", ".1f"),
        ("tps_min", "tokens/s (min)", ",.0f"), ("tps_med", "tokens/s (median)", ",.0f"),
        ("ratio_min", "patch/token tok/s (min)", ".2f"), ("ratio_med", "(median)", ".2f"),
        ("eff", "ratio / K", ".0%"),
    ]))
    k4 = next((r for r in rows if r["K"] == 4), None)
    if k4:
        verdict = "meets" if k4["ratio_min"] >= 0.9 * 4 else "misses"
        print(f"K=4: {k4['ratio_min']:.2f}x token-level tokens/s (target >= 3.6x): {verdict} the target")
    if args.json:
        write_json(args.json, {"model": args.model, "batch": b, "seq_len": t, "device": jax.devices()[0].device_kind,
                               "rows": rows})


if __name__ == "__main__":
    main()
