"""The reference M1 (issue #23): a byte-level LM with BOS first and a 512-byte context, trained on the
unique corpus's training split (`experiments.patch_scaling`'s corpus: Debian's kernel and Python
documentation, 33 MB; built on first use), scored on its held-out split (first 200 KB, as the patch
study scores).

Two steps, one command each:

    python -m experiments.reference_m1 --compare 6     # each candidate size for 6 minutes of CPU
    python -m experiments.reference_m1 --train m1-1m --tokens 300000000   # the chosen one, resumable

`--compare M` first times a few steps of every candidate (compiled first), then trains each for the
steps that take M minutes at that speed, with the same schedule shape (5% warm-up, cosine to lr/10),
the same data order and held-out evaluation at every quarter; so the sizes compare at equal CPU time
(stop other work while it runs). Its table (held-out bits/byte at each quarter: which size still
improves fastest) goes to results/reference_m1/compare.md and a RESULTS.md section.
`--train` is `harness.train_m1`: SIGTERM / Ctrl-C checkpoint and stop, the same command continues
the run bit for bit, a finished run is reused. The checkpoint is not committed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from experiments.harness import markdown_table, train_m1, write_json, write_section
from experiments.patch_scaling import eval_curve
from experiments.unique_corpus import ensure_corpus
from pcomp.config import Config
from pcomp.models.transformer import count_params

# (name, model overrides, lr): the candidates, all 4 heads, RoPE positions, bytes + BOS/EOS vocabulary
CANDIDATES = {
    "m1-500k": (("model.d_model=96", "model.n_layers=4", "model.d_ff=256", "model.scan_unroll=4"), 3e-3),
    "m1-1m": (("model.d_model=128", "model.n_layers=4", "model.d_ff=512", "model.scan_unroll=4"), 3e-3),
    "m1-3m": ((), 2e-3),  # the preset: the Equal-Info paper's M1 shape (d 256, 3 layers, MLP 1024)
}
CONTEXT = 512  # bytes M1 sees (data.seq_len); the coder's context block is one less (BOS first)
BATCH = 16  # x 512 = 8,192 bytes a step, as m1-3m's preset (64 x 128)
EVAL_BYTES = 200_000
PROBE_STEPS = 12


def overrides(name: str, corpus: dict, steps: int, evals: int = 4) -> list[str]:
    """The `key=value` overrides of preset m1-3m that make candidate `name` (`harness.train_m1`
    adds bytes, BOS first and the work directory)."""
    model, lr = CANDIDATES[name]
    return [f"model.name={name}", *model, f"model.max_seq_len={CONTEXT}", f"data.seq_len={CONTEXT}",
            f"data.source={corpus['path']}",
            f"data.eval_fraction={corpus['eval_fraction']!r}", f"data.eval_max_bytes={EVAL_BYTES}",
            f"training.batch_size={BATCH}", f"training.steps={steps}", f"training.lr={lr}",
            f"training.warmup_steps={max(1, steps // 20)}", f"training.eval_every={max(1, steps // evals)}",
            "training.log_every=1" if steps <= PROBE_STEPS else "training.log_every=20",
            "training.checkpoint_every=200", "training.keep_checkpoints=1"]


def seconds_per_step(name: str, corpus: dict) -> float:
    """Median seconds of a training step of candidate `name` (compiled first), from a short run."""
    with tempfile.TemporaryDirectory(prefix=f"probe-{name}-") as tmp:
        train_m1(Path(tmp) / "run", *overrides(name, corpus, PROBE_STEPS, evals=1))
        rows = [json.loads(r) for r in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    times = [r["perf/step_time_s"] for r in rows if "perf/step_time_s" in r][2:]  # past the first steps
    return statistics.median(times)


def n_params(workdir: Path) -> int:
    """Parameters of the run's model, embeddings included."""
    return count_params(Config.load(str(workdir / "config.json")).model)


def compare(minutes: float, names: list[str], corpus: dict, workdirs: Path, out: Path, results_md: str) -> None:
    speeds = {n: seconds_per_step(n, corpus) for n in names}
    rows = []
    for name in names:
        steps = max(PROBE_STEPS, int(minutes * 60 / speeds[name]))
        workdir = train_m1(workdirs / f"{name}-{minutes:g}min", *overrides(name, corpus, steps))
        points = eval_curve(workdir)
        rows.append({"name": name, "params": n_params(workdir), "s_per_step": speeds[name], "steps": steps,
                     "bytes": steps * BATCH * CONTEXT, "curve": points, "final": points[-1][1],
                     **{f"q{i + 1}": bpb for i, (_, bpb) in enumerate(points[-4:])}})
        print(f"{name}: {steps} steps, held-out {points[-1][1]:.4f} bits/byte", flush=True)
    cols = [("name", "M1", "s"), ("params", "parameters", ","), ("s_per_step", "s/step", ".3f"),
            ("steps", "steps", ","), ("bytes", "bytes seen", ","),
            *((f"q{i}", f"held-out at {i}/4", ".4f") for i in range(1, 5))]
    text = (f"Each candidate trained for {minutes:g} minutes of CPU (steps = minutes / the measured s/step), "
            f"context {CONTEXT} bytes, batch {BATCH}, BOS first, on `{corpus['path']}` (train split); "
            f"held-out bits/byte on the first {EVAL_BYTES:,} bytes of its held-out split at each quarter of "
            f"the run (the schedule anneals to the last one).\n\n{markdown_table(rows, cols)}\n\n"
            f"Command: `python -m experiments.reference_m1 --compare {minutes:g} --models {','.join(names)}`")
    write_json(out / "compare.json", {"minutes": minutes, "corpus": corpus, "rows": rows})
    (out / "compare.md").write_text(text + "\n")
    print(text)
    if results_md:
        write_section(results_md, "reference-m1-compare", text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", type=float, default=0, metavar="MINUTES",
                   help="train every candidate for this many minutes of CPU and compare held-out bits/byte")
    p.add_argument("--models", default=",".join(CANDIDATES), help=f"candidates (of {', '.join(CANDIDATES)})")
    p.add_argument("--train", default="", metavar="NAME", help="train this candidate to --tokens (resumable)")
    p.add_argument("--tokens", type=int, default=300_000_000, help="bytes the --train run reads")
    p.add_argument("--corpus", default="runs/patch_scaling/corpus/docs.jsonl")
    p.add_argument("--workdirs", default="runs/reference_m1")
    p.add_argument("--out", default="results/reference_m1")
    p.add_argument("--results-md", default="", help="also write the comparison into this RESULTS.md section")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    for n in names + ([args.train] if args.train else []):
        if n not in CANDIDATES:
            raise SystemExit(f"reference_m1: unknown candidate {n!r}: expected one of {', '.join(CANDIDATES)}")
    if not args.compare and not args.train:
        raise SystemExit("reference_m1: pass --compare MINUTES or --train NAME")
    corpus = ensure_corpus(Path(args.corpus))
    workdirs, out = Path(args.workdirs), Path(args.out)
    if args.compare:
        compare(args.compare, names, corpus, workdirs, out, args.results_md)
    if args.train:
        steps = -(-args.tokens // (BATCH * CONTEXT))
        workdir = train_m1(workdirs / args.train, *overrides(args.train, corpus, steps, evals=20))
        print(f"reference M1 {workdir}: held-out {eval_curve(workdir)[-1][1]:.4f} bits/byte")


if __name__ == "__main__":
    main()
