"""Which preset fits which TPU slice: every row compiled for a real TPU topology on a CPU machine.

Issue #21. Each row is `pcomp compile` (`pcomp.train.aot.compile_for_topology`: the trainer's own plan
and AOT path over a libtpu topology with no TPU attached) of one run preset on the slice a user would
rent, with the mesh, global batch and remat that fit, and K = 4 patch-level training (so both the
patch step and the token step are compiled); one row per preset where it should not fit (refused with
the trainer's one-line error); and, beside them, 125m's per-chip temporaries with splash against XLA
attention at 2048 and 8192 positions (token step). Every row records its compile seconds.

Rows run one at a time, cheapest first, each saved as results/tpu_fit/ROW.json as soon as it lands;
rerunning skips rows whose JSON exists, so the table fills in over sittings (one 125m compile took
~8 minutes of one core). `--report` prints the markdown table from the JSONs only.

    nice -n 19 python -m experiments.tpu_fit              # every missing row, in order
    python -m experiments.tpu_fit --rows 125m-k4,125m-oom  # some rows
    python -m experiments.tpu_fit --list                   # the rows, done or not
    python -m experiments.tpu_fit --report [--write]       # the RESULTS.md table (--write: put it there)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import json
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "results" / "tpu_fit"
MARK_START, MARK_END = "<!-- tpu_fit table -->", "<!-- end tpu_fit table -->"  # in RESULTS.md
_K4 = ["training.patch_size=4"]
COLAB = ["training.steps=2000", "training.patch_size=4", "training.patch_fraction=2/3", "data.bos_first=true",
         "model.dtype=bfloat16", "training.batch_size=64", "data.eval_max_bytes=200000", "training.log_every=25"]

# (row id, preset, topology, overrides, what the row shows), cheapest first
ROWS: list[tuple[str, str, str, list[str], str]] = [
    ("125m-oom", "125m", "v5e:2x4", ["mesh.data=1", "mesh.fsdp=-1", "model.remat=none"], "refused"),
    ("370m-oom", "370m", "v6e:2x4", ["mesh.data=1", "mesh.fsdp=-1", "model.remat=none"], "refused"),
    ("1b-oom", "1b", "v5p:2x2x1", ["mesh.data=1", "mesh.fsdp=-1", "model.remat=none"], "refused"),
    ("7b-oom", "7b", "v5e:2x4", ["mesh.data=1", "mesh.fsdp=-1"], "refused"),
    ("125m-k4", "125m", "v5e:2x4", ["mesh.data=1", "mesh.fsdp=-1", *_K4], "fit"),
    # the Colab notebook's TPU branch (experiments/colab_demo.ipynb): 25m, bf16, 64 x 512, K = 4, one chip
    ("colab-v5e-1", "25m", "v5e:1x1", COLAB, "fit"),
    ("colab-v6e-1", "25m", "v6e:1x1", COLAB, "fit"),
    ("125m-splash-2048", "125m", "v5e:2x4", ["mesh.data=1", "mesh.fsdp=-1", "model.max_seq_len=8192",
                                             "data.seq_len=2048", "training.batch_size=64"], "attention"),
    ("125m-xla-2048", "125m", "v5e:2x4", ["mesh.data=1", "mesh.fsdp=-1", "model.max_seq_len=8192",
                                          "data.seq_len=2048", "training.batch_size=64", "model.attention=fused"],
     "attention"),
    ("125m-splash-8192", "125m", "v5e:2x4", ["mesh.data=1", "mesh.fsdp=-1", "model.max_seq_len=8192",
                                             "data.seq_len=8192", "training.batch_size=16"], "attention"),
    ("125m-xla-8192", "125m", "v5e:2x4", ["mesh.data=1", "mesh.fsdp=-1", "model.max_seq_len=8192",
                                          "data.seq_len=8192", "training.batch_size=16", "model.attention=fused"],
     "attention"),
    ("370m-k4", "370m", "v6e:2x4", ["mesh.data=1", "mesh.fsdp=-1", "training.grad_accum=2", *_K4], "fit"),
    ("1b-k4", "1b", "v5p:2x2x1", ["mesh.data=1", "mesh.fsdp=-1", "training.grad_accum=2", *_K4], "fit"),
    ("7b-k4", "7b", "v5p:2x4x4", ["mesh.data=1", "mesh.fsdp=-1", "training.grad_accum=2", *_K4], "fit"),
    ("7b-v5e-256", "7b", "v5e:16x16", ["mesh.data=1", "mesh.fsdp=-1"], "fit"),
]


def run_row(row, hlo_dir: Path | None = None) -> dict:
    """Compile one row (every stage) and return its JSON record; a refusal is recorded, not raised."""
    import jax

    from pcomp.config import Config
    from pcomp.errors import ConfigError
    from pcomp.train.aot import compile_for_topology, resolve

    rid, preset, topology, overrides, what = row
    target = resolve(topology)
    cfg = Config.preset(preset).override(*overrides)
    record = {"row": rid, "preset": preset, "topology": topology, "target": target.describe(),
              "overrides": overrides, "what": what, "jax": jax.__version__, "libtpu": _libtpu_version(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        def keep(stage, text):
            if hlo_dir is not None:
                hlo_dir.mkdir(parents=True, exist_ok=True)
                with gzip.open(hlo_dir / f"{rid}-{stage}.hlo.gz", "wt") as f:
                    f.write(text)

        reports = compile_for_topology(cfg, target, on_stage=lambda r: print(r.line(target), flush=True),
                                       on_hlo=keep)
        record["stages"] = [r.to_dict() for r in reports]
        record["error"] = next((r.error for r in reports if r.error), None)
    except ConfigError as e:  # refused before compiling (a mesh that does not divide, ...)
        record["stages"], record["error"] = [], str(e)
    return record


def _libtpu_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("libtpu")
    except Exception:  # noqa: BLE001
        return None


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _available(topology: str) -> str:
    """What the TPU compiler lets a program use per chip (`memory.TPU_AVAILABLE_BYTES`), in GiB. (The rows
    refused by the compiler itself name its limit in their error; the first of them were recorded when
    pcomp still checked against the nominal HBM, which their `hbm_bytes` keeps.)"""
    from pcomp.train.memory import TPU_AVAILABLE_BYTES

    return _gib(TPU_AVAILABLE_BYTES[topology.split(":")[0]])


def report(rows=ROWS) -> str:
    """The markdown table of the rows that have a JSON (one line per compiled stage)."""
    lines = ["| row | preset | topology | mesh | stage | global batch | remat | attention | args GiB | temps GiB | "
             "peak GiB | available GiB | verdict | compile s | collectives per step (count, GiB): AG / RS / AR / CP |",
             "|" + "---|" * 15]
    missing, errors = [], []
    for rid, preset, topology, overrides, what in rows:
        path = OUT / f"{rid}.json"
        if not path.exists():
            missing.append(rid)
            continue
        rec = json.loads(path.read_text())
        from pcomp.config import Config

        remat = Config.preset(preset).override(*overrides).model.remat
        if not rec["stages"]:
            lines.append(f"| {rid} | {preset} | {rec['target']} | - | - | - | {remat} | - | - | - | - | - | refused | - "
                         "| - |")
            errors.append(f"{rid}: `pcomp: error: {rec['error']}`")
        for st in rec["stages"]:
            m = st["memory"] or {}
            mesh = "x".join(str(v) for v in st["mesh"].values())
            c = st["collectives"]
            coll = " / ".join(f"{c[k]['count']}, {c[k]['bytes'] / 2**30:.2f}" if k in c else "n/a" for k in
                              ("all-gather", "reduce-scatter", "all-reduce", "collective-permute")) if c else "-"
            lines.append(f"| {rid} | {preset} | {rec['target']} | {mesh} | {st['stage']} (K={st['patch_size']}) | "
                         f"{st['rows']} x {st['seq_tokens']} | {remat} | {st['attention']} | "
                         f"{_gib(m.get('argument_bytes'))} | {_gib(m.get('temp_bytes'))} | {_gib(st['peak_bytes'])} | "
                         f"{_available(topology)} | {'fits' if st['fits'] else 'refused'} | {st['seconds']:.0f} | "
                         f"{coll} |")
            if not st["fits"]:
                errors.append(f"{rid} ({st['stage']} step): `pcomp: error: {st['error']}`")
    if errors:
        lines += ["", "Refusals, as `pcomp compile` (and `pcomp train`) print them:", ""]
        lines += [f"- {e}" for e in errors]
    if missing:
        lines.append("")
        lines.append("Rows still to compile: " + ", ".join(missing)
                     + " (`nice -n 19 python -m experiments.tpu_fit`).")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="", help="comma-separated row ids (default: every missing row)")
    ap.add_argument("--list", action="store_true", help="list the rows and whether each is done")
    ap.add_argument("--report", action="store_true", help="print the markdown table from the JSONs")
    ap.add_argument("--force", action="store_true", help="recompile rows that already have a JSON")
    ap.add_argument("--hlo-dir", type=Path, default=None, help="also write each stage's compiled HLO here (gzip)")
    ap.add_argument("--recount", type=Path, default=None, metavar="HLO_DIR",
                    help="count the collectives of the rows again from the HLO kept by --hlo-dir")
    ap.add_argument("--write", action="store_true", help="with --report: also put the table in RESULTS.md")
    args = ap.parse_args(argv)
    if args.recount:  # collectives counted again from kept HLO (--hlo-dir), e.g. after the counter learned a kind
        from pcomp.train.aot import collectives

        for path in sorted(OUT.glob("*.json")):
            rec = json.loads(path.read_text())
            for st in rec["stages"]:
                hlo = args.recount / f"{rec['row']}-{st['stage']}.hlo.gz"
                if hlo.exists():
                    with gzip.open(hlo, "rt") as f:
                        st["collectives"] = {k: dataclasses.asdict(c) for k, c in collectives(f.read()).items()}
                    path.write_text(json.dumps(rec, indent=1) + "\n")
                    print(f"tpu_fit: recounted {path.name} ({st['stage']}) from {hlo}")
        return 0
    if args.report:
        table = report()
        print(table)
        if args.write:
            results = OUT.parents[1] / "RESULTS.md"
            text = results.read_text()
            start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
            results.write_text(text[:start] + "\n" + table + "\n" + text[end:])
        return 0
    if args.list:
        for rid, preset, topology, overrides, what in ROWS:
            done = "done" if (OUT / f"{rid}.json").exists() else "todo"
            print(f"{done}  {rid:18s} {what:9s} pcomp compile --topology {topology} --config {preset} "
                  + " ".join(overrides))
        return 0
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    wanted = set(filter(None, args.rows.split(",")))
    unknown = wanted - {r[0] for r in ROWS}
    if unknown:
        print(f"tpu_fit: error: unknown rows {sorted(unknown)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    for row in ROWS:
        path = OUT / f"{row[0]}.json"
        if (wanted and row[0] not in wanted) or (path.exists() and not args.force):
            continue
        print(f"tpu_fit: {row[0]}: pcomp compile --topology {row[2]} --config {row[1]} {' '.join(row[3])}",
              flush=True)
        record = run_row(row, args.hlo_dir)
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"tpu_fit: {row[0]} -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
