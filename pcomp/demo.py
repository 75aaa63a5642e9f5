"""`pcomp demo`: the main job. Trains a small byte-level LM on the embedded corpus (no download),
saves a checkpoint, prints held-out bits/byte and a sample, and writes a loss-curve PNG.

A demo stopped by SIGINT / SIGTERM says where its checkpoint is and ends as `pcomp train` does (the
same command resumes it); it never plots, samples or reports a run that did not finish."""

from __future__ import annotations

from pcomp.config import Config
from pcomp.data.tokenizers import load_tokenizer
from pcomp.models.generate import generate
from pcomp.train.plots import plot_loss_curve
from pcomp.train.trainer import TrainResult, checkpoint_dir, train


def run_demo(overrides: list[str] | tuple[str, ...] = (), prompt: str = "The ") -> dict | TrainResult:
    """The demo's report ({**summary, "sample", "plot", "params"}), or the stopped run's `TrainResult`."""
    cfg = Config.preset("demo").override(*overrides)
    result = train(cfg)
    workdir = result.workdir
    if not result.finished:
        where = (f"checkpoint saved in {checkpoint_dir(cfg)} at step {result.stopped_at}"
                 if result.stopped_at is not None else f"stopped before the first step; nothing saved in {workdir}")
        print(f"pcomp: demo stopped by {result.interrupted}: {where}; run the same command to resume", flush=True)
        return result
    png = plot_loss_curve(workdir)
    run_cfg = Config.load(f"{workdir}/config.json")
    tok = load_tokenizer(f"{workdir}/tokenizer")
    from pcomp.train.step import abstract_model

    graphdef, _ = abstract_model(run_cfg.model)
    ids = tok.encode(prompt.encode())
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids]
    out = generate(graphdef, result.params, ids, max_new_tokens=200, max_len=run_cfg.model.max_seq_len,
                   temperature=0.7, top_k=20, seed=0, stop_id=tok.eos_id)
    sample = prompt + tok.decode(out).decode("utf-8", errors="replace")
    ev = result.eval
    print("\n=== pcomp demo ===")
    print(f"held-out bits/byte : {ev['eval/bits_per_byte']:.4f}  ({ev['eval/bytes']} bytes, "
          f"loss {ev['eval/loss']:.4f} nats/token)")
    print(f"checkpoint         : {workdir}/checkpoints")
    print(f"loss curve         : {png}")
    print(f"sample             :\n{sample}")
    return {**result.summary, "params": result.params, "sample": sample, "plot": str(png)}
