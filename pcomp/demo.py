"""`pcomp demo`: the main job. Trains a small byte-level LM on the embedded corpus (no download),
saves a checkpoint, prints held-out bits/byte and a sample, and writes a loss-curve PNG."""

from __future__ import annotations

from pcomp.config import Config
from pcomp.data.tokenizers import load_tokenizer
from pcomp.models.generate import generate
from pcomp.train.plots import plot_loss_curve
from pcomp.train.trainer import train


def run_demo(overrides: list[str] | tuple[str, ...] = (), prompt: str = "The ") -> dict:
    cfg = Config.preset("demo").override(*overrides)
    summary = train(cfg)
    workdir = summary["workdir"]
    png = plot_loss_curve(workdir)
    run_cfg = Config.load(f"{workdir}/config.json")
    tok = load_tokenizer(f"{workdir}/tokenizer")
    from pcomp.train.step import abstract_model

    graphdef, _ = abstract_model(run_cfg.model)
    ids = tok.encode(prompt.encode())
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids]
    out = generate(graphdef, summary["params"], ids, max_new_tokens=200, max_len=run_cfg.model.max_seq_len,
                   temperature=0.7, top_k=20, seed=0, stop_id=tok.eos_id)
    sample = prompt + tok.decode(out).decode("utf-8", errors="replace")
    ev = summary["eval"]
    print("\n=== pcomp demo ===")
    print(f"held-out bits/byte : {ev['eval/bits_per_byte']:.4f}  ({ev['eval/bytes']} bytes, "
          f"loss {ev['eval/loss']:.4f} nats/token)")
    print(f"checkpoint         : {workdir}/checkpoints")
    print(f"loss curve         : {png}")
    print(f"sample             :\n{sample}")
    return {**summary, "sample": sample, "plot": str(png)}
