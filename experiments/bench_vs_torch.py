"""Train-step tokens/s of pcomp against the reference users would pick: transformers + torch.

The reference is `transformers.LlamaForCausalLM` (the same architecture and config, built from
`pcomp.hf.hf_config_dict`) trained with `torch.optim.AdamW` (same betas, weight decay on matrices,
global-norm clipping), in float32, eagerly and under `torch.compile`, with the same batch, sequence
length and thread count. Besides the token-level step it times a K-patch step the way the official
patch-level code (github.com/shaochenze/PatchTrain, modeling_llama.py) does it: the mean of the
reshaped input embeddings, then the K next-patch targets scored against ONE log-softmax per patch.
pcomp runs its public train step (`pcomp.train.step`) on one device; K = 1 is its token step.

Threads: `--threads N` pins this process to N cores (sched_setaffinity, which XLA's thread pool and
torch both respect) and sets torch.set_num_threads(N). Steps are warmed up (compilation excluded),
then timed in interleaved rounds; the median seconds per step is reported. Idle XLA/OpenMP pools
can spin between another framework's steps; `--frameworks pcomp` and `--frameworks torch,torch.compile`
in two processes measure each alone. Time only on an otherwise idle machine: torch's OpenMP pool
busy-waits, and on oversubscribed cores (another job running) its eager step slows by more than an
order of magnitude at 2 threads, while a 1-thread run does not.

    python experiments/bench_vs_torch.py                                   # demo .. 125m, K = 1 and 4
    python experiments/bench_vs_torch.py --sizes demo --steps 2 --repeats 1 --warmup 1 --batch 2 --seq-len 64
    python experiments/bench_vs_torch.py --device cuda                     # GPU: torch on CUDA, JAX default
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


SIZES = ("demo", "m1-3m", "25m", "125m")  # ~1.7M, ~3.3M, ~26M, ~86M parameters with the byte vocabulary


def pin_threads(n: int) -> None:
    """Restrict this process (and so XLA's and torch's thread pools) to the first n allowed cores."""
    if n and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:n]
        os.sched_setaffinity(0, cores)


# --- pcomp ---------------------------------------------------------------------------------------
def pcomp_step(cfg, patch_size: int, batch: int, seq_len: int):
    """A zero-argument callable running one pcomp train step (the public `pcomp.train.step` API) and
    blocking until it is done; all of pcomp's training API this script uses is in this function."""
    import jax
    import numpy as np

    from pcomp.config import MeshConfig
    from pcomp.models.sharding import batch_sharding, make_mesh
    from pcomp.train.step import build_program

    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    program = build_program(cfg.model, cfg.override("training.grad_accum=1").training, mesh, steps=1000,
                            patch_size=patch_size)
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (batch, patch_size * seq_len), np.int32)
    with jax.set_mesh(mesh):
        holder = {"state": program.init(None)}
        fn = program.step
        data = {"tokens": jax.device_put(tokens, batch_sharding(mesh)),
                "mask": jax.device_put(np.ones_like(tokens), batch_sharding(mesh))}

    def run() -> None:
        with jax.set_mesh(mesh):
            holder["state"], metrics = fn(holder["state"], data)
            jax.block_until_ready(metrics)

    return run


