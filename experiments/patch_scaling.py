"""Patch-level against token-level training across data budgets D/N (tokens per parameter).

Issue #12. For each model size and each D/N, three runs on the same held-out set:
  (a) token level on D tokens                                   compute 1
  (b) K = 4 patch level on 2/3 D, then token level on 1/3 D     compute 0.5
  (c) token level on D/2                                        compute 0.5
in two series:
  * unique: a corpus of real English large enough that no token is read twice (Debian's
    linux-doc-6.1 and python3.11-doc reStructuredText sources, ~35 MB; the paper's Table 4 claim);
  * epochs: the ~1 MB embedded corpus read for many epochs (the paper's multi-epoch Table 2). With
    N epochs, stage 1 reads N*lambda epochs' worth of blocks and stage 2 the next N*(1-lambda): see
    docs/design.md "Patch-level training" for exactly what stage 2 reads.
N counts all parameters, embeddings included (the paper's "370M" is its total count). The learning
rate is chosen per model on the token baseline (a) at D/N = 10 of the unique series. Then: 3 seeds
of (b) and of each arm within 0.03 bits/byte of it ((a) and/or (c)); K in {2, 8} and lambda in
{1/2, 4/5} at the D/N where (b) - (a) is lowest; the stage-2 warm-up fraction at 0 (old rule) and
0.1 there too.

Every run has its own work directory (--workdirs/NAME, outside git; a long run resumes from its
checkpoint) and, when finished, a compact JSON (--out/runs/NAME.json, committed). Rerunning skips
runs whose JSON exists, so the sweep spans sittings and machines. `--report` rebuilds the tables
and the PNG from those JSONs only (no training).

    python -m experiments.patch_scaling --build-corpus      # needs the two Debian packages (see below)
    nice -n 19 python -m experiments.patch_scaling          # the CPU sweep, in priority order
    python -m experiments.patch_scaling --plan              # what would run next, projected times
    nice -n 19 python -m experiments.patch_scaling --models ps-30k   # one size's runs only (lr, main, seeds)
    python -m experiments.patch_scaling --report            # tables + PNG + RESULTS.md section
    python -m experiments.patch_scaling --preset tpu --print-commands   # tpu_scripts/tpu.sh lines
    python -m experiments.patch_scaling --preset smoke --out /tmp/ps --workdirs /tmp/ps_runs  # minutes: the whole flow
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Iterable, Sequence

from experiments.harness import markdown_table, pyplot, save_png, train_to_end, write_json, write_section
from experiments.unique_corpus import ensure_corpus
from pcomp.config import Config
from pcomp.data.sources import load_documents
from pcomp.errors import DataError
from pcomp.models.transformer import count_params
from pcomp.patching import plan_stages, relative_cost

# --- the study's plan ----------------------------------------------------------------------------
PRESETS = {
    # bytes vocabulary; 32 x 128 tokens per step; held-out: the first 200 KB of each series' eval split.
    "cpu": dict(models=("ps-30k", "ps-100k", "ps-500k"), seq_len=128, batch=32, tokenizer="bytes", extra=(),
                lrs=(1e-3, 3e-3, 1e-2), lr_dn=10, dns=(10, 30, 100, 300), late_dns=(1000,),
                series=("unique", "epochs"), epochs_source="embedded", eval_max_bytes=200_000, evals=6,
                # Per-model D/N and series where they differ from `dns` / `series` (issue #24): ps-30k is
                # the only size whose D/N = 1000 fits the unique corpus; D/N 60, about the largest
                # ps-500k reaches there (~64), is run at every size for the gap against model size.
                model_dns={"ps-30k": (10, 30, 60, 100, 300, 1000), "ps-100k": (10, 30, 60, 100, 300),
                           "ps-500k": (10, 30, 60, 100, 300)},
                model_series={"ps-30k": ("unique",)},
                # ps-30k's held-out bits/byte still fell from lr 3e-3 to 1e-2 (6.14, 4.71, 3.77 at 1e-3, 3e-3,
                # 1e-2): its grid goes on until the best lr is inside it.
                model_lrs={"ps-30k": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)},
                side_model="ps-100k",  # the K / lambda / warm-up side study runs on this model
                # ps-500k's (a) run at D/N 100 and 300 is 50M and 150M tokens (hours on 2 cores):
                # those points wait until after the seeds and the side study.
                main_dn_cap={"ps-500k": 60}),
    # A minute-long check of the whole flow (embedded corpus, tiny model, D/N = 1).
    "smoke": dict(models=("test-tiny",), seq_len=64, batch=8, tokenizer="bytes", extra=(), lrs=(3e-3,), lr_dn=1,
                  dns=(1,), late_dns=(), series=("epochs",), epochs_source="embedded", eval_max_bytes=5_000, evals=2),
    # The same study at the paper's sizes on C4 (unique data only: C4 has no small multi-epoch corpus).
    "tpu": dict(models=("125m", "370m"), seq_len=1024, batch=256, tokenizer="sentencepiece",
                extra=("data.vocab_size=32000", "data.data_dir=gs://BUCKET/tfds", "mesh.data=1", "mesh.fsdp=-1"),
                lrs=(3e-4, 6e-4, 1.2e-3), lr_dn=10, dns=(10, 30, 100, 300), late_dns=(1000,),
                series=("unique",), epochs_source=None, unique_source="tfds:c4/en:3.1.0",
                eval_max_bytes=20_000_000, evals=8, checkpoint_root="gs://BUCKET/patch_scaling"),
    "gpu": dict(models=("125m", "370m"), seq_len=1024, batch=64, tokenizer="sentencepiece",
                extra=("data.vocab_size=32000",), lrs=(3e-4, 6e-4, 1.2e-3), lr_dn=10, dns=(10, 30, 100, 300),
                late_dns=(), series=("unique",), epochs_source=None, unique_source="tfds:c4/en:3.1.0",
                eval_max_bytes=20_000_000, evals=8),
}
ARMS = {"a": (1, 0.0, 1.0), "b": (4, 2 / 3, 1.0), "c": (1, 0.0, 0.5)}  # arm: (K, lambda, share of D)
WARMUP_FRACTION = 0.04  # every stage warms up for 4% of its steps (the paper's stage 2: 2000 of 45000)
CLOSE = 0.03  # bits/byte: (b) this close to (a) or (c) gets 3 seeds
PURPOSES = frozenset({"main", "lr", "seed", "side"})  # why a run is in the plan (see `plan`)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the study."""

    model: str
    series: str  # unique | epochs
    dn: int  # D/N of the baseline (a): D = dn * N
    arm: str  # a | b | c, or x (side study, on D)
    K: int
    lam: float
    share: float  # token budget as a share of D
    lr: float
    seed: int = 0
    warmup_fraction: float = WARMUP_FRACTION
    purpose: str = "main"  # main | lr | seed | side

    @property
    def name(self) -> str:
        return (f"{self.model}.{self.series}.dn{self.dn:04d}.{self.arm}.K{self.K}.lam{self.lam:.3f}"
                f".lr{self.lr:g}.wf{self.warmup_fraction:g}.s{self.seed}")


