"""Named presets: model shapes (`MODEL_PRESETS`, what `model=NAME` swaps in) and whole runs
(`RUN_PRESETS`, what `--config NAME` starts from). Data only: the schema and its checks are in
`pcomp.config`."""

from __future__ import annotations

import dataclasses
from typing import Any

from pcomp.config import Config, DataConfig, ModelConfig, TrainingConfig


def _model(name: str, **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, **kw)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # CPU unit-test size.
    "test-tiny": _model("test-tiny", d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128, scan_unroll=2),
    # Patch-scaling study (experiments/patch_scaling.py), bytes vocabulary (258, padded to 384);
    # the names give the parameter count with embeddings (count_params).
    "ps-30k": _model("ps-30k", d_model=24, n_layers=2, n_heads=4, d_ff=64, max_seq_len=128, scan_unroll=2),
    "ps-100k": _model("ps-100k", d_model=48, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128, scan_unroll=2),
    "ps-500k": _model("ps-500k", d_model=96, n_layers=4, n_heads=4, d_ff=256, max_seq_len=128, scan_unroll=4),
    # The CPU demo: trains in minutes.
    "demo": _model("demo", d_model=192, n_layers=4, n_heads=6, d_ff=512, max_seq_len=256, scan_unroll=4),
    # The Equal-Info Windows paper's compressor model M1: 3 layers, d=256, 4 heads, MLP 1024, bytes.
    "m1-3m": _model("m1-3m", d_model=256, n_layers=3, n_heads=4, d_ff=1024, max_seq_len=128, scan_unroll=3),
    "25m": _model("25m", d_model=512, n_layers=8, n_heads=8, d_ff=1408, max_seq_len=512),
    "125m": _model("125m", d_model=768, n_layers=12, n_heads=12, d_ff=2048, max_seq_len=1024),
    "370m": _model("370m", d_model=1024, n_layers=24, n_heads=16, d_ff=2816, max_seq_len=2048),
    "1b": _model("1b", d_model=2048, n_layers=16, n_heads=16, n_kv_heads=8, d_ff=5632, max_seq_len=2048),
    # Llama-2-7B's shape (with its 32,000-token vocabulary): a pod-slice model (experiments/tpu_fit.py
    # compiles it for v5p and v5e slices).
    "7b": _model("7b", d_model=4096, n_layers=32, n_heads=32, d_ff=11008, max_seq_len=4096, vocab_size=32000),
}

EVAL_MAX_BYTES_LARGE = 10_000_000  # held-out bytes the large presets (125m and up) evaluate on


def _large(name: str, **training: Any) -> Config:
    """A pod-scale run of MODEL_PRESETS[name]: bfloat16 compute, full remat, a 32k SentencePiece vocabulary,
    sequences of the model's max_seq_len, at most EVAL_MAX_BYTES_LARGE held-out bytes."""
    model = dataclasses.replace(MODEL_PRESETS[name], dtype="bfloat16", remat="full")
    return Config(model=model,
                  data=DataConfig(seq_len=model.max_seq_len, tokenizer="sentencepiece", vocab_size=32000,
                                  eval_max_bytes=EVAL_MAX_BYTES_LARGE),
                  training=TrainingConfig(workdir=f"runs/{name}", **training))


def _patch_scaling(name: str) -> Config:
    """A run of the patch-scaling study (experiments/patch_scaling.py, which sets the token budget):
    byte-level, 32 x 128 tokens per step."""
    return Config(model=MODEL_PRESETS[name], data=DataConfig(seq_len=128),
                  training=TrainingConfig(batch_size=32, steps=1000, lr=3e-3, workdir=f"runs/{name}"))


RUN_PRESETS: dict[str, Config] = {
    # Unit-test size; evaluates on the first 8 KB of held-out text (16 batches, not the whole split).
    "test-tiny": Config(
        model=MODEL_PRESETS["test-tiny"],
        data=DataConfig(seq_len=64, eval_max_bytes=8192),
        training=TrainingConfig(batch_size=8, steps=20, warmup_steps=2, log_every=5, checkpoint_every=10),
    ),
    "ps-30k": _patch_scaling("ps-30k"),
    "ps-100k": _patch_scaling("ps-100k"),
    "ps-500k": _patch_scaling("ps-500k"),
    "demo": Config(
        model=MODEL_PRESETS["demo"],
        data=DataConfig(seq_len=256),
        training=TrainingConfig(batch_size=16, steps=600, lr=3e-3, warmup_steps=60, log_every=10,
                                checkpoint_every=200, workdir="runs/demo"),
    ),
    "m1-3m": Config(
        model=MODEL_PRESETS["m1-3m"],
        data=DataConfig(seq_len=128, bos_first=True),
        training=TrainingConfig(batch_size=64, steps=3000, lr=2e-3, warmup_steps=200, workdir="runs/m1"),
    ),
    "25m": Config(
        model=MODEL_PRESETS["25m"],
        data=DataConfig(seq_len=512),
        training=TrainingConfig(batch_size=32, steps=5000, lr=1e-3, workdir="runs/25m"),
    ),
    # Large presets (`_large`) evaluate on at most EVAL_MAX_BYTES_LARGE of held-out text: the held-out set
    # is held in host memory on every process (0 = all of a corpus's validation split).
    # 125m and up recompute each block in the backward pass: at the paper's global batches the kept
    # activations would not fit a single-host slice (RESULTS.md, "Compile time and memory").
    "125m": _large("125m", batch_size=256, steps=20000, lr=6e-4, warmup_steps=1000),
    "370m": _large("370m", batch_size=512, steps=30000, lr=3e-4, warmup_steps=2000),
    "1b": _large("1b", batch_size=512, steps=50000, lr=3e-4, warmup_steps=2000),
    # Llama 2's 4M-token global batch (1024 x 4096); a pod slice only (v5p-64, v5e-256: RESULTS.md "TPU fit")
    "7b": _large("7b", batch_size=1024, steps=50000, lr=3e-4, warmup_steps=2000),
}