# --- transformers + torch ------------------------------------------------------------------------
def torch_step(cfg, patch_size: int, batch: int, seq_len: int, *, compile: bool, device: str):
    """The reference step: LlamaForCausalLM + AdamW, token-level (K = 1) or PatchTrain's K-patch loss."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from pcomp.hf import hf_config_dict

    kw = hf_config_dict(cfg.model)
    kw.update(dtype="float32", bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**kw)).to(device).train()
    tc = cfg.training
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(tc.b1, tc.b2))
    k, v = patch_size, cfg.model.vocab_size
    ids = torch.randint(0, v, (batch, k * seq_len), device=device)

    def loss_fn(ids_bt):
        if k == 1:
            return model(input_ids=ids_bt, labels=ids_bt).loss
        b, t = ids_bt.shape
        embeds = model.model.embed_tokens(ids_bt)
        embeds = embeds.view(b, t // k, k, -1).mean(2)  # PatchTrain: mean of the K embeddings of a patch
        hidden = model.model(inputs_embeds=embeds).last_hidden_state
        logits = model.lm_head(hidden).float()
        log_probs = F.log_softmax(logits[:, :-1].reshape(-1, v), dim=1)  # one log-softmax per patch
        labels = ids_bt[:, k:].reshape(-1, k)
        return sum(F.nll_loss(log_probs, labels[:, i]) for i in range(k)) / k

    fwd = torch.compile(loss_fn) if compile else loss_fn

    def run() -> None:
        loss = fwd(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run


# --- measurement ---------------------------------------------------------------------------------
def measure(runs: dict, steps: int, repeats: int, warmup: int) -> dict:
    """{name: median seconds per step}; each callable warmed up, then rounds interleaved and rotated."""
    names = [n for n, fn in runs.items() if fn is not None]
    for n in names:
        for _ in range(warmup):
            runs[n]()
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(steps):
                runs[n]()
            times[n].append((time.perf_counter() - t0) / steps)
    return {n: statistics.median(t) for n, t in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="model presets, comma-separated")
    p.add_argument("--vocab", type=int, default=258, help="vocabulary (258 = pcomp's byte tokenizer)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256, help="model positions T (a K-patch step reads K*T tokens)")
    p.add_argument("--patch-size", type=int, default=4, help="K of the patch-level step (0 = token level only)")
    p.add_argument("--threads", type=int, default=0, help="pin to this many cores (0 = all)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--frameworks", default="pcomp,torch,torch.compile",
                   help="which steps to time (ratios need pcomp and a torch variant)")
    p.add_argument("--device", default="cpu", help="torch device (cpu | cuda); JAX uses its default backend")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    pin_threads(args.threads)

    import jax
    import torch

    from pcomp.config import MODEL_PRESETS, Config
    from pcomp.models.transformer import count_params
    from pcomp.report import markdown_table, write_json

    frameworks = set(args.frameworks.split(","))
    unknown = frameworks - {"pcomp", "torch", "torch.compile"}
    if unknown:
        p.error(f"--frameworks: unknown {sorted(unknown)}; expected pcomp, torch, torch.compile")
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    levels = [1] + ([args.patch_size] if args.patch_size > 1 else [])
    print(f"batch {args.batch}, T={args.seq_len} positions, float32, {threads} threads; JAX "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}), torch {torch.__version__} on {args.device}",
          flush=True)
    rows = []
    for size in args.sizes.split(","):
        model = MODEL_PRESETS[size]
        cfg = Config(model=model).override(f"model.vocab_size={args.vocab}", "model.dtype=float32",
                                           "model.param_dtype=float32",
                                           f"model.max_seq_len={max(model.max_seq_len, args.seq_len)}")
        for k in levels:
            runs = {}
            if "pcomp" in frameworks:
                runs["pcomp"] = pcomp_step(cfg, k, args.batch, args.seq_len)
            if "torch" in frameworks:
                runs["torch"] = torch_step(cfg, k, args.batch, args.seq_len, compile=False, device=args.device)
            if "torch.compile" in frameworks:
                try:
                    runs["torch.compile"] = torch_step(cfg, k, args.batch, args.seq_len, compile=True,
                                                       device=args.device)
                    runs["torch.compile"]()  # compile now, so a failure is reported, not raised mid-timing
                except Exception as e:  # noqa: BLE001  (inductor needs a C++ toolchain; say so and go on)
                    print(f"{size} K={k}: torch.compile failed ({type(e).__name__}: {e}); skipped", flush=True)
                    runs["torch.compile"] = None
            secs = measure(runs, args.steps, args.repeats, args.warmup)
            tokens = args.batch * k * args.seq_len
            row = {"size": size, "params_m": count_params(cfg.model) / 1e6, "K": k, "tokens_step": tokens}
            for name, s in secs.items():
                row[f"{name}_tps"] = tokens / s
            for ref, key in (("torch", "ratio_eager"), ("torch.compile", "ratio_compile")):
                if "pcomp_tps" in row and f"{ref}_tps" in row:
                    row[key] = row["pcomp_tps"] / row[f"{ref}_tps"]
            rows.append(row)
            print(f"{size} K={k}: " + ", ".join(f"{n} {tokens / s:,.0f} tok/s" for n, s in secs.items())
                  + "".join(f"; pcomp x{row[key]:.2f} vs {ref}" for ref, key in
                            (("torch eager", "ratio_eager"), ("torch.compile", "ratio_compile")) if key in row),
                  flush=True)
    print(markdown_table(rows, [
        ("size", "size", "s"), ("params_m", "params (M)", ".1f"), ("K", "K", "d"), ("tokens_step", "tokens/step", ","),
        ("pcomp_tps", "pcomp tok/s", ",.0f"), ("torch_tps", "torch eager tok/s", ",.0f"),
        ("torch.compile_tps", "torch.compile tok/s", ",.0f"),
        ("ratio_eager", "pcomp / eager", ".2f"), ("ratio_compile", "pcomp / compile", ".2f"),
    ]))
    ratios = [r[key] for r in rows for key in ("ratio_eager", "ratio_compile") if key in r]
    if ratios:
        print(f"lowest pcomp / PyTorch ratio: {min(ratios):.2f} (goal >= 1.5 at every size)")
    if args.json:
        write_json(args.json, {"args": vars(args), "threads": threads, "rows": rows})


if __name__ == "__main__":
    main()
