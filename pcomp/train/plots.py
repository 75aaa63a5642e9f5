"""Loss curves from a run's metrics.jsonl (matplotlib, no display needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pcomp.output import write_file


def plot_loss_curve(workdir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train/patch_loss", "train (patch level, nats/token)"), ("train/loss", "train (nats/token)"),
                       ("eval/loss", "held-out (nats/token)")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o" if key.startswith("eval") else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"pcomp run {workdir.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out else workdir / "loss_curve.png"
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_file(out, png.getvalue())  # renamed into place whole; a device or FIFO is written, not replaced
    return out
