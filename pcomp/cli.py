"""The `pcomp` command line: train, compile, eval, generate, demo (and the compressor's commands).

Every subcommand reports bad input as one line `pcomp: error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading

from pcomp.errors import ConfigError, DataError, PcompError, os_error


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors (a missing argument, `--batch-size abc`) are one line
    `pcomp: error: ...` and exit status 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"pcomp: error: {message} (see {self.prog} --help)\n")


def _cmd_train(args) -> None:
    from pcomp.config import Config
    from pcomp.train.distributed import initialize
    from pcomp.train.trainer import train

    initialize()
    cfg = Config.load(args.config).override(*args.overrides)
    # a stopped run checkpointed (the trainer said where): 0 after SIGTERM, 130 after SIGINT
    return train(cfg).exit_code


def _cmd_compile(args) -> int:
    """Compile every stage's train step for a topology with no device; exit 2 when one does not fit."""
    import os

    if "jax" not in __import__("sys").modules:
        # a compile needs no accelerator: keep jax off any attached TPU / GPU (and libtpu's slow probe), and
        # give cpu:N its N simulated devices
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        gen, _, n = args.topology.partition(":")
        flags = os.environ.get("XLA_FLAGS", "")
        if gen == "cpu" and n.isdigit() and "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    from pcomp.config import Config
    from pcomp.train.quiet import quiet_stderr

    with quiet_stderr():  # jax loads an installed CUDA plugin at import, which says it finds no GPU
        from pcomp.train.aot import compile_for_topology, resolve

    cfg = Config.load(args.config).override(*args.overrides)
    cfg.validate()
    target = resolve(args.topology)
    reports = compile_for_topology(cfg, target, on_stage=lambda r: print(r.line(target), flush=True))
    refused = next((r for r in reports if not r.fits), None)
    if refused is not None:
        raise ConfigError(refused.error)
    return 0


def _cmd_eval(args) -> None:
    """`pcomp eval`: bits/byte of a trained run. Default: the held-out split of the run's own source.
    `--data` names other text (files, .jsonl, directories, TFDS, prepared datasets; several at once):
    a local source other than the run's own is scored whole, since the run's cut (`data.eval_fraction`)
    means nothing for text it never saw, unless `--split` asks for that cut; a directory is scored
    file by file. Each scored text gets one line saying which bytes it covers, several a total line
    (their bits over their bytes), then the accounting of all of it (`Accounting.summary`)."""
    from pcomp.train.evaluation import Accounting
    from pcomp.train.load import load_trained

    _at_least("--batch-size", args.batch_size, 1)
    _at_least("--max-bytes", args.max_bytes, 0, " (0 = all)")
    sources, overrides = _eval_sources(args.data or [], args.overrides)
    # data.key=value or key=value, both meaning a key of the data section
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in overrides]
    run = load_trained(args.checkpoint)
    dc = run.cfg.override(*overrides).data
    reference = _UnigramReference(run, dc)
    scored = []
    for source in sources or [run.cfg.data.source]:
        for name, part, acc in _score_source(run, source, dc, args, reference):
            print(_eval_line(name, part, acc), flush=True)  # as each is scored: a test set takes a while
            scored.append(acc)
    total = Accounting.combine(scored)
    if len(scored) > 1:
        print(_eval_line("total", f"{len(scored)} texts", total))
    print(total.summary())


_PARTS = {"train": "train part", "eval": "held-out part"}
WHOLE = "whole file"


def _eval_line(name: str, part: str, acc) -> str:
    loss = acc.nll_bits * math.log(2) / max(acc.n_tokens, 1)
    return (f"{name} [{part}]: {acc.n_bytes} bytes, {acc.n_tokens} tokens, "
            f"loss {loss:.4f} nats/token, bits/byte {acc.bits_per_byte:.4f}")


def _eval_sources(data: list[str], overrides: list[str]) -> tuple[list[str], list[str]]:
    """(sources, overrides): `--data a.txt b.txt text_field=x` takes the override into --data (argparse
    gives every following word to a list option), so a `key=value` / `data.key=value` word that is no
    existing path is an override wherever it stands."""
    is_override = lambda w: re.fullmatch(r"(data\.)?\w+=.*", w) is not None and not os.path.exists(w)  # noqa: E731
    return [w for w in data if not is_override(w)], [w for w in data if is_override(w)] + list(overrides)


