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

    python -m experiments.bench_vs_torch                                   # demo .. 125m, K = 1 and 4
    python -m experiments.bench_vs_torch --sizes demo --steps 2 --repeats 1 --warmup 1 --batch 2 --seq-len 64
    python -m experiments.bench_vs_torch --device cuda                     # GPU: torch on CUDA, JAX default
    python -m experiments.bench_vs_torch --sizes demo --threads 1 --profile /tmp/prof   # + where the time goes

`--profile DIR` then traces `--profile-steps` more steps of each framework (jax.profiler; torch.profiler,
with inductor's C++ kernels named) into DIR/SIZE_KK/ and prints, per (size, K), milliseconds per step in
matmul (weights' dots and their gradients), attention, softmax/cross-entropy, norm/rope/elementwise,
optimizer (clipping and AdamW) and other/overhead (ops without a category plus the profiled wall time no
op covers). A pcomp op is an XLA op of the step's trace (a fusion counts as a dot if it contains one),
assigned by the Python function its HLO metadata names (DIR/SIZE_KK/pcomp_step.hlo.txt); a torch op
by its name and enclosing optimizer / clip region, self time only. Profiling slows both; compare shares.
"""

from __future__ import annotations

import argparse
import os
import re
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

    def hlo_text() -> str:
        with jax.set_mesh(mesh):
            return fn.lower(holder["state"], data).compile().as_text()

    run.hlo_text = hlo_text  # the optimized HLO of the step, for --profile
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
        with torch.profiler.record_function("clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run


# --- profiling: where each framework's step time goes ---------------------------------------------
CATEGORIES = ("matmul", "attention", "softmax/CE", "norm/rope/elementwise", "optimizer", "other/overhead")
_CONTROL_FLOW = {"while", "call", "conditional", "tuple", "get-tuple-element", "parameter", "constant", "bitcast"}
_DOTS = ("dot", "convolution")
_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_HLO_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _hlo_opcode(rhs: str) -> str:
    """The opcode of an HLO instruction's right-hand side `TYPE opcode(...)`, TYPE maybe a tuple."""
    i = 0
    if rhs.startswith("("):  # tuple type: skip the balanced parentheses
        depth = 0
        for i, ch in enumerate(rhs):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        i += 1
    else:
        i = rhs.find(" ")
    m = re.match(r"\s*([a-z][\w\-]*)\(", rhs[i:])
    return m.group(1) if m else ""


def parse_hlo(text: str) -> tuple[dict, dict]:
    """Optimized HLO module text (`Compiled.as_text()`) -> ({instruction: (opcodes, frame ids, frame ids
    of its dots)}, {stack frame id: (file, function)}), each instruction expanded with the computations
    it calls (a fusion's body); frames from the module's FileNames / FunctionNames / FileLocations /
    StackFrames tables (the innermost Python frame each op came from)."""
    tables: dict[str, dict[int, str]] = {}
    instrs: dict[str, tuple[str, set, list]] = {}
    section = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            tables[section] = {}
            continue
        if section:
            m = re.match(r"^(\d+) (.*)$", line)
            if m:
                tables[section][int(m.group(1))] = m.group(2)
                continue
            section = None
        m = _HLO_INSTR.match(line)
        if not m or _HLO_COMPUTATION.match(line):
            continue
        name, rhs = m.groups()
        frames = {int(f) for f in re.findall(r"stack_frame_id=(\d+)", rhs)}
        called = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", rhs)
        instrs[name] = (_hlo_opcode(rhs), frames, called)
    # computations: the instructions between a computation header and its closing brace
    computations: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        h = _HLO_COMPUTATION.match(line)
        if h and "=" not in line.split("(")[0]:
            current = h.group(1)
            computations[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            m = _HLO_INSTR.match(line)
            if m:
                computations[current].append(m.group(1))
    files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in tables.get("FunctionNames", {}).items()}
    locs = {}
    for k, v in tables.get("FileLocations", {}).items():
        f = re.search(r"file_name_id=(\d+)", v)
        g = re.search(r"function_name_id=(\d+)", v)
        locs[k] = (files.get(int(f.group(1)), "") if f else "", funcs.get(int(g.group(1)), "") if g else "")
    frames = {}
    for k, v in tables.get("StackFrames", {}).items():
        loc = re.search(r"file_location_id=(\d+)", v)
        frames[k] = locs.get(int(loc.group(1)), ("", "")) if loc else ("", "")
    # expand every instruction with the opcodes and frames of the computations it calls (fusions)
    expanded = {}
    for name, (op, fr, called) in instrs.items():
        ops, frs, todo, seen = [op], set(fr), list(called), set()
        dot_frs = set(fr) if op in _DOTS else set()
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            for sub in computations.get(c, ()):
                sop, sfr, scalled = instrs[sub]
                ops.append(sop)
                frs |= sfr
                dot_frs |= sfr if sop in _DOTS else set()
                todo += scalled
        expanded[name] = (ops, frs, dot_frs)
    return expanded, frames


def frame_category(file: str, function: str) -> str:
    """Category of the innermost Python frame an XLA op came from."""
    fn = function.rsplit(".", 1)[-1].lower()  # the function itself: `Attention._qkv` is no attention kernel
    if "/optax/" in file or function.startswith("train_step") and "accumulate" not in function:
        return "optimizer"
    if "attention" in fn:
        return "attention"
    if any(w in fn for w in ("nll", "loss", "logsumexp", "softmax", "cross_entropy", "objective")):
        return "softmax/CE"
    if "/pcomp/" in file:
        return "norm/rope/elementwise"
    return "other/overhead"


def xla_op_category(ops: list[str], frame_ids: set, dot_frame_ids: set, frames: dict) -> str:
    """Category of one executed XLA op (a fusion counts by what it contains): ops with a dot are
    attention when a dot comes from an attention function, else matmul; the rest by their frames'
    majority (ops without a frame, copies and control flow are other/overhead)."""
    if any(o in _DOTS for o in ops):
        dot_cats = {frame_category(*frames.get(f, ("", ""))) for f in dot_frame_ids}
        return "attention" if "attention" in dot_cats else "matmul"
    cats = [frame_category(*frames.get(f, ("", ""))) for f in sorted(frame_ids)]
    votes = [c for c in cats if c != "other/overhead"]
    return max(sorted(set(votes)), key=votes.count) if votes else "other/overhead"


def jax_breakdown(trace_events: list, hlo_text: str, steps: int) -> dict:
    """{category: seconds per step} from a jax.profiler trace (trace.json events: one 'X' event per
    executed op, with args hlo_module / hlo_op) of `steps` runs of the module in `hlo_text`."""
    module = re.match(r"HloModule ([\w.\-]+)", hlo_text).group(1)
    ops, frames = parse_hlo(hlo_text)
    out = dict.fromkeys(CATEGORIES, 0.0)
    for e in trace_events:
        args = e.get("args") or {}
        if e.get("ph") != "X" or args.get("hlo_module") != module or "hlo_op" not in args:
            continue
        op_list, frs, dot_frs = ops.get(args["hlo_op"], (["?"], set(), set()))
        if op_list[0] in _CONTROL_FLOW:
            continue  # a while/call thunk's time is that of the ops it runs, which are events too
        out[xla_op_category(op_list, frs, dot_frs, frames)] += e["dur"] * 1e-6 / steps
    return out


_TORCH_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::dot", "aten::_mkl_linear"}


def torch_op_category(name: str, ancestors: list[str]) -> str:
    """Category of a torch profiler event's self time, by its name and its enclosing events'."""
    if any(a.startswith(("Optimizer.", "optimizer.", "clip_grad_norm")) for a in ancestors + [name]):
        return "optimizer"
    n = name.lower()
    if "attention" in n or "scaled_dot_product" in n or "flash" in n:
        return "attention"
    if name in _TORCH_MATMUL:
        return "matmul"
    if any(w in n for w in ("softmax", "nll_loss", "cross_entropy")):
        return "softmax/CE"
    if name.startswith("aten::") or "cpp_fused" in n or "kernel" in n:
        return "norm/rope/elementwise"
    return "other/overhead"


def torch_breakdown(events, steps: int) -> dict:
    """{category: seconds per step} from torch.profiler FunctionEvents (self CPU time of each)."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        ancestors, p = [], e.cpu_parent
        while p is not None:
            ancestors.append(p.name)
            p = p.cpu_parent
        out[torch_op_category(e.name, ancestors)] += e.self_cpu_time_total * 1e-6 / steps
    return out


def profile_pcomp(run, trace_dir: str, steps: int) -> tuple[dict, float]:
    """Breakdown and profiled wall seconds per step of `steps` pcomp steps traced into trace_dir."""
    import glob
    import gzip
    import json

    import jax

    hlo_text = run.hlo_text()
    with open(os.path.join(trace_dir, "pcomp_step.hlo.txt"), "w") as f:  # the op names the trace refers to
        f.write(hlo_text)
    before = set(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    with jax.profiler.trace(trace_dir):
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        wall = (time.perf_counter() - t0) / steps
    (path,) = set(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)) - before
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    return jax_breakdown(events, hlo_text, steps), wall


def profile_torch(run, trace_dir: str, name: str, steps: int) -> tuple[dict, float]:
    """Breakdown and profiled wall seconds per step of `steps` torch steps; a Chrome trace in trace_dir."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        wall = (time.perf_counter() - t0) / steps
    prof.export_chrome_trace(os.path.join(trace_dir, f"{name}.json"))
    return torch_breakdown(prof.events(), steps), wall


def breakdown_table(parts: dict) -> str:
    """Markdown: ms per step by category (rows) for each framework (columns); 'other/overhead' takes
    the profiled wall time not attributed to an op; the last row is the profiled wall time."""
    names = list(parts)
    lines = ["| category | " + " | ".join(f"{n} ms (%)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for c in CATEGORIES:
        cells = []
        for n in names:
            cat, wall = parts[n]
            v = cat[c] + (max(wall - sum(cat.values()), 0.0) if c == "other/overhead" else 0.0)
            cells.append(f"{v * 1e3:.1f} ({100 * v / wall:.0f}%)")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| wall (profiled) | " + " | ".join(f"{parts[n][1] * 1e3:.1f}" for n in names) + " |")
    return "\n".join(lines)


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
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also trace --profile-steps steps of each framework into DIR and print where the time goes")
    p.add_argument("--profile-steps", type=int, default=3)
    args = p.parse_args(argv)
    pin_threads(args.threads)

    import jax
    import torch

    from pcomp.config import Config
    from pcomp.presets import MODEL_PRESETS
    from pcomp.models.transformer import count_params
    from experiments.harness import markdown_table, measure, write_json

    frameworks = set(args.frameworks.split(","))
    unknown = frameworks - {"pcomp", "torch", "torch.compile"}
    if unknown:
        p.error(f"--frameworks: unknown {sorted(unknown)}; expected pcomp, torch, torch.compile")
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    if args.profile:  # name each inductor C++ kernel in the torch profile (else all fused code is one event)
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
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
            if args.profile:
                trace_dir = os.path.join(args.profile, f"{size}_K{k}")
                os.makedirs(trace_dir, exist_ok=True)
                parts = {}
                for name, fn in runs.items():
                    if fn is None:
                        continue
                    if name == "pcomp":
                        parts[name] = profile_pcomp(fn, trace_dir, args.profile_steps)
                    else:
                        parts[name] = profile_torch(fn, trace_dir, name, args.profile_steps)
                print(f"\n{size} K={k}: time per step by category (traces in {trace_dir})\n"
                      + breakdown_table(parts) + "\n", flush=True)
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
