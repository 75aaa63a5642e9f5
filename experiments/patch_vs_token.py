"""Patch-level training (K = 4, lambda = 2/3, half the compute) against token-level training.

Same model, same data, same held-out set, each run in its own workdir under --out:
  (a) token-level on the token budget D                         relative cost 1
  (b) patch level (K = 4) on 2/3 D, then token level on 1/3 D   relative cost 0.5
  (c) token-level on D/2                                        relative cost 0.5
`--extra` adds K in {2, 8} at lambda = 2/3, and lambda in {1/2, 4/5} at K = 4 (all on D).
Every run's learning-rate schedule spans its own budget (per stage, as the trainer does).

Prints a table (run, K, lambda, tokens, training FLOPs, relative cost, wall time, final held-out
bits/byte), writes it as results.md / results.json, and plots held-out bits/byte against training
FLOPs for all runs (bpb_vs_flops.png). A finished run whose config is unchanged is reused; --fresh
reruns everything.

    python -m experiments.patch_vs_token                                   # CPU, ~30 min on 2 cores
    python -m experiments.patch_vs_token --data ../shared/data/tinyshakespeare.txt
    python -m experiments.patch_vs_token --preset tpu --data tfds:... --out results/pvt_tpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from pcomp.config import Config
from experiments.harness import add_data_arg, markdown_table, pyplot, save_png, train_to_end, write_json

# Model / data / schedule per preset. `tokens` is the token budget D of the baseline (a).
PRESETS = {
    # ~1.9M-parameter byte model, sized from its measured CPU speed (~0.5 s per 2048-token step on 2
    # cores): (a) + (b) + (c) = 2560 steps, ~33 min measured on a shared 2-core machine. Held-out
    # evaluation every `eval_every` steps of each stage and at each stage's end.
    "cpu": dict(model="demo", seq_len=128, batch=16, tokens=2_621_440, lr=3e-3, warmup=50, eval_every=256,
                tokenizer="bytes", extra=()),
    # ~125M-parameter model for an accelerator (TPU / GPU): ~20 tokens per parameter.
    "tpu": dict(model="125m", seq_len=1024, batch=128, tokens=2_500_000_000, lr=6e-4, warmup=1000,
                eval_every=2000, tokenizer="sentencepiece", extra=("model.dtype=bfloat16", "data.vocab_size=32000",
                                                                 "data.eval_max_bytes=20000000")),
}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    patch_size: int
    patch_fraction: float
    budget_share: float  # token budget as a share of D


def runs(extra: bool) -> list[Run]:
    out = [Run("a_token_D", 1, 0.0, 1.0), Run("b_patch4_D", 4, 2 / 3, 1.0), Run("c_token_D2", 1, 0.0, 0.5)]
    if extra:
        out += [Run("patch2_D", 2, 2 / 3, 1.0), Run("patch8_D", 8, 2 / 3, 1.0),
                Run("patch4_lam0.5_D", 4, 0.5, 1.0), Run("patch4_lam0.8_D", 4, 0.8, 1.0)]
    return out


def run_config(preset: dict, run: Run, data: str, workdir: Path, overrides: list[str]) -> Config:
    return Config().override(
        f"model={preset['model']}", f"data.source={data}", f"data.tokenizer={preset['tokenizer']}",
        f"data.seq_len={preset['seq_len']}", f"training.batch_size={preset['batch']}",
        f"training.tokens={int(preset['tokens'] * run.budget_share)}", f"training.lr={preset['lr']}",
        f"training.warmup_steps={preset['warmup']}", f"training.eval_every={preset['eval_every']}",
        f"training.patch_size={run.patch_size}", f"training.patch_fraction={run.patch_fraction}",
        "training.checkpoint_every=1000000", "training.keep_checkpoints=1", "training.progress=false",
        f"training.workdir={workdir}", *preset["extra"], *overrides,
    ).validate()


def eval_curve(workdir: Path, stages: list[dict]) -> list[tuple[int, float, float]]:
    """[(step, training FLOPs so far, held-out bits/byte)] from metrics.jsonl, one per evaluated step."""
    offsets, per_step = [], []
    for i, s in enumerate(stages):
        offsets.append(sum(x["steps"] for x in stages[:i]))
        per_step.append(s["flops"] / s["steps"])

    def flops_at(step: int) -> float:
        return sum(f * min(max(step - o, 0), s["steps"]) for o, f, s in zip(offsets, per_step, stages))

    points = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/bits_per_byte" in row:
            points[row["step"]] = row["eval/bits_per_byte"]
    return [(step, flops_at(step), bpb) for step, bpb in sorted(points.items())]


def run_one(cfg: Config, run: Run, fresh: bool) -> dict:
    workdir = Path(cfg.training.workdir)
    result_file = workdir / "run_result.json"
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if result["config"]["training"] == cfg.to_dict()["training"] and result["config"]["data"] == cfg.to_dict()[
                "data"]:
            print(f"{run.name}: reusing the finished run in {workdir}", flush=True)
            return result
        raise SystemExit(f"{workdir} holds a finished run with another config; pass --fresh or another --out")
    print(f"\n=== {run.name}: K={run.patch_size}, lambda={run.patch_fraction:.3g}, "
          f"D={cfg.training.tokens:,} tokens ===", flush=True)
    t0 = time.perf_counter()
    trained = train_to_end(cfg)
    wall = time.perf_counter() - t0
    stages = trained.stages
    result = {
        "run": run.name, "K": run.patch_size, "lambda": run.patch_fraction if run.patch_size > 1 else None,
        "tokens": sum(s["tokens"] for s in stages), "flops": sum(s["flops"] for s in stages),
        "relative_cost": trained.summary["relative_cost"], "wall_s": wall, "steps": sum(s["steps"] for s in stages),
        "bpb": trained.eval["eval/bits_per_byte"], "eval_loss": trained.eval["eval/loss"],
        "stages": [{k: v for k, v in s.items()} for s in stages],
        "curve": eval_curve(workdir, stages), "config": json.loads(cfg.to_json()),
    }
    write_json(result_file, result)
    return result


def plot(results: list[dict], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    stage_ends = []
    for r in results:
        steps, xs, ys = zip(*r["curve"])
        label = f"{r['run']} (K={r['K']}" + (f", λ={r['lambda']:.2g}" if r["lambda"] is not None else "") + ")"
        line, = ax.plot(xs, ys, marker="o", ms=3, label=label)
        if len(r["stages"]) > 1 and r["stages"][0]["steps"] in steps:  # end of the patch-level stage
            i = steps.index(r["stages"][0]["steps"])
            ax.plot(xs[i], ys[i], marker="s", ms=7, mfc="none", color=line.get_color())
            stage_ends.append(ys[i])
        ax.annotate(f"{r['bpb']:.3f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("training FLOPs (model, analytic)")
    ax.set_ylabel("held-out bits / byte")
    ax.set_title(title + "\n(squares: end of the patch-level stage)", fontsize=10)
    # the first, high-loss evaluations are cut off; the final ones and the stage-1 ends stay in view
    low, high = min(r["bpb"] for r in results), max(r["bpb"] for r in results) + 0.6
    ax.set_ylim(low - 0.15, max([high] + [y + 0.1 for y in stage_ends]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


COLUMNS = [
    ("run", "run", "s"), ("K", "K", "d"), ("lambda", "lambda", ".3f"), ("tokens", "tokens seen", ","),
    ("steps", "steps", "d"), ("flops", "training FLOPs", ".3e"), ("cost_vs_a", "FLOPs vs (a)", ".3f"),
    ("relative_cost", "λ/K+1-λ", ".3f"), ("wall_s", "wall s", ".0f"),
    ("bpb", "held-out bits/byte", ".4f"),
]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arg(p)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", default="results/patch_vs_token")
    p.add_argument("--extra", action="store_true", help="also K in {2, 8} and lambda in {1/2, 4/5}")
    p.add_argument("--tokens", type=int, default=None, help="token budget D of the baseline (default: the preset's)")
    p.add_argument("--fresh", action="store_true", help="delete and rerun existing workdirs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run, e.g. training.lr=2e-3")
    args = p.parse_args(argv)
    preset, out = dict(PRESETS[args.preset]), Path(args.out)
    if args.tokens:
        preset["tokens"] = args.tokens

    results = []
    for run in runs(args.extra):
        cfg = run_config(preset, run, args.data, out / run.name, args.set)
        results.append(run_one(cfg, run, args.fresh))

    base = next(r for r in results if r["run"] == "a_token_D")
    for r in results:
        r["cost_vs_a"] = r["flops"] / base["flops"]
    table = markdown_table(results, COLUMNS)
    half = next(r for r in results if r["run"] == "c_token_D2")
    patch = next(r for r in results if r["run"] == "b_patch4_D")
    lines = [
        f"model {preset['model']}, data {args.data}, seq_len {preset['seq_len']}, batch {preset['batch']}, "
        f"D = {preset['tokens']:,} tokens, lr {preset['lr']}",
        "",
        table,
        "",
        f"(b) patch K=4 at {patch['relative_cost']:.2f}x cost vs (c) token D/2 at the same cost: "
        f"{patch['bpb'] - half['bpb']:+.4f} bits/byte ({'better' if patch['bpb'] < half['bpb'] else 'worse'})",
        f"(b) vs (a) token D at 1x cost: {patch['bpb'] - base['bpb']:+.4f} bits/byte "
        f"({'better' if patch['bpb'] < base['bpb'] else 'worse'})",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    write_json(out / "results.json", {"preset": args.preset, "data": args.data, "runs": results})
    png = plot(results, out / "bpb_vs_flops.png", f"patch vs token level: {preset['model']} on {Path(args.data).name}")
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {png}")


if __name__ == "__main__":
    main()