class _UnigramReference:
    """The run's own train split in its tokens (`run_train_tokens`), read once and only if needed; for
    the run's own source read as `--data` reads it (`data_dir`, `text_field` overrides), for other text
    with the run's settings. None, after one warning line, when it cannot be read here (a run copied
    away from its data): the model's bits/byte need no reference."""

    def __init__(self, run, dc):
        self.run, self.dc, self.cache = run, dc, {}

    def __call__(self, own: bool):
        from pcomp.train.evaluation import run_train_tokens

        if own not in self.cache:
            try:
                self.cache[own] = run_train_tokens(self.run, self.dc if own else None)
            except (PcompError, OSError) as e:
                print(f"pcomp: warning: no unigram reference: the run's train split "
                      f"({self.run.cfg.data.source}) cannot be read here: {e}", file=sys.stderr)
                self.cache[own] = None
        return self.cache[own]


def _score_source(run, source: str, dc, args, reference):
    """(name, which bytes, Accounting) of each text of one `--data` source, as it is scored (see
    `_cmd_eval`)."""
    from pcomp.train.evaluation import account_prepared, account_text
    from pcomp.data.prepared import is_prepared
    from pcomp.data.sources import (TFDS_PREFIX, directory_documents, load_documents, same_source,
                                    whole_documents)

    if is_prepared(source):  # M2 over compressed text: the dataset's own token stream and byte count
        if args.max_bytes:
            raise ConfigError("--max-bytes is not supported for a prepared dataset (bytes per token vary)")
        split = args.split or "eval"
        yield source, _PARTS[split], account_prepared(run, source, split, args.batch_size)
        return
    own = same_source(source, run.cfg.data.source)
    kw = dict(text_field=dc.text_field, data_dir=dc.data_dir or None)
    if own or args.split or source.startswith(TFDS_PREFIX):  # a cut: the run's, or a TFDS dataset's own splits
        split = args.split or "eval"
        docs = load_documents(source, split, eval_fraction=run.cfg.data.eval_fraction, **kw)
        yield source, _PARTS[split], account_text(run, docs, reference(own), args.max_bytes, args.batch_size)
        return
    whole = whole_documents(source, text_field=dc.text_field)
    names = directory_documents(source)
    if names is None:
        yield source, WHOLE, account_text(run, whole, reference(own), args.max_bytes, args.batch_size)
        return
    if len(names) != len(whole):
        raise DataError(f"data directory {source} changed while it was read; expected its files to stay as they were")
    for i, name in enumerate(names):
        yield name, WHOLE, account_text(run, whole[i : i + 1], reference(own), args.max_bytes, args.batch_size)


def _cmd_generate(args) -> None:
    from pcomp.compress.generate import Utf8Stream, generate_text
    from pcomp.train.load import load_trained

    _at_least("--max-tokens", args.max_tokens, 1)
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError(f"--temperature {args.temperature} must be a finite number >= 0 (0 = greedy)")
    _at_least("--top-k", args.top_k, 0, " (0 = the whole vocabulary)")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed {args.seed} must be in [0, 2**32)")
    run = load_trained(args.checkpoint)
    prompt = args.prompt.encode("utf-8", "surrogateescape")  # the bytes given, even if not UTF-8

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def warn(message: str) -> None:
        sys.stdout.flush()
        print(f"pcomp: warning: {message}", file=sys.stderr)

    # printed as it is decoded (Ctrl-C keeps the text so far); a UTF-8 sequence split across ids or
    # windows is held until complete, so the text is that of decoding the whole
    stream = Utf8Stream(write)
    generate_text(run, prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                  seed=args.seed, on_bytes=stream, on_warning=warn, echo_prompt=True)
    stream.close()
    sys.stdout.write("\n")


def _at_least(flag: str, value: int, low: int, note: str = "") -> None:
    if value < low:
        raise ConfigError(f"{flag} {value} must be >= {low}{note}")


