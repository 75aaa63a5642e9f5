"""The `pcomp` command line: train, compile, eval, generate, demo (and the compressor's commands).

Every subcommand reports bad input as one line `pcomp: error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys

from pcomp.errors import ConfigError, PcompError, os_error


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
    summary = train(cfg)
    if summary.get("interrupted"):  # checkpoint saved (the trainer said where): 0 after SIGTERM, 130 after SIGINT
        return 130 if summary["interrupted"] == "SIGINT" else 0
    return 0


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
    from pcomp.compress.report import account_prepared, account_text
    from pcomp.config import Config
    from pcomp.data.prepared import is_prepared
    from pcomp.data.sources import load_documents
    from pcomp.errors import ConfigError
    from pcomp.train.load import load_trained

    _at_least("--batch-size", args.batch_size, 1)
    _at_least("--max-bytes", args.max_bytes, 0, " (0 = all)")
    # data.key=value or key=value, both meaning a key of the data section
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in args.overrides]
    dc = Config().override(*overrides).data if overrides else None
    run = load_trained(args.checkpoint)
    dc = dc or run.cfg.data
    source = args.data or run.cfg.data.source
    if is_prepared(source):  # M2 over compressed text: the dataset's own token stream and byte count
        if args.max_bytes:
            raise ConfigError("--max-bytes is not supported for a prepared dataset (bytes per token vary)")
        acc = account_prepared(run, source, args.split, args.batch_size)
    else:
        docs = {split: load_documents(source, split, eval_fraction=run.cfg.data.eval_fraction,
                                      text_field=dc.text_field, data_dir=dc.data_dir or None)
                for split in {args.split, "train"}}
        acc = account_text(run, docs[args.split], docs["train"], args.max_bytes, args.batch_size)
    loss = acc.nll_bits * math.log(2) / max(acc.n_tokens, 1)
    print(f"{source} [{args.split}]: {acc.n_bytes} bytes, {acc.n_tokens} tokens, "
          f"loss {loss:.4f} nats/token, bits/byte {acc.bits_per_byte:.4f}")
    print(acc.summary())


def _cmd_generate(args) -> None:
    from pcomp.models.generate import generate
    from pcomp.train.load import load_trained

    _at_least("--max-tokens", args.max_tokens, 1)
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError(f"--temperature {args.temperature} must be a finite number >= 0 (0 = greedy)")
    _at_least("--top-k", args.top_k, 0, " (0 = the whole vocabulary)")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed {args.seed} must be in [0, 2**32)")
    run = load_trained(args.checkpoint)
    tok = run.tokenizer
    prompt = args.prompt.encode("utf-8", "surrogateescape")  # the bytes given, even if not UTF-8
    if getattr(tok, "window_bits", None) is not None:  # M2 over Equal-Info windows: decode through M1
        return _generate_through_m1(run, prompt, args)
    if tok.name in _STREAM_CODED:  # M2 over gzip / static_ac / arith: decode the sampled stream as it grows
        return _generate_through_stream(run, prompt, args)
    ids = tok.encode(prompt)
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids]
    context = run.cfg.model.max_seq_len
    if not ids:
        raise ConfigError(f"--prompt is empty and tokenizer {tok.name} has no BOS to start from; give a prompt")
    if len(ids) > context:
        bos = " including BOS" if tok.bos_id is not None else ""
        raise ConfigError(f"--prompt is {len(ids)} tokens{bos} but the model's context is {context} tokens "
                          f"(model.max_seq_len); shorten the prompt")
    out = generate(run.graphdef, run.params, ids, max_new_tokens=args.max_tokens, max_len=context,
                   temperature=args.temperature, top_k=args.top_k, seed=args.seed, stop_id=tok.eos_id,
                   bos_id=tok.bos_id)
    sys.stdout.write((prompt + tok.decode(out)).decode("utf-8", errors="replace") + "\n")


_STREAM_CODED = ("gzip", "static_ac", "arith")  # compressed tokenizers without windows


def _generate_through_m1(run, prompt: bytes, args) -> None:
    """`pcomp generate` for an M2 over Equal-Info windows (`pcomp.compress.generate`): --max-tokens
    rounded up to whole windows; each window is printed as soon as M1 decodes it."""
    from pcomp.compress.generate import Utf8Stream, generate_text, tokens_per_window

    def skip(index: int, why: str) -> None:
        sys.stdout.flush()
        print(f"pcomp: warning: sampled window {index} is not a window M1 decodes ({why}); skipped",
              file=sys.stderr)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stream = Utf8Stream(write)
    windows = -(-args.max_tokens // tokens_per_window(run.tokenizer))
    generate_text(run, prompt, max_windows=windows, temperature=args.temperature, top_k=args.top_k,
                  seed=args.seed, on_bytes=stream, on_skip=skip, echo_prompt=True)
    stream.close()
    sys.stdout.write("\n")


def _generate_through_stream(run, prompt: bytes, args) -> None:
    """`pcomp generate` for an M2 over a stream code (`pcomp.compress.generate.generate_stream`): text is
    printed as the sampled bits determine it; an invalid gzip stream is one warning line and ends it."""
    from pcomp.compress.generate import Utf8Stream, generate_stream

    def error(why: str) -> None:
        sys.stdout.flush()
        print(f"pcomp: warning: {why}; generation stopped", file=sys.stderr)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stream = Utf8Stream(write)
    generate_stream(run, prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                    seed=args.seed, on_bytes=stream, on_error=error, echo_prompt=True)
    stream.close()
    sys.stdout.write("\n")


def _at_least(flag: str, value: int, low: int, note: str = "") -> None:
    if value < low:
        raise ConfigError(f"{flag} {value} must be >= {low}{note}")


def _cmd_demo(args) -> None:
    from pcomp.demo import run_demo

    run_demo(args.overrides)


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

    e = sub.add_parser("eval", help="held-out bits/byte of a trained run")
    e.add_argument("--checkpoint", required=True, help="the run's work directory")
    e.add_argument("--data", default=None, help="source to evaluate (default: the run's own); embedded | PATH | tfds:NAME")
    e.add_argument("--split", default="eval", choices=["eval", "train"])
    e.add_argument("--max-bytes", type=int, default=0, help="evaluate at most this many bytes (0 = all)")
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


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (already printed as one line) or --help
        return e.code if isinstance(e.code, int) else 2
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
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
