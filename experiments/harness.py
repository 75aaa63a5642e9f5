"""The experiment scripts' shared harness: `--data`, training a run to its end, timing summaries,
markdown tables, JSON, PNG, and the marked sections they write into RESULTS.md.

Part of experiments/, not of the library: nothing in pcomp imports it. Run the scripts from the
repository root as modules (`python -m experiments.NAME`) or with PYTHONPATH=. ."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def train_to_end(cfg):
    """`pcomp.train.trainer.train(cfg)` (its `TrainResult`), or SystemExit when a signal (SIGTERM:
    preemption; Ctrl-C) stopped the run before its end (130 after SIGINT, else 0). The trainer checkpointed, so the same command resumes; a script must never
    score a stopped run and record it as finished."""
    from pcomp.train.trainer import train

    result = train(cfg)  # a TrainResult
    if not result.finished:
        raise SystemExit(result.exit_code)
    return result


def train_m1(workdir: str | Path, *overrides: str) -> Path:
    """The experiments' one M1 trainer: preset m1-3m with `key=value` overrides (`model=...`,
    `training.steps=...`, `data.source=...`), trained to its end in `workdir`, byte-level with BOS
    first (what the coder primes M1 with). A run that finished (its summary.json) is reused as it is;
    an unfinished one resumes from its checkpoint; a signal ends the script (`train_to_end`), so no
    table is ever made with a stopped M1. Returns `workdir`."""
    from pcomp.config import Config

    workdir = Path(workdir)
    if (workdir / "summary.json").is_file():
        print(f"M1: reusing {workdir}", flush=True)
        return workdir
    cfg = Config.preset("m1-3m").override(*overrides, "data.tokenizer=bytes", "data.bos_first=true",
                                          f"training.workdir={workdir}", "training.progress=false")
    print(f"M1: training {cfg.model.name} ({cfg.training.steps} steps of {cfg.training.batch_size} x "
          f"{cfg.data.seq_len} bytes) in {workdir} ...", flush=True)
    train_to_end(cfg)
    return workdir


def strong_compressors() -> list[tuple[str, Callable[[bytes], bytes], Callable[[bytes, int], bytes]]]:
    """(name, compress, decompress(blob, original length)) of the strong general-purpose compressors
    the experiments compare with, beyond the stdlib three of `pcomp.compress.codec.baseline_sizes`
    (gzip -9, bzip2 -9, xz -9e): zstd -19 --long (long-distance matching, 128 MiB window), brotli -11,
    and PPMd var. I (rev. 1, the classic strong text compressor; `pyppmd`) at orders 6 and 8 with
    256 MiB of model memory, restarting the model when it is full. Needs the `bench` extra. Check
    each round trip: pyppmd 1.3.1's decoder fails on some inputs (order 8 on the first 150 KB of
    tinyshakespeare.txt raises "Corrupted input data"; its var. H fails elsewhere)."""
    import brotli
    import pyppmd
    import zstandard

    long_window = 27  # zstd --long: a 2**27-byte window
    zstd_params = zstandard.ZstdCompressionParameters.from_level(19, enable_ldm=True, window_log=long_window)

    def ppmd(order: int):
        def enc(data: bytes) -> bytes:
            e = pyppmd.Ppmd8Encoder(order, 256 << 20, pyppmd.PPMD8_RESTORE_METHOD_RESTART)
            return e.encode(data) + e.flush(endmark=True)

        def dec(blob: bytes, n: int) -> bytes:
            return pyppmd.Ppmd8Decoder(order, 256 << 20, pyppmd.PPMD8_RESTORE_METHOD_RESTART).decode(blob, n)

        return enc, dec

    return [
        ("zstd -19 --long", lambda d: zstandard.ZstdCompressor(compression_params=zstd_params).compress(d),
         lambda b, n: zstandard.ZstdDecompressor(max_window_size=1 << long_window).decompress(b)),
        ("brotli -11", lambda d: brotli.compress(d, quality=11), lambda b, n: brotli.decompress(b)),
        ("PPMd o6", *ppmd(6)),
        ("PPMd o8", *ppmd(8)),
    ]


def add_data_arg(parser: argparse.ArgumentParser, default: str = "embedded") -> None:
    parser.add_argument("--data", default=default,
                        help="training text: 'embedded', a text file / directory / .jsonl, or tfds:NAME "
                             "(e.g. ../shared/data/tinyshakespeare.txt)")


def min_median(times: Sequence[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


Column = tuple[str, str, Callable[[Any], str] | str]  # (key, header, format spec or function)


def interleaved_times(runs: dict[str, Callable[[], Any]], steps: int, repeats: int, warmup: int = 1,
                      sync: Callable[[str], Any] | None = None) -> dict[str, list[float]]:
    """{name: [seconds per step, one per round]} of each callable (one step per call; None = skipped).

    The one timing loop of the benchmarks: each callable is warmed up (compiled) first, then `repeats`
    rounds of `steps` calls each, the order rotated every round so that machine drift hits all alike.
    `sync(name)`, when given, runs after a round's calls and inside its timing (async dispatch:
    block on the round's last result)."""
    names = [n for n, fn in runs.items() if fn is not None]
    for n in names:
        for _ in range(warmup):
            runs[n]()
        if sync is not None:
            sync(n)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(steps):
                runs[n]()
            if sync is not None:
                sync(n)
            times[n].append((time.perf_counter() - t0) / steps)
    return times


def measure(runs: dict[str, Callable[[], Any]], steps: int, repeats: int, warmup: int = 1) -> dict[str, float]:
    """{name: median seconds per step} over `interleaved_times` rounds (synchronous callables)."""
    return {n: statistics.median(t) for n, t in interleaved_times(runs, steps, repeats, warmup).items()}


def _fmt(value: Any, fmt: Callable[[Any], str] | str) -> str:
    if value is None:
        return "-"
    return fmt(value) if callable(fmt) else format(value, fmt)


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """A GitHub-markdown table of `rows` (dicts), one column per (key, header, format)."""
    cells = [[header for _, header, _ in columns]]
    cells += [[_fmt(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    return path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spread_labels(ys: Sequence[float], gap: float) -> list[float]:
    """Label heights no closer than `gap`, in the order of `ys`, each moved as little as that allows
    (the run of labels that would overlap is centred on its points)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    groups: list[list[int]] = []  # runs of labels stacked `gap` apart: [indices], placed from a start
    starts: list[float] = []
    for i in order:
        groups.append([i])
        starts.append(ys[i])
        while len(groups) > 1 and starts[-2] + gap * len(groups[-2]) > starts[-1]:  # overlaps the run below
            top = groups.pop()
            starts.pop()
            groups[-1] += top
            members = groups[-1]
            starts[-1] = sum(ys[j] for j in members) / len(members) - gap * (len(members) - 1) / 2
    out = [0.0] * len(ys)
    for members, start in zip(groups, starts):
        for k, j in enumerate(members):
            out[j] = start + k * gap
    return out


def save_png(fig, path: str | Path, dpi: int = 130) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def write_section(path: str | Path, name: str, text: str, *, append: bool = True) -> bool:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` in `path` with `text`.
    Without the markers: append them with the text (append=True), or change nothing and return False."""
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    elif append:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    else:
        return False
    path.write_text(new)
    return True
