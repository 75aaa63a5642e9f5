"""What each CPU train-step change buys, measured in one process: the step before them, with the rotary
tables passed in, with the XLA:CPU options (`pcomp.train.step.CPU_TRAIN_OPTIONS`), and with both (pcomp
as it is). All variants are compiled first, then timed in interleaved, rotated rounds (median seconds per
step; `bench_vs_torch.measure`), so the machine's drift between runs, which on the shared 2-core VM is larger than the effects
measured here, falls on all of them alike. Also prints each variant's first-step loss (they must agree
to float reassociation).

    python -m experiments.bench_cpu_step                                   # demo, m1-3m; K = 1
    python -m experiments.bench_cpu_step --sizes 25m --rounds 4 --patch-size 4
"""

from __future__ import annotations

import argparse

from experiments.harness import measure

VARIANTS = {  # name: (XLA:CPU options, rotary tables as an input)
    "before": (False, False),
    "rope tables": (False, True),
    "cpu options": (True, False),
    "both (pcomp)": (True, True),
}


def variant_steps(size: str, patch_size: int, batch: int, seq_len: int) -> dict:
    """{variant: zero-argument callable running one train step, returning its metrics}."""
    import jax
    import numpy as np

    from pcomp.config import Config, MeshConfig
    from pcomp.models.sharding import make_mesh
    from pcomp.presets import MODEL_PRESETS
    from pcomp.train.step import build_program

    model = MODEL_PRESETS[size]
    cfg = Config(model=model).override("model.vocab_size=258", "model.dtype=float32", "model.param_dtype=float32",
                                       f"model.max_seq_len={max(model.max_seq_len, seq_len)}", "training.grad_accum=1")
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    tokens = np.random.default_rng(0).integers(0, 258, (batch, patch_size * seq_len), np.int32)
    runs = {}
    for name, (options, tables) in VARIANTS.items():
        program = build_program(cfg.model, cfg.training, mesh, steps=1000, patch_size=patch_size, cpu_options=options)
        with jax.set_mesh(mesh):
            holder = {"state": program.init(None)}
            consts = program.step_constants if tables else {**program.step_constants, "rope": None}
            data = jax.device_put({"tokens": tokens, "mask": np.ones_like(tokens)}, program.batch_sharding)

        def run(program=program, holder=holder, consts=consts, data=data):
            with jax.set_mesh(mesh):
                holder["state"], metrics = program.train_step_jit(holder["state"], data, consts)
                return jax.device_get(metrics)

        runs[name] = run
    return runs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="demo,m1-3m")
    p.add_argument("--patch-size", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="steps per timed round")
    args = p.parse_args(argv)
    print(f"| size | K | {' | '.join(f'{n} ms' for n in VARIANTS)} | {' | '.join(f'{n} / before' for n in list(VARIANTS)[1:])} |")
    print("|---|---|" + "---|" * (2 * len(VARIANTS) - 1))
    for size in args.sizes.split(","):
        runs = variant_steps(size, args.patch_size, args.batch, args.seq_len)
        losses = {n: float(run()["loss"]) for n, run in runs.items()}  # compiles each variant
        ms = {n: 1000 * sec for n, sec in measure(runs, args.steps, args.rounds, warmup=1).items()}
        names = list(runs)
        print(f"| {size} | {args.patch_size} | " + " | ".join(f"{ms[n]:.0f}" for n in names) + " | "
              + " | ".join(f"{ms[n] / ms['before']:.3f}" for n in names[1:]) + " |", flush=True)
        spread = max(losses.values()) - min(losses.values())
        print(f"  first-step losses {', '.join(f'{n} {v:.6f}' for n, v in losses.items())} (spread {spread:.1e})",
              flush=True)


if __name__ == "__main__":
    main()