def _cmd_demo(args) -> None:
    from pcomp.demo import run_demo
    from pcomp.train.trainer import TrainResult

    report = run_demo(args.overrides)
    return report.exit_code if isinstance(report, TrainResult) else 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pcomp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a model: pcomp train --config PRESET key=value ...")
    t.add_argument("--config", default="demo", help="preset name or JSON file (e.g. runs/x/config.json)")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.lr=1e-3 mesh.fsdp=2 model=25m")
    t.set_defaults(fn=_cmd_train)

    c = sub.add_parser("compile", help="compile the train steps for a TPU topology (no TPU needed): per-chip memory, "
                                       "fit, collectives")
    c.add_argument("--topology", required=True,
                   help="v4:2x2x1, v5e:2x4, v5p:2x2x2, v6e:2x2, ... (generation:chips per axis), an accelerator "
                        "type (v5litepod-8, v4-32), h100:N (GPUs; needs jax's CUDA plugin) or cpu:N")
    c.add_argument("--config", default="demo", help="preset name or JSON file, as for pcomp train")
    c.add_argument("overrides", nargs="*", help="section.key=value, as for pcomp train (e.g. mesh.fsdp=-1)")
    c.set_defaults(fn=_cmd_compile)

    e = sub.add_parser("eval", help="bits/byte of a trained run: its held-out split, or whole files")
    e.add_argument("--checkpoint", required=True, help="the run's work directory")
    e.add_argument("--data", nargs="+", default=None,
                   help="sources to score (default: the run's own): embedded | FILE | DIR | tfds:NAME | prepared "
                        "dataset; a file or directory other than the run's own source is scored whole (a "
                        "directory file by file), one line each and a total")
    e.add_argument("--split", default=None, choices=["eval", "train"],
                   help="score this part of the run's cut (data.eval_fraction): the default for the run's own "
                        "source (eval), TFDS and prepared datasets; for other files only when given")
    e.add_argument("--max-bytes", type=int, default=0,
                   help="score at most this many bytes of each source, or of each file of a directory (0 = all)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("overrides", nargs="*", help="data.key=value for the evaluated source (text_field, data_dir)")
    e.set_defaults(fn=_cmd_eval)

    g = sub.add_parser("generate", help="sample a continuation of a prompt")
    g.add_argument("--checkpoint", required=True, help="the run's work directory")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-tokens", type=int, default=200,
                   help="tokens to generate; past the model's context the window slides by half a context")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens (0 = all)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=_cmd_generate)

    d = sub.add_parser("demo", help="train a small byte-level model on the embedded corpus (CPU, minutes)")
    d.add_argument("overrides", nargs="*", help="section.key=value overrides of the demo preset")
    d.set_defaults(fn=_cmd_demo)

    _add_compress_commands(sub)
    from pcomp.hf import add_commands as add_hf_commands

    add_hf_commands(sub)
    return p


def _add_compress_commands(sub) -> None:
    try:
        from pcomp.compress.cli import add_commands
    except ImportError:  # the compressor package is optional at this layer
        return
    add_commands(sub)


def _quiet_shutdown() -> None:
    """After the one-line error: background writers failing again on the way out (TensorBoard's flush
    thread and atexit hook on a full disk, say) would bury it under tracebacks; the process is ending."""
    import threading

    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None


class _Terminated(BaseException):
    """SIGTERM outside training (`pcomp prepare`, compress, ...): unwinds like Ctrl-C's KeyboardInterrupt,
    so `with` blocks clean up (a claimed output's temporary file goes; prepare's finished shards stay,
    and the same command resumes). Training installs its own handler (`pcomp.train.signals`)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (already printed as one line) or --help
        return e.code if isinstance(e.code, int) else 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        rc = args.fn(args)
    except PcompError as e:
        print(f"pcomp: error: {e}", file=sys.stderr)
        _quiet_shutdown()
        return 2
    except OSError as e:  # unreadable / unwritable paths are the user's to fix, not a crash
        print(f"pcomp: error: {os_error(None, e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pcomp: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("pcomp: terminated by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
