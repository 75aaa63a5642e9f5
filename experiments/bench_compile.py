"""Compile time and per-device memory of the train step, per preset and per depth, without running it.

Every configuration is built from abstract state only (`TrainProgram.abstract_state`: shapes and
shardings, nothing materialized), lowered and compiled for one global batch on an fsdp mesh over all
devices (by default 8 simulated CPU devices), and measured: the seconds `lower` + `compile` took and
XLA's memory accounting of one device (`compiled.memory_analysis()`: arguments, outputs, temporaries;
"total" is their sum, "peak" counts outputs written into donated buffers once). Two sweeps:

- presets: the run presets (their model, batch, sequence length, dtype and remat), demo to 1b;
- depth: a fixed width (the 25m model's) at 4, 8, 16 and 32 layers, where the layer loop's compile
  time grew with depth and `nnx.scan`'s stays flat.

    python -m experiments.bench_compile                                  # both sweeps, 8 CPU devices
    python -m experiments.bench_compile --presets test-tiny --depths ""  # one tiny configuration
    python -m experiments.bench_compile --remat full --json out.json

The script lowers through `TrainProgram.lower_step` (the trainer's own path).
Compile times depend on the machine and on its load: time on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time


def _setup_devices(platform: str, devices: int) -> None:
    """Simulated host devices must be requested before jax is imported."""
    if platform == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()


def measure(cfg, label: str) -> dict:
    """Compile `cfg`'s first-stage train step on an fsdp mesh over all devices; seconds and bytes."""
    import jax

    from pcomp.config import MeshConfig
    from pcomp.models.sharding import make_mesh
    from pcomp.models.transformer import count_params
    from pcomp.train.step import build_program

    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1), model=cfg.model)
    tc, rows, seq = cfg.training, cfg.training.batch_size, cfg.data.seq_len
    start = time.perf_counter()
    program = build_program(cfg.model, tc, mesh, steps=max(tc.steps, 1))
    with jax.set_mesh(mesh):
        lowered = program.lower_step(rows, seq)
        lowered_s = time.perf_counter() - start
        compiled = lowered.compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    arg, out, temp, alias = (m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes,
                             m.alias_size_in_bytes) if m is not None else (0, 0, 0, 0)
    return {"config": label, "params": count_params(cfg.model), "layers": cfg.model.n_layers,
            "d_model": cfg.model.d_model, "batch": rows, "seq": seq, "dtype": cfg.model.dtype,
            "remat": getattr(cfg.model, "remat", None), "devices": mesh.size, "lower_s": lowered_s,
            "compile_s": seconds, "argument_bytes": arg, "output_bytes": out, "temp_bytes": temp,
            "alias_bytes": alias, "total_bytes": arg + out + temp, "peak_bytes": arg + out + temp - alias}


def _configs(presets: list[str], depths: list[int], width: str, remat: str | None, batch: int, seq: int):
    from pcomp.presets import MODEL_PRESETS, RUN_PRESETS

    def adjust(cfg, **model):
        if remat is not None:
            model["remat"] = remat
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))
        if batch:
            cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, batch_size=batch))
        if seq:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=seq))
        vocab = cfg.data.vocab_size if cfg.data.tokenizer == "sentencepiece" else 258
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))

    for name in presets:
        yield name, adjust(RUN_PRESETS[name])
    base = RUN_PRESETS[width] if width in RUN_PRESETS else None
    for n in depths:
        cfg = base or dataclasses.replace(RUN_PRESETS["demo"], model=MODEL_PRESETS[width])
        yield f"{width}-width x {n} layers", adjust(cfg, n_layers=n, name=f"{width}-L{n}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="demo,m1-3m,25m,125m,370m,1b", help="run presets, comma-separated")
    ap.add_argument("--depths", default="4,8,16,32", help="layer counts of the depth sweep (empty: none)")
    ap.add_argument("--width", default="25m", help="model preset whose width the depth sweep keeps")
    ap.add_argument("--remat", default=None, help="override model.remat everywhere (none, full, dots_saveable)")
    ap.add_argument("--batch", type=int, default=0, help="global batch (0: each preset's own)")
    ap.add_argument("--seq", type=int, default=0, help="sequence length (0: each preset's own)")
    ap.add_argument("--platform", default="cpu", help="cpu (simulated devices) or the default backend ('')")
    ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    _setup_devices(args.platform, args.devices)
    presets = [p for p in args.presets.split(",") if p]
    depths = [int(d) for d in args.depths.split(",") if d]
    rows = []
    header = (f"{'config':<26} {'params':>13} {'L':>3} {'batch x seq':>12} {'compile s':>9} "
              f"{'arg GiB':>8} {'out GiB':>8} {'temp GiB':>9} {'total GiB':>9} {'peak GiB':>9}")
    print(header)
    print("-" * len(header))
    for label, cfg in _configs(presets, depths, args.width, args.remat, args.batch, args.seq):
        r = measure(cfg, label)
        rows.append(r)
        print(f"{label:<26} {r['params']:>13,} {r['layers']:>3} {r['batch']:>5} x {r['seq']:<5}"
              f"{r['compile_s']:>9.1f} {_gib(r['argument_bytes']):>8} {_gib(r['output_bytes']):>8} "
              f"{_gib(r['temp_bytes']):>9} {_gib(r['total_bytes']):>9} {_gib(r['peak_bytes']):>9}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
