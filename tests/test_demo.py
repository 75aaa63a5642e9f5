"""`pcomp demo` end to end at tiny settings: checkpoint, loss-curve PNG drawn from metrics.jsonl, the
printed bits/byte (the trainer's, and an independent reload-and-evaluate of the checkpoint) and the
printed sample (the checkpoint's own sampled tokens)."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

from pcomp.cli import main
from pcomp.data.sources import load_documents
from pcomp.models.generate import generate
from pcomp.train.evaluation import score_text
from pcomp.train.load import load_trained

TINY_DEMO = ["model=test-tiny", "data.seq_len=32", "training.batch_size=8", "training.steps=4", "training.log_every=1",
             "training.progress=false", "data.eval_max_bytes=3000"]


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; asserts the signature and the chunk layout."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys, monkeypatch):
    run = tmp_path / "demo"
    drawn = {}  # label -> (x, y) of every line of every figure the demo saves
    savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        for ax in fig.axes:
            for line in ax.get_lines():
                drawn[line.get_label()] = (list(line.get_xdata()), list(line.get_ydata()))
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    assert main(["demo", *TINY_DEMO, f"training.workdir={run}"]) == 0
    out = capsys.readouterr().out

    # the checkpoint and the run's summary
    summary = json.loads((run / "summary.json").read_text())
    trained = load_trained(run)
    assert trained.step == 4 and trained.cfg.model.d_model == 64  # test-tiny, 4 steps

    # the PNG: a real image of nonzero size, not blank, whose curves are metrics.jsonl's rows
    png = run / "loss_curve.png"
    assert f"loss curve         : {png}" in out
    width, height = _png_size(png.read_bytes())
    assert width > 100 and height > 100
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (height, width) and np.ptp(pixels[..., :3]) > 0.5
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    train_pts = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    eval_pts = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    assert [p[0] for p in train_pts] == [1, 2, 3, 4] and eval_pts
    assert drawn["train (nats/token)"] == tuple(map(list, zip(*train_pts)))
    assert drawn["held-out (nats/token)"] == tuple(map(list, zip(*eval_pts)))

    # the printed bits/byte is the trainer's (to printed precision), and an independent evaluation of
    # the saved checkpoint on one device agrees to float32 summation order (1e-5 relative)
    bpb = summary["eval"]["eval/bits_per_byte"]
    printed = re.search(r"held-out bits/byte : (\d+\.\d+)", out).group(1)
    assert printed == f"{bpb:.4f}"
    docs = load_documents("embedded", "eval", eval_fraction=trained.cfg.data.eval_fraction)
    again = score_text(trained, docs, max_bytes=3000, batch_size=trained.cfg.training.batch_size)
    assert again["bytes"] == summary["eval"]["eval/bytes"]
    np.testing.assert_allclose(again["bits_per_byte"], bpb, rtol=1e-5)

    # the printed sample is the checkpoint's own continuation of "The " (temperature 0.7, top-k 20, seed 0)
    tok = trained.tokenizer
    ids = [tok.bos_id, *tok.encode(b"The ")] if tok.bos_id is not None else tok.encode(b"The ")
    ref = generate(trained.graphdef, trained.params, ids, max_new_tokens=200, max_len=trained.cfg.model.max_seq_len,
                   temperature=0.7, top_k=20, seed=0, stop_id=tok.eos_id)
    sample = out.split("sample             :\n", 1)[1]
    assert sample == "The " + tok.decode(ref).decode("utf-8", errors="replace") + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_interrupted_demo_says_where_its_checkpoint_is(tmp_path, sig, code):
    """SIGINT / SIGTERM during `pcomp demo`: the step in flight finishes and is checkpointed, then the demo
    says where and ends as `pcomp train` does (130 / 0), with no plot, no sample and no traceback (it
    used to go on to sample and die on the missing evaluation, exit 1)."""
    run = tmp_path / "demo"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pcomp", "demo", *TINY_DEMO, "training.steps=400", "training.checkpoint_every=1000",
            f"training.workdir={run}"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("train/loss") >= 2):
        assert proc.poll() is None and time.time() < deadline, "the demo never reached step 2"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in out + err, err
    assert proc.returncode == code, err
    step = int(re.search(rf"pcomp: stopped by {sig.name} at step (\d+)", out).group(1))
    assert 2 <= step < 400
    assert (f"pcomp: demo stopped by {sig.name}: checkpoint saved in {run / 'checkpoints'} at step {step}; "
            "run the same command to resume") in out
    assert "=== pcomp demo ===" not in out and not (run / "loss_curve.png").exists()
    assert (run / "checkpoints" / str(step)).is_dir() and not (run / "summary.json").exists()