def arm_run(model: str, series: str, dn: int, arm: str, lr: float, **kw) -> Run:
    k, lam, share = ARMS[arm]
    return Run(model, series, dn, arm, k, lam, share, lr, **kw)


def n_params(model: str) -> tuple[int, int]:
    """(N with embeddings, N without) of a model preset at the bytes vocabulary / its own vocabulary."""
    cfg = Config.load(model)
    vocab = 258 if cfg.data.tokenizer == "bytes" else cfg.data.vocab_size  # bytes: 256 + BOS + EOS
    cfg = dataclasses.replace(cfg.model, vocab_size=vocab)
    return count_params(cfg), count_params(cfg, embeddings=False)


def finished(out: Path) -> dict[str, dict]:
    """Finished runs by name: every out/runs/*.json."""
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))}


def chosen_lr(model: str, preset: dict, done: dict[str, dict]) -> float | None:
    """The lr of the best token baseline (a) at D/N = lr_dn (unique series), once all candidates ran."""
    series = preset["series"][0]
    cands = [arm_run(model, series, preset["lr_dn"], "a", lr, purpose="lr") for lr in model_lrs(preset, model)]
    if not all(c.name in done for c in cands):
        return None
    return min(cands, key=lambda c: done[c.name]["bpb"]).lr


def point_bpb(done: dict[str, dict], runs: Iterable[Run]) -> dict[str, float] | None:
    """{arm: held-out bits/byte} of finished runs, or None if one is missing."""
    out = {}
    for r in runs:
        if r.name not in done:
            return None
        out[r.arm] = done[r.name]["bpb"]
    return out


def close_arms(bpb: dict[str, float], tol: float = CLOSE) -> str:
    """The arms that need more seeds at a point: (b) and whichever of (c), (a) it is within `tol`
    bits/byte of (a crossing there could be seed noise); "" when (b) is clear of both. An arm far from
    (b) gets no seeds: they would not change which side of it (b) is on."""
    near = "".join(arm for arm in "ca" if abs(bpb["b"] - bpb[arm]) < tol)
    return "b" + near if near else ""


