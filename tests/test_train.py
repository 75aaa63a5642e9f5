"""Train step, evaluation metric, resume and sharding equivalence of the trainer."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pcomp.config import Config, MeshConfig
from pcomp.data import pipeline
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.models.sharding import make_mesh
from pcomp.train.checkpoint import Checkpointer
from pcomp.train.evaluation import nats_to_bits_per_byte
from pcomp.train.step import build_program, eval_step, init_params, make_optimizer
from pcomp.train.trainer import setup, train

TINY = Config.preset("test-tiny").override("training.progress=false", "data.seq_len=32")


def _text_file(tmp_path, n=400):
    words = "the quick brown fox jumps over the lazy dog and then it sleeps".split()
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(words, 9)) for _ in range(n))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def _one_step(cfg, mesh, batch, steps=1):
    """Run `steps` train steps of a fresh state on `mesh`; returns (params as numpy, metrics)."""
    program = build_program(cfg.model, cfg.training, mesh, steps=10, patch_size=cfg.training.patch_size)
    with jax.set_mesh(mesh):
        state = program.init(None)
        for _ in range(steps):
            state, metrics = program.step(state, batch)
        return jax.tree.map(np.asarray, state["params"]), jax.device_get(metrics), state


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b, t = cfg.training.batch_size, cfg.data.seq_len * cfg.training.patch_size
    return {"tokens": rng.integers(0, 258, (b, t)).astype(np.int32), "mask": np.ones((b, t), np.int32)}


@pytest.mark.slow
@pytest.mark.parametrize("patch_size", [1, 4])
def test_sharded_step_equals_single_device(patch_size):
    cfg = TINY.override(f"training.patch_size={patch_size}", "training.lr=1e-3")
    batch = _batch(cfg)
    p1, m1, _ = _one_step(cfg, make_mesh(MeshConfig(data=1), jax.devices()[:1]), batch, steps=2)
    p8, m8, state8 = _one_step(cfg, make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)), batch, steps=2)
    # the 8-device state really is sharded: the (stacked) MLP weights are split over fsdp x tensor, every
    # device holding all layers
    w = state8["params"]["blocks"]["mlp"]["w_gate"][...]
    assert w.shape[0] == cfg.model.n_layers
    assert w.sharding.shard_shape(w.shape) == (w.shape[0], w.shape[1] // 2, w.shape[2] // 2)
    # float32 reductions run in a different order across shards: agree to ~1e-6 relative
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    # two Adam steps move each weight by up to 2 * lr = 2e-3; the shardings agree far closer than that
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.slow
def test_weight_decay_skips_norm_scales_stacked_or_not():
    """With zero gradients an AdamW update is -lr * weight_decay * p for matrices (embedding, LM head,
    the stacked block matrices) and exactly zero for norm scales, including the stacked [layers, d] ones."""
    cfg = TINY.override("training.lr=0.1", "training.weight_decay=0.5", "training.warmup_steps=0")
    tx, _ = make_optimizer(cfg.training, 10)
    params = init_params(cfg.model, 0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    flat_p = dict(jax.tree_util.tree_leaves_with_path(params))
    seen = set()
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        name = jax.tree_util.keystr(path)
        p = np.asarray(flat_p[path])
        if "norm" in name:
            assert p.ndim == (2 if "blocks" in name else 1), name
            np.testing.assert_array_equal(np.asarray(u), 0.0, err_msg=name)
            seen.add("norm")
        else:
            np.testing.assert_allclose(np.asarray(u), -0.1 * 0.5 * p, rtol=1e-6, err_msg=name)
            seen.add("matrix")
    assert seen == {"norm", "matrix"}


@pytest.mark.slow
def test_grad_accumulation_equals_one_big_batch():
    cfg = TINY.override("training.lr=1e-3")
    batch = _batch(cfg, seed=1)
    p1, m1, _ = _one_step(cfg, make_mesh(MeshConfig(data=2), jax.devices()[:2]), batch)
    p2, m2, _ = _one_step(cfg.override("training.grad_accum=2"), make_mesh(MeshConfig(data=2), jax.devices()[:2]), batch)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.slow
def test_loss_decreases_on_tiny_corpus(tmp_path):
    cfg = TINY.override(f"data.source={_text_file(tmp_path)}", f"training.workdir={tmp_path / 'run'}",
                        "training.steps=40", "training.lr=3e-3", "training.log_every=1")
    summary = train(cfg)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[0] > math.log(200)  # starts near uniform over 258 ids
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    # the held-out text is the same kind of text: it is learned too (8 bits/byte = knows nothing)
    assert summary.eval["eval/bits_per_byte"] < 3.5


@pytest.mark.slow
@pytest.mark.parametrize("specials", [False, True])
def test_bits_per_byte_of_uniform_model(specials):
    """A model whose logits are all equal costs log2(V) bits per target token."""
    tok = ByteTokenizer(specials=specials)
    cfg = dataclasses.replace(TINY.model, vocab_size=tok.vocab_size, tie_embeddings=False)
    model = __import__("pcomp.models.transformer", fromlist=["Transformer"]).Transformer(cfg, nnx.Rngs(0))
    model.lm_head[...] = jnp.zeros_like(model.lm_head[...])
    graphdef, params = nnx.split(model)
    docs = [b"hello world\n" * 7, "caf\u00e9 \u00fcber".encode() * 5, b"x"]
    data = pipeline.eval_set(docs, tok, seq_len=16)
    nll = count = 0.0
    for batch in data.batches(4):
        n, c = eval_step(graphdef, params, batch)
        nll, count = nll + float(n), count + float(c)
    n_bytes = sum(len(d) for d in docs)
    assert data.n_bytes == n_bytes and count == data.n_targets
    bpb = nats_to_bits_per_byte(nll, data.n_bytes)
    np.testing.assert_allclose(bpb, math.log2(tok.vocab_size) * count / n_bytes, rtol=1e-6)
    if not specials:  # 256 ids: exactly 8 bits per target token
        np.testing.assert_allclose(bpb, 8 * (n_bytes - 1) / n_bytes, rtol=1e-6)


def _next_batch_after(workdir, cfg):
    """Restore the latest checkpoint's data iterator and return the batch it yields next."""
    ctx = setup(cfg, compile_steps=False)  # the data only
    ckpt = Checkpointer(workdir / "checkpoints", keep=3)
    step = ckpt.latest()
    meta = ckpt.restore_meta(step)
    stage = ctx.stages[meta["stage"]]
    it = ctx.data.batches(stage.seq_tokens, meta["data_start"])
    program = build_program(ctx.cfg.model, cfg.training, make_mesh(MeshConfig(), jax.devices()[:1]),
                            steps=stage.steps)
    ckpt.restore(step, program.abstract_state(), it)
    ckpt.close()
    return next(it)["tokens"]


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    """12 steps straight == the same run preempted twice and resumed: same params, same eval, same next
    batch, and metrics.jsonl holding each step once with the straight run's values. The first stop
    (step 6) resumes from the checkpoint the stop wrote; the second (step 10) is a kill before its
    checkpoint landed (the directory removed), so the run resumes from step 8 and logs 9 and 10 again."""
    base = TINY.override("mesh.fsdp=2", "training.steps=12", "training.checkpoint_every=4",
                         "training.log_every=1")
    straight = base.override(f"training.workdir={tmp_path / 'a'}")
    resumed = base.override(f"training.workdir={tmp_path / 'b'}")
    a = train(straight)
    stopped = train(resumed, stop_at=6)
    assert stopped.stopped_at == 6
    assert Checkpointer(tmp_path / "b" / "checkpoints", 3).latest() == 6
    assert train(resumed, stop_at=10).stopped_at == 10
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "10")
    b = train(resumed)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.eval["eval/bits_per_byte"] == b.eval["eval/bits_per_byte"]
    np.testing.assert_array_equal(_next_batch_after(tmp_path / "a", straight),
                                  _next_batch_after(tmp_path / "b", resumed))
    # each step logged once, with the straight run's values (losses included; timings aside)
    rows = lambda d: [json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    steps = lambda d: [r["step"] for r in rows(d) if "train/loss" in r]  # noqa: E731
    assert steps(tmp_path / "b") == steps(tmp_path / "a") == list(range(1, 13))
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "b")) == strip(rows(tmp_path / "a"))
