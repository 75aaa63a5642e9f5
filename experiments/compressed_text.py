"""The Equal-Info Windows study end to end (Lester et al. 2024): M2 over every tokenization at equal FLOPs.

One command:
  1. trains M1 (a byte-level LM, bos_first) on the TRAIN split only (cached: a finished M1 is reused);
  2. prepares every tokenization with `pcomp prepare` (resumable) on the same split of the same data;
  3. trains M2 (the same model config for every method) with the same training FLOPs per method:
     its token budget is FLOPS / (analytic training FLOPs per token of that M2 (its vocabulary) x the
     patch schedule's relative cost), so methods with shorter sequences see more text;
  4. scores each M2 on the held-out split with `pcomp.train.evaluation.account_prepared`: bits per original
     UTF-8 byte, uniform and unigram bits/byte, bytes/token, inference FLOPs/byte; records wall time;
  5. prints one table per M2 size, writes results.md / results.json, a PNG of bits/byte against
     inference FLOPs/byte (the paper's Figure 3 shape), and with --results-md replaces (or appends) the
     section between <!-- compressed_text:begin --> and <!-- compressed_text:end --> of that file.
     All of it is rewritten after every finished run (partial tables say how many methods finished).
Resumable: a method whose result.json exists (with the same config) is not trained again; a dataset is
prepared just before its first M2 run, so rows finish in `methods()` order.

    python -m experiments.compressed_text --preset smoke --out /tmp/ct     # minutes: proves the pipeline
    python -m experiments.compressed_text                                  # CPU study (not yet timed)
    python -m experiments.compressed_text --preset tpu --data tfds:c4 --out results/ct_tpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

from pcomp.compress.prepare import prepare
from pcomp.train.evaluation import account_prepared
from pcomp.config import CompressConfig, Config
from pcomp.data.prepared import PreparedDataset
from pcomp.patching import relative_cost
from experiments.harness import (add_data_arg, markdown_table, pyplot, save_png, spread_labels, train_m1,
                                 train_to_end, write_json, write_section)
from pcomp.train.load import load_trained
from pcomp.train.metrics import flops_per_position


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    tokenizer: str  # a `pcomp prepare --tokenizer` kind
    token_bits: int = 8
    window_bits: int = 16
    patch_size: int = 1
    patch_fraction: float = 0.0

    @property
    def dataset(self) -> str:
        """Methods that differ only in patching share a prepared dataset."""
        if self.tokenizer == "equal_info":
            return f"equal_info_b{self.window_bits}_n{self.token_bits}"
        if self.tokenizer in ("gzip", "static_ac", "ac"):
            return f"{self.tokenizer}_n{self.token_bits}"
        return self.tokenizer


def methods(names: str | None) -> list[Method]:
    """Every method, in the order the study runs them: the paper's headline comparison first (so a
    study cut short by a session's end has the rows that matter), then the window-size series and the
    patch-level runs."""
    eq = lambda b, n, v, k=1: Method(f"EqualInfoAC[b{b},{v}]" + (f"+patch{k}" if k > 1 else ""),  # noqa: E731
                                     "equal_info", token_bits=n, window_bits=b, patch_size=k,
                                     patch_fraction=2 / 3 if k > 1 else 0.0)
    out = [Method("Bytes", "bytes"), Method("SentencePiece", "sentencepiece"), Method("AC[v256]", "ac"),
           eq(16, 16, "v65k"), eq(16, 8, "v256"), Method("StaticAC[v256]", "static_ac"),
           Method("GZip[v256]", "gzip"), Method("AC[v65k]", "ac", token_bits=16),
           eq(32, 16, "v65k"), eq(64, 16, "v65k"), eq(32, 8, "v256"), eq(64, 8, "v256")]
    # patch-level training over compressed tokens (new: neither paper did it)
    out += [eq(16, n, v, k) for n, v in ((16, "v65k"), (8, "v256")) for k in (2, 4)]
    if names:
        wanted = [w.strip() for w in re.split(r",(?![^\[]*\])", names)]  # commas outside [...]
        unknown = [w for w in wanted if w not in {m.name for m in out}]
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; choose among {[m.name for m in out]}")
        out = [m for m in out if m.name in wanted]
    return out


# m1: M1's model preset and training; m2: the M2 model presets (one table each), seq_len, batch, lr and the
# training FLOPs per run; sp_vocab: SentencePiece pieces.
PRESETS = {
    # a few minutes on 2 cores: proves the pipeline, numbers mean nothing
    "smoke": dict(m1=dict(model="test-tiny", steps=30, batch=8, seq_len=64, lr=3e-3),
                  m2=("test-tiny",), seq_len=32, batch=8, lr=3e-3, warmup=2, flops=2e9, sp_vocab=512,
                  m1_batch=16, max_docs=0, extra=()),
    # CPU study: M1 = m1-3m (1.2M training bytes, 1.4 epochs), M2 = the demo model (~1.9M parameters). 1e13 FLOPs
    # per M2 run is ~0.9M tokens for a 256-symbol vocabulary (~2 minutes on 2 cores) and ~7x fewer
    # tokens at v65k, whose LM head dominates the FLOPs; 16 methods fit the ~60-minute CPU budget.
    "cpu": dict(m1=dict(model="m1-3m", steps=300, batch=32, seq_len=128, lr=2e-3),
                m2=("demo",), seq_len=128, batch=8, lr=3e-3, warmup=30, flops=1e13, sp_vocab=1024,
                m1_batch=256, max_docs=0, extra=()),
    # the paper's sizes on an accelerator (M1 3m; M2 25m and up)
    "tpu": dict(m1=dict(model="m1-3m", steps=3000, batch=256, seq_len=128, lr=2e-3),
                m2=("25m", "125m"), seq_len=512, batch=256, lr=6e-4, warmup=1000, flops=1e19, sp_vocab=32000,
                m1_batch=1024, max_docs=0, extra=("model.dtype=bfloat16",)),
}


def prepare_dataset(method: Method, preset: dict, data: str, m1: Path, out: Path, eval_fraction: float) -> Path:
    path = out / "data" / method.dataset
    cfg = CompressConfig(window_bits=method.window_bits, token_bits=method.token_bits, m1_batch=preset["m1_batch"])
    prepare(m1_path=str(m1), source=data, out=str(path), cfg=cfg, seq_len=preset["seq_len"],
            eval_fraction=eval_fraction, tokenizer=method.tokenizer, vocab_size=preset["sp_vocab"], progress=False)
    return path


def m2_config(method: Method, preset: dict, model: str, dataset: Path, workdir: Path, overrides: list[str]) -> Config:
    base = Config().override(f"model={model}", f"data.source={dataset}", f"data.seq_len={preset['seq_len']}",
                             f"model.vocab_size={PreparedDataset(dataset).vocab_size}")
    cost = relative_cost(method.patch_size, method.patch_fraction) if method.patch_size > 1 else 1.0
    tokens = int(preset["flops"] / (flops_per_position(base.model, preset["seq_len"]) * cost))
    tokens -= tokens % (preset["seq_len"] * preset["batch"] * max(method.patch_size, 1))
    return base.override(
        f"training.batch_size={preset['batch']}", f"training.tokens={max(tokens, preset['seq_len'] * preset['batch'])}",
        f"training.lr={preset['lr']}", f"training.warmup_steps={preset['warmup']}",
        f"training.patch_size={method.patch_size}", f"training.patch_fraction={method.patch_fraction}",
        "training.checkpoint_every=1000000", "training.keep_checkpoints=1", "training.progress=false",
        f"training.workdir={workdir}", *preset["extra"], *overrides).validate()


def run_m2(method: Method, cfg: Config, dataset: Path, model: str) -> dict:
    workdir = Path(cfg.training.workdir)
    result_file = workdir / "result.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
        new = json.loads(cfg.to_json())
        # (keys a newer pcomp added are not in the stored config; they are not compared)
        diff = sorted(f"{sec}.{k}" for sec, old in result["config"].items() if isinstance(old, dict)
                      for k, v in old.items() if k in new.get(sec, {}) and new[sec][k] != v)
        if not diff:
            print(f"{method.name} ({model}): reusing {workdir}", flush=True)
            return result
        raise SystemExit(f"{workdir} holds a finished run with another config ({diff}); use another --out")
    print(f"\n=== {method.name} on {model}: {cfg.training.tokens:,} tokens ===", flush=True)
    t0 = time.perf_counter()
    trained = train_to_end(cfg)
    wall = time.perf_counter() - t0
    acc = account_prepared(load_trained(workdir), dataset, "eval")
    result = {"method": method.name, "model": model, "tokenizer": method.tokenizer, "K": method.patch_size,
              "wall_s": wall, "train_tokens": sum(s["tokens"] for s in trained.stages),
              "train_flops": sum(s["flops"] for s in trained.stages), **acc.to_dict(),
              "config": json.loads(cfg.to_json())}
    write_json(result_file, result)
    return result


COLUMNS = [
    ("method", "method", "s"), ("bytes_per_token", "bytes/token", ".3f"), ("bits_per_byte", "bits/byte", ".4f"),
    ("uniform_bits_per_byte", "uniform", ".4f"), ("unigram_bits_per_byte", "unigram", ".4f"),
    ("flops_per_byte", "inference FLOPs/byte", ".3e"), ("train_flops", "training FLOPs", ".3e"),
    ("train_tokens", "tokens seen", ","), ("wall_s", "wall s", ".0f"),
]


def plot(results: list[dict], path: Path, title: str) -> Path:
    """bits/byte against inference FLOPs/byte: one colour and line per tokenization across M2 sizes (the
    paper's Figure 3), labels in a column right of the axes with leader lines (points overlap)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    for i, (name, rows) in enumerate(by_method.items()):
        rows = sorted(rows, key=lambda r: r["flops_per_byte"])
        ax.plot([r["flops_per_byte"] for r in rows], [r["bits_per_byte"] for r in rows], "o-", ms=4, lw=1,
                color=plt.cm.tab20(i % 20))
    ax.set_xscale("log")
    ax.autoscale_view()
    to_axes = ax.transData + ax.transAxes.inverted()
    ends = {name: max(rows, key=lambda r: r["flops_per_byte"]) for name, rows in by_method.items()}
    names = list(ends)
    heights = spread_labels([to_axes.transform((ends[n]["flops_per_byte"], ends[n]["bits_per_byte"]))[1] for n in names],
                     0.045)
    for name, y in zip(names, heights):
        r = ends[name]
        label = name + (f" ({r['model']})" if len(by_method[name]) > 1 else "")
        ax.annotate(label, (r["flops_per_byte"], r["bits_per_byte"]), xytext=(1.03, y), textcoords="axes fraction",
                    va="center", fontsize=7, arrowprops=dict(arrowstyle="-", lw=0.4, color="0.6"))
    ax.set_xlabel("inference FLOPs / byte (2N(M2)/(bytes/token) + 2N(M1))")
    ax.set_ylabel("held-out bits / byte")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(right=0.7)
    return save_png(fig, path)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arg(p)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", default="results/compressed_text")
    p.add_argument("--methods", default=None, help="comma-separated subset, e.g. 'Bytes,EqualInfoAC[b16,v256]'")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--flops", type=float, default=None, help="training FLOPs per M2 run (default: the preset's)")
    p.add_argument("--results-md", default=None, help="write the section into this file (e.g. RESULTS.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra M2 config override")
    args = p.parse_args(argv)
    preset, out = dict(PRESETS[args.preset]), Path(args.out)
    if args.flops:
        preset["flops"] = args.flops
    chosen = methods(args.methods)
    m = preset["m1"]
    m1 = train_m1(out / "m1", f"model={m['model']}", f"data.source={args.data}",
                  f"data.eval_fraction={args.eval_fraction}", f"data.seq_len={m['seq_len']}",
                  f"training.batch_size={m['batch']}", f"training.steps={m['steps']}", f"training.lr={m['lr']}",
                  f"training.warmup_steps={max(1, m['steps'] // 20)}")
    datasets: dict[str, Path] = {}  # prepared on first use, so the first rows finish early
    results: dict[str, list[dict]] = {model: [] for model in preset["m2"]}
    for model in preset["m2"]:
        for m in chosen:
            if m.dataset not in datasets:
                datasets[m.dataset] = prepare_dataset(m, preset, args.data, m1, out, args.eval_fraction)
            cfg = m2_config(m, preset, model, datasets[m.dataset], out / model / re.sub(r"[^\w.+-]", "_", m.name),
                            args.set)
            results[model].append(run_m2(m, cfg, datasets[m.dataset], model))
            write_results(results, len(chosen), preset, args, out)  # partial results as they come
    return [r for rows in results.values() for r in rows]


def write_results(results: dict[str, list[dict]], n_methods: int, preset: dict, args, out: Path) -> None:
    """results.md / results.json / the PNG (and the RESULTS.md section) from the runs finished so far."""
    sections = []
    for model, rows in results.items():
        done = "" if len(rows) == n_methods else f" ({len(rows)} of {n_methods} methods finished so far)"
        sections.append(f"M2 = {model}, {preset['flops']:.3g} training FLOPs per run, seq_len {preset['seq_len']}, "
                        f"data {args.data}{done}\n\n{markdown_table(rows, COLUMNS)}")
    text = (f"### M2 over compressed text (`experiments/compressed_text.py --preset {args.preset}`)\n\n"
            + "\n\n".join(sections) + "\n\nuniform = log2(V) x tokens/byte; unigram = train-split token counts with "
            "add-one smoothing; inference FLOPs/byte = 2N(M2)/(bytes/token) + 2N(M1) for AC and EqualInfoAC, "
            "N = non-embedding parameters.")
    print("\n" + text, flush=True)
    flat = [r for rows in results.values() for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    write_json(out / "results.json", {"preset": args.preset, "data": args.data, "runs": flat})
    png = plot(flat, out / "bpb_vs_flops_per_byte.png", f"M2 over compressed text ({args.preset})")
    if args.results_md:
        write_section(args.results_md, "compressed_text", text + f"\n\n![bits/byte vs FLOPs/byte]({png})")
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {png}", flush=True)


if __name__ == "__main__":
    main()