def reachable(dn: int, n: int, series: str, train_tokens: int | None, seq_len: int) -> bool:
    """A unique-data point must fit in the corpus (whole K=4 blocks); other series always fit."""
    if series != "unique" or train_tokens is None:
        return True
    block = 4 * seq_len
    return dn * n <= (train_tokens // block) * block


def plan(preset: dict, done: dict[str, dict], train_tokens: dict[str, int | None]) -> list[Run]:
    """All runs of the study in priority order, given the finished ones (later phases depend on them).

    Per model, in size order: the lr candidates, then (a, b, c) at each D/N of each series (up to the
    model's `main_dn_cap`). Then seeds 1, 2 at close points, then the K / lambda / warm-up side study,
    then the late D/N (above the cap, and `late_dns`)."""
    out: list[Run] = []
    lrs = {}
    for model in preset["models"]:
        n = n_params(model)[0]
        lr = chosen_lr(model, preset, done)
        lrs[model] = lr
        out += [arm_run(model, preset["series"][0], preset["lr_dn"], "a", c, purpose="lr") for c in model_lrs(preset, model)]
        if lr is None:
            continue  # the main series wait for the lr choice (the lr runs come first anyway)
        for series in model_series(preset, model):
            for dn in main_dns(preset, model):
                if reachable(dn, n, series, train_tokens.get(series), preset["seq_len"]):
                    out += [arm_run(model, series, dn, arm, lr) for arm in "abc"]
    for model in preset["models"]:  # seeds where (b) is close to (a) or (c)
        lr = lrs[model]
        if lr is None:
            continue
        for series in model_series(preset, model):
            for dn in model_dns(preset, model) + tuple(preset["late_dns"]):
                bpb = point_bpb(done, [arm_run(model, series, dn, arm, lr) for arm in "abc"])
                arms = close_arms(bpb) if bpb else ""  # (b) first, then (c) (0.5x, cheaper), then (a)
                out += [arm_run(model, series, dn, arm, lr, seed=s, purpose="seed") for arm in arms for s in (1, 2)]
    model = preset.get("side_model", preset["models"][0])  # side study at its best unique-data D/N
    best = best_dn(model, preset["series"][0], lrs[model], model_dns(preset, model), done) if lrs[model] else None
    if best is not None:
        lr, series = lrs[model], preset["series"][0]
        side = [(2, 2 / 3, WARMUP_FRACTION), (8, 2 / 3, WARMUP_FRACTION), (4, 0.5, WARMUP_FRACTION),
                (4, 0.8, WARMUP_FRACTION), (4, 2 / 3, 0.0), (4, 2 / 3, 0.1)]
        out += [Run(model, series, best, "x", k, lam, 1.0, lr, warmup_fraction=wf, purpose="side") for k, lam, wf in side]
    for model in preset["models"]:
        n, lr = n_params(model)[0], lrs[model]
        if lr is None:
            continue
        for series in model_series(preset, model):
            for dn in [d for d in model_dns(preset, model) if d not in main_dns(preset, model)] + list(preset["late_dns"]):
                if reachable(dn, n, series, train_tokens.get(series), preset["seq_len"]):
                    out += [arm_run(model, series, dn, arm, lr) for arm in "abc"]
    seen, ordered = set(), []
    for r in out:
        if r.name not in seen:
            seen.add(r.name)
            ordered.append(r)
    return ordered


def model_lrs(preset: dict, model: str) -> tuple[float, ...]:
    """The learning-rate candidates of `model`: its own `model_lrs` entry, else the preset's `lrs`."""
    return tuple(preset.get("model_lrs", {}).get(model, preset["lrs"]))


def model_dns(preset: dict, model: str) -> tuple[int, ...]:
    """The D/N points of `model`: its own `model_dns` entry, else the preset's `dns`."""
    return tuple(preset.get("model_dns", {}).get(model, preset["dns"]))


def model_series(preset: dict, model: str) -> tuple[str, ...]:
    """The series `model` runs: its own `model_series` entry, else all the preset's series."""
    return tuple(preset.get("model_series", {}).get(model, preset["series"]))


def main_dns(preset: dict, model: str) -> list[int]:
    """The D/N of `model`'s main series (the rest run last, after the seeds and the side study)."""
    cap = preset.get("main_dn_cap", {}).get(model)
    return [d for d in model_dns(preset, model) if cap is None or d <= cap]


def pending_runs(preset: dict, done: dict[str, dict], train_tokens: dict[str, int | None]) -> list[Run]:
    """The planned runs that have no finished JSON yet, in priority order (what a rerun trains)."""
    return [r for r in plan(preset, done, train_tokens) if r.name not in done]


def best_dn(model: str, series: str, lr: float, dns: Sequence[int], done: dict[str, dict]) -> int | None:
    """The D/N where (b) - (a) is lowest among finished seed-0 points."""
    gaps = {}
    for dn in dns:
        bpb = point_bpb(done, [arm_run(model, series, dn, arm, lr) for arm in "ab"])
        if bpb:
            gaps[dn] = bpb["b"] - bpb["a"]
    return min(gaps, key=gaps.get) if gaps else None


# --- one run -------------------------------------------------------------------------------------
def source_for(series: str, preset: dict, corpus: Path) -> str:
    if series == "unique":
        return preset.get("unique_source", str(corpus))
    return preset["epochs_source"]


def run_overrides(run: Run, preset: dict, source: str, eval_fraction: float | None, workdir: Path) -> list[str]:
    """The `key=value` overrides of `Config.load(run.model)` that make this run (also a CLI line)."""
    n = n_params(run.model)[0]
    tokens = int(run.dn * n * run.share)
    stages = plan_stages(token_budget=tokens, batch_size=preset["batch"], seq_len=preset["seq_len"],
                         patch_size=run.K, patch_fraction=run.lam)
    warmup = max(1, round(WARMUP_FRACTION * stages[0].steps))
    eval_every = max(1, stages[-1].steps // preset["evals"])
    out = [f"data.source={source}", f"data.tokenizer={preset['tokenizer']}", f"data.seq_len={preset['seq_len']}",
           f"data.eval_max_bytes={preset['eval_max_bytes']}", f"data.seed={run.seed}",
           f"training.batch_size={preset['batch']}", f"training.tokens={tokens}", f"training.lr={run.lr}",
           f"training.warmup_steps={warmup}", f"training.warmup_fraction={run.warmup_fraction}",
           f"training.eval_every={eval_every}", f"training.patch_size={run.K}",
           f"training.patch_fraction={run.lam}", f"training.seed={run.seed}", "training.checkpoint_every=500",
           "training.keep_checkpoints=1", "training.progress=false", "training.log_every=10",
           f"training.workdir={workdir}", *preset["extra"]]
    if eval_fraction is not None:
        out.append(f"data.eval_fraction={eval_fraction!r}")
    if preset.get("checkpoint_root"):  # multi-host: every host reads and writes the same checkpoints
        out.append(f"training.checkpoint_dir={preset['checkpoint_root']}/{run.name}")
    return out


def eval_curve(workdir: Path) -> list[tuple[int, float]]:
    """[(global step, held-out bits/byte)] from the run's metrics.jsonl."""
    points = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/bits_per_byte" in row:
            points[row["step"]] = row["eval/bits_per_byte"]
    return sorted(points.items())


def final_train_loss(workdir: Path, first_step: int, tail: float = 0.1) -> float | None:
    """Mean logged token-level train loss (nats/token) over the last `tail` of the final stage."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r and r["step"] > first_step]
    if not rows:
        return None
    last = rows[-1][0]
    cut = last - tail * (last - first_step)
    tail_rows = [v for s, v in rows if s >= cut]
    return statistics.fmean(tail_rows)


def rises_late(curve: Sequence[tuple[int, float]], start: int, end: int, tol: float = 0.005) -> bool:
    """Overfitting flag: over the last third of the final stage (steps start..end), the held-out
    curve ends more than `tol` bits/byte above its lowest point there (an eval at or before the
    two-thirds mark counts as the window's first point)."""
    mark = start + 2 * (end - start) / 3
    before = [(s, v) for s, v in curve if start < s <= mark]
    window = before[-1:] + [(s, v) for s, v in curve if s > mark and s <= end]
    if len(window) < 2:
        return False
    return window[-1][1] - min(v for _, v in window) > tol


def execute(run: Run, preset: dict, source: str, eval_fraction: float | None, workdirs: Path,
            train_tokens: int | None, done: dict[str, dict]) -> dict:
    """Train (or resume) one run and return its compact summary; a run that is the same training as
    a finished one (`same_training`) is not trained again."""

    workdir = workdirs / run.name
    overrides = run_overrides(run, preset, source, eval_fraction, workdir)
    twin = same_training(run, overrides, done, n_params(run.model)[0])
    if twin is not None:
        return twin
    cfg = Config.load(run.model).override(*overrides).validate()
    t0 = time.perf_counter()
    trained = train_to_end(cfg)
    wall = time.perf_counter() - t0
    stages = trained.stages
    tokens = sum(s["tokens"] for s in stages)
    first_step = sum(s["steps"] for s in stages[:-1])
    end_step = first_step + stages[-1]["steps"]
    curve = eval_curve(workdir)
    loss = final_train_loss(workdir, first_step)
    n, n_no_emb = n_params(run.model)
    return {
        "name": run.name, "run": dataclasses.asdict(run), "N": n, "N_no_embeddings": n_no_emb,
        "D": int(run.dn * n), "tokens": tokens, "epochs": tokens / train_tokens if train_tokens else None,
        "corpus_train_tokens": train_tokens, "steps": end_step, "flops": sum(s["flops"] for s in stages),
        "relative_cost": trained.summary["relative_cost"], "wall_s": wall,
        "bpb": trained.eval["eval/bits_per_byte"], "eval_loss": trained.eval["eval/loss"],
        "train_loss_bits_per_token": loss / math.log(2) if loss is not None else None,
        "stage_end_bpb": [s["end_bits_per_byte"] for s in stages], "stage_steps": [s["steps"] for s in stages],
        "curve": curve, "overfit": rises_late(curve, first_step, end_step),
        "overrides": [o for o in overrides if not o.startswith("training.workdir=")],
        "host": os.uname().nodename, "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def same_training(run: Run, overrides: Sequence[str], done: dict[str, dict], n: int) -> dict | None:
    """The result of `run` taken from a finished run with the same overrides (work directory aside),
    or None. Such a run is the same training: arm (c) at D/N 2x is arm (a) at D/N x (token level on
    the same tokens, schedule, seeds), and the trainer is deterministic on a machine (checked across
    machines: ps-30k and ps-100k (c) at D/N 60, trained in another session, gave their (a) at D/N 30
    within 1e-4 bits/byte, the CPU's kernels aside). The copy names its source in `same_run_as`;
    D is the run's own."""
    key = [o for o in overrides if not o.startswith("training.workdir=")]
    twin = next((d for d in done.values() if d.get("overrides") == key and d["name"] != run.name), None)
    if twin is None:
        return None
    return {**twin, "name": run.name, "run": dataclasses.asdict(run), "D": int(run.dn * n),
            "same_run_as": twin.get("same_run_as", twin["name"]), "wall_s": 0.0,
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}


def train_tokens_of(source: str | None, eval_fraction: float | None, tokenizer: str) -> int | None:
    """Training-split tokens of a local source under the bytes tokenizer (bytes + BOS + EOS per doc)."""
    if source is None or source.startswith("tfds:") or tokenizer != "bytes":
        return None
    docs = load_documents(source, "train", eval_fraction=eval_fraction if eval_fraction is not None else 0.1)
    return sum(len(d) + 2 for d in docs)


def measure_tokens_per_s(model: str, preset: dict, steps: int = 40) -> float:
    """Token-level training tokens/s of `model`, from a short run on the embedded corpus (median of the
    logged rates after compilation). The CPU is shared, so this is a rough projection only."""

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.load(model).override(
            "data.source=embedded", f"data.tokenizer={preset['tokenizer']}", f"data.seq_len={preset['seq_len']}",
            f"training.batch_size={preset['batch']}", f"training.steps={steps}", "training.log_every=5",
            "training.progress=false", "training.checkpoint_every=100000", f"training.workdir={tmp}",
            "data.eval_max_bytes=20000", *[e for e in preset["extra"] if not e.startswith(("mesh.", "data.data_dir"))])
        train_to_end(cfg)
        rates = [json.loads(line).get("perf/tokens_per_s") for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        rates = [r for r in rates if r]
    return statistics.median(rates[1:] or rates)


def projected_s(run: Run, tokens_per_s: float, evals: int, eval_tokens: int) -> float:
    """Seconds: the run's token-level-equivalent compute at `tokens_per_s`, plus its evaluations
    (forward only, ~1/3 of a training token each)."""
    n = n_params(run.model)[0]
    compute = run.dn * n * run.share * relative_cost(run.K, run.lam if run.K > 1 else 0.0)
    n_evals = evals * (2 if run.K > 1 else 1) + 2
    return (compute + n_evals * eval_tokens / 3) / tokens_per_s


# --- report ----------------------------------------------------------------------------------------
# The paper's Table 4 (370M, the Pile, WikiText-103 PPL): tokens -> (patch K=4 lambda=2/3, token level).
# 45B and 360B are quoted in issue #12; the 90B and 180B rows were not available to us offline.
PAPER_TABLE4 = {45e9: (12.84, 12.50), 360e9: (10.68, 10.94)}
PAPER_N = 370e6


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def chosen_lrs(done: dict[str, dict]) -> dict[str, float]:
    """{model: the lr of its best finished lr-candidate run} (what `chosen_lr` picks once all ran)."""
    best: dict[str, dict] = {}
    for r in done.values():
        model = r["run"]["model"]
        if r["run"]["purpose"] == "lr" and (model not in best or r["bpb"] < best[model]["bpb"]):
            best[model] = r
    return {m: r["run"]["lr"] for m, r in best.items()}


def point_rows(done: dict[str, dict]) -> list[dict]:
    """One row per (model, series, D/N) main point at the model's chosen lr, seeds averaged."""
    lrs = chosen_lrs(done)
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in done.values():
        run = r["run"]
        if run["arm"] not in "abc":
            continue
        if run["model"] in lrs and run["lr"] != lrs[run["model"]]:
            continue  # points of a superseded lr choice (the candidates grew)
        if run["warmup_fraction"] != WARMUP_FRACTION:
            continue
        key = (run["model"], run["series"], run["dn"], run["lr"])
        groups.setdefault(key, {}).setdefault(run["arm"], []).append(r)
    rows = []
    for (model, series, dn, lr), arms in sorted(groups.items()):
        if not all(a in arms for a in "abc"):
            continue
        row = {"model": model, "series": series, "dn": dn, "lr": lr, "N": arms["a"][0]["N"],
               "D": arms["a"][0]["D"], "epochs": arms["a"][0]["epochs"],
               "seeds": min(len(arms[a]) for a in "abc"), "seeds_txt": "/".join(str(len(arms[a])) for a in "abc")}
        for a in "abc":
            row[a], row[a + "_sd"] = mean_sd([x["bpb"] for x in arms[a]])
            row[a + "_train"] = statistics.fmean([x["train_loss_bits_per_token"] for x in arms[a]])
            row[a + "_overfit"] = any(rises_late(x["curve"], sum(x["stage_steps"][:-1]), sum(x["stage_steps"]))
                                      for x in arms[a])
        row["b_a"], row["b_c"] = row["b"] - row["a"], row["b"] - row["c"]
        rows.append(row)
    return rows


def _bpb(row: dict, arm: str) -> str:
    sd = row[arm + "_sd"]
    mark = "↑" if row[arm + "_overfit"] else ""
    return f"{row[arm]:.3f}{mark}" + (f" ±{sd:.3f}" if sd is not None else "")


def report_markdown(done: dict[str, dict]) -> str:
    rows = point_rows(done)
    lines = []
    for model in sorted({r["model"] for r in rows}, key=lambda m: n_params(m)[0]):
        n, n0 = n_params(model)
        lines += [f"**{model}**: N = {n:,} parameters with embeddings ({n0:,} without); D/N uses N with "
                  "embeddings. Held-out bits/byte; ↑ = held-out curve rises over its last third (overfitting); "
                  "± = sd over seeds; train = final train loss, bits/token (≈ bits/byte: bytes tokenizer).", ""]
        cols = [("series", "series", "s"), ("dn", "D/N", "d"), ("D", "D tokens", ","), ("epochs", "epochs (a)", ".2f"),
                ("lr", "lr", "g"), ("a_txt", "(a) token D", "s"), ("b_txt", "(b) patch 0.5×", "s"),
                ("c_txt", "(c) token D/2", "s"), ("b_a", "(b)−(a)", "+.3f"), ("b_c", "(b)−(c)", "+.3f"),
                ("train", "train a/b/c", "s"), ("seeds_txt", "seeds a/b/c", "s")]
        table = []
        for r in rows:
            if r["model"] != model:
                continue
            table.append({**r, "a_txt": _bpb(r, "a"), "b_txt": _bpb(r, "b"), "c_txt": _bpb(r, "c"),
                          "train": "/".join(f"{r[a + '_train']:.2f}" for a in "abc")})
        lines += [markdown_table(table, cols), ""]
    lines += size_markdown(rows)
    lr_rows = [r for r in done.values() if r["run"]["purpose"] == "lr"]
    if lr_rows:
        lines += ["Learning-rate choice (token baseline (a) at the lr D/N, unique data):", ""]
        lines += [markdown_table([{"model": r["run"]["model"], "dn": r["run"]["dn"], "lr": r["run"]["lr"], "bpb": r["bpb"]}
                                  for r in sorted(lr_rows, key=lambda r: (r["run"]["model"], r["run"]["lr"]))],
                                 [("model", "model", "s"), ("dn", "D/N", "d"), ("lr", "lr", "g"),
                                  ("bpb", "held-out bits/byte", ".4f")]), ""]
    side = [r for r in done.values() if r["run"]["purpose"] == "side"]
    if side:
        lines += ["Side study (patch runs on D; cost = λ/K + 1 − λ; wf = stage-2 warm-up fraction, 0 = the old "
                  "rule; compare with (b) = K 4, λ 0.667, wf 0.04 at the same D/N in the table above):", ""]
        lines += [markdown_table([{"model": r["run"]["model"], "dn": r["run"]["dn"], "K": r["run"]["K"],
                                   "lam": r["run"]["lam"], "wf": r["run"]["warmup_fraction"],
                                   "cost": r["relative_cost"], "bpb": r["bpb"], "of": "yes" if r["overfit"] else ""}
                                  for r in sorted(side, key=lambda r: r["name"])],
                                 [("model", "model", "s"), ("dn", "D/N", "d"), ("K", "K", "d"), ("lam", "λ", ".3f"),
                                  ("wf", "wf", "g"), ("cost", "cost", ".3f"), ("bpb", "held-out bits/byte", ".4f"),
                                  ("of", "overfit", "s")]), ""]
    lines.append(f"{len(done)} finished runs.")
    return "\n".join(lines)


def crossing_dn(rows: Sequence[dict], model: str, series: str = "unique") -> int | None:
    """The smallest D/N where (b) patch at 0.5x is at or below (a) token at 1x (seed means), or None."""
    hits = sorted(r["dn"] for r in rows if r["model"] == model and r["series"] == series and r["b_a"] <= 0)
    return hits[0] if hits else None


def size_markdown(rows: Sequence[dict]) -> list[str]:
    """The gap against model size at each unique-data D/N that two or more sizes reached (the paper's
    Table 3 direction: its gain shrinks from 370M to 2.7B), and each size's crossing D/N."""
    unique = [r for r in rows if r["series"] == "unique"]
    shared = sorted(dn for dn in {r["dn"] for r in unique} if len({r["model"] for r in unique if r["dn"] == dn}) > 1)
    if not shared:
        return []
    table = [{**r, "Nk": r["N"] / 1e3} for r in sorted(unique, key=lambda r: (r["dn"], r["N"])) if r["dn"] in shared]
    lines = ["Gap against model size at fixed D/N (unique data; seed means):", "",
             markdown_table(table, [("dn", "D/N", "d"), ("model", "model", "s"), ("Nk", "N (K)", ".1f"),
                                    ("b_a", "(b)−(a)", "+.3f"), ("b_c", "(b)−(c)", "+.3f"),
                                    ("seeds_txt", "seeds a/b/c", "s")]), ""]
    models = sorted({r["model"] for r in unique}, key=lambda m: n_params(m)[0])
    top = {m: max(r["dn"] for r in unique if r["model"] == m) for m in models}
    lines += ["Crossing (smallest unique-data D/N where (b) ≤ (a)): " + "; ".join(
        f"{m} " + (f"D/N {crossing_dn(rows, m)}" if crossing_dn(rows, m) else f"none up to D/N {top[m]}")
        for m in models) + ".", ""]
    return lines


def report_png(done: dict[str, dict], path: Path) -> Path:
    rows = point_rows(done)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True, sharey=True)
    for ax, key, title in ((axes[0], "b_a", "(b) patch 0.5× − (a) token 1×"),
                           (axes[1], "b_c", "(b) patch 0.5× − (c) token 0.5×")):
        for (model, series) in sorted({(r["model"], r["series"]) for r in rows}):
            pts = sorted((r["dn"], r[key], r["seeds"]) for r in rows if (r["model"], r["series"]) == (model, series))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if series == "unique" else "s",
                    ls="-" if series == "unique" else "--", label=f"{model}, {series}")
        if key == "b_a":
            xs = [t / PAPER_N for t in PAPER_TABLE4]
            ys = [math.log2(p / t) for p, t in PAPER_TABLE4.values()]
            ax.plot(xs, ys, marker="*", ms=12, color="k", ls=":", label="paper Table 4, 370M: log2(PPL_b/PPL_a), bits/token")
            for (tokens, (pb, pa)), x, y in zip(PAPER_TABLE4.items(), xs, ys):
                ax.annotate(f"{tokens / 1e9:.0f}B: {pb} vs {pa}", (x, y), textcoords="offset points",
                            xytext=(-30, 8), fontsize=7)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("D/N (tokens per parameter, N with embeddings)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out bits/byte gap (< 0: patch better)")
    axes[0].legend(fontsize=7)
    return save_png(fig, path)


# --- main ----------------------------------------------------------------------------------------
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", default="results/patch_scaling", help="per-run JSONs (runs/), report, PNG")
    p.add_argument("--workdirs", default="runs/patch_scaling", help="one work directory per run (outside git)")
    p.add_argument("--corpus", default="runs/patch_scaling/corpus/docs.jsonl", help="unique-data corpus (built once)")
    p.add_argument("--report", action="store_true", help="tables + PNG + RESULTS.md section from the JSONs only")
    p.add_argument("--plan", action="store_true", help="print the pending runs and projected times, train nothing")
    p.add_argument("--build-corpus", action="store_true", help="build the unique-data corpus and stop")
    p.add_argument("--print-commands", action="store_true", help="print a tpu_scripts/tpu.sh line per pending run")
    p.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (0 = all)")
    p.add_argument("--models", default="",
                   help="train only pending runs of these model presets (comma-separated; default: all the preset's)")
    p.add_argument("--purposes", default="main,lr,seed,side",
                   help="train only pending runs of these purposes (comma-separated: main, lr, seed, side),"
                        " e.g. to spend a sitting on the seeds before the remaining main points")
    args = p.parse_args(argv)
    preset, out, workdirs = PRESETS[args.preset], Path(args.out), Path(args.workdirs)
    purposes = {x.strip() for x in args.purposes.split(",") if x.strip()}
    if not purposes or purposes - PURPOSES:
        p.error(f"--purposes {args.purposes!r}: expected a comma-separated subset of {', '.join(sorted(PURPOSES))}")
    models = {x.strip() for x in args.models.split(",") if x.strip()} or set(preset["models"])
    if models - set(preset["models"]):
        p.error(f"--models {args.models!r}: expected a comma-separated subset of {', '.join(preset['models'])}")

    if args.report:
        done = finished(out)
        text = report_markdown(done)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text + "\n")
        png = report_png(done, out / "gap_vs_dn.png")
        filled = args.preset == "cpu" and args.out == p.get_default("out") and write_section(
            "RESULTS.md", "patch_scaling", text + f"\n\n![gap vs D/N]({png.as_posix()})", append=False)
        print(text + f"\n\nwrote {out / 'report.md'}, {png}" + (", RESULTS.md section" if filled else ""))
        return

    corpus, sources, eval_fractions = Path(args.corpus), {}, {}
    try:
        if "unique" in preset["series"] and "unique_source" not in preset:
            meta = ensure_corpus(corpus)
            eval_fractions["unique"] = meta["eval_fraction"]
        if args.build_corpus:
            return
    except DataError as e:
        raise SystemExit(f"pcomp: error: {e}") from None
    for series in preset["series"]:
        sources[series] = source_for(series, preset, corpus)
    train_tokens = {s: train_tokens_of(sources[s], eval_fractions.get(s), preset["tokenizer"]) for s in preset["series"]}
    for s, t in train_tokens.items():
        if t:
            print(f"series {s}: {sources[s]}, {t:,} training tokens", flush=True)

    if args.print_commands:
        for run in pending_runs(preset, finished(out), train_tokens):
            ov = run_overrides(run, preset, sources[run.series], eval_fractions.get(run.series), workdirs / run.name)
            print(f"bash tpu_scripts/tpu.sh train --config {run.model} " + " ".join(ov))
        return

    speed = {m: measure_tokens_per_s(m, preset) for m in preset["models"]}
    print("measured token-level training throughput (shared CPU: a rough projection): "
          + ", ".join(f"{m} {v:,.0f} tokens/s" for m, v in speed.items()), flush=True)
    eval_tokens = preset["eval_max_bytes"]
    ran, failed = 0, set()
    while True:
        done = finished(out)
        pending = pending_runs(preset, done, train_tokens)
        now, total = time.time(), 0.0
        print(f"\n{len(done)} runs finished, {len(pending)} pending (later phases are planned once earlier ones finish)")
        for r in pending:
            total += projected_s(r, speed[r.model], preset["evals"], eval_tokens)
            eta = datetime.datetime.fromtimestamp(now + total).strftime("%a %H:%M")
            print(f"  {r.name:<62} {r.purpose:<5} ~{projected_s(r, speed[r.model], preset['evals'], eval_tokens) / 60:6.1f} min"
                  f"  done by ~{eta}")
        print(f"projected wall time of the pending runs: {total / 3600:.2f} h", flush=True)
        if args.plan or not pending or (args.max_runs and ran >= args.max_runs):
            return
        pending = [r for r in pending if r.name not in failed and r.purpose in purposes and r.model in models]
        if not pending:
            return
        run = pending[0]
        print(f"\n=== {run.name} ({run.purpose}) ===", flush=True)
        try:
            result = execute(run, preset, sources[run.series], eval_fractions.get(run.series), workdirs,
                             train_tokens[run.series], done)
        except Exception:  # keep the sweep going; the run is retried by the next invocation
            traceback.print_exc()
            print(f"=== {run.name} FAILED; skipped until the script is rerun", flush=True)
            failed.add(run.name)
            continue
        write_json(out / "runs" / f"{run.name}.json", result)
        print(f"=== {run.name}: held-out {result['bpb']:.4f} bits/byte, {result['wall_s'] / 60:.1f} min"
              + (f" (the same training as {result['same_run_as']})" if "same_run_as" in result else "")
              + (", OVERFITS" if result["overfit"] else ""), flush=True)
        ran += 1


if __name__ == "__main__":
    main()
