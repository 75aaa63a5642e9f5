"""Patch-level training: patch embeddings, the next-patch loss against naive loops, the K = 1
reduction to token training, gradients, bad input, the two-stage plan, and a two-stage run
with exact resume at the stage boundary."""

from __future__ import annotations

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from pcomp.config import Config, TrainingConfig
from pcomp.data.sources import load_documents
from pcomp.errors import ConfigError
from pcomp.models.sharding import make_mesh
from pcomp.models.transformer import Transformer
from pcomp.patching import (check_patch_size, next_patch_loss, next_patch_nll, patchify, plan_stages,
                            relative_cost)
from pcomp.train.checkpoint import Checkpointer
from pcomp.train.evaluation import score_text
from pcomp.train.load import load_trained
from pcomp.train.metrics import flops_per_position
from pcomp.train.step import (LRSchedule, abstract_model, build_program, eval_step, learning_rate, make_optimizer,
                              objective, warmup_steps)
from pcomp.train.trainer import setup, train

TINY = Config.preset("test-tiny").override("training.progress=false", "data.seq_len=32")


# --- naive references ----------------------------------------------------------------------------
def naive_patchify(x_btd: np.ndarray, k: int) -> np.ndarray:
    b, t, d = x_btd.shape
    out_bnd = np.zeros((b, t // k, d), np.float64)
    for bi in range(b):
        for i in range(t // k):
            out_bnd[bi, i] = sum(x_btd[bi, i * k + j].astype(np.float64) for j in range(k)) / k
    return out_bnd


def naive_next_patch(logits_bnv: np.ndarray, tokens_bt: np.ndarray, k: int, mask_bt=None):
    """(mean NLL, summed NLL, target count, summed lse^2 over patch positions with a real target),
    one target at a time, log-softmax in float64."""
    b, n, _ = logits_bnv.shape
    nll, count, lse_sq = 0.0, 0.0, 0.0
    for bi in range(b):
        for i in range(n - 1):
            row = logits_bnv[bi, i].astype(np.float64)
            lse = row.max() + math.log(np.exp(row - row.max()).sum())
            any_real = False
            for j in range(k):
                pos = (i + 1) * k + j
                if mask_bt is not None and mask_bt[bi, pos] == 0:
                    continue
                nll += lse - row[tokens_bt[bi, pos]]
                count += 1
                any_real = True
            lse_sq += lse * lse if any_real else 0.0
    return nll / max(count, 1.0), nll, count, lse_sq


def _tiny_model(seed: int = 0):
    """(graphdef, params) of the test-tiny transformer (byte vocabulary 258, padded to 384)."""
    return nnx.split(Transformer(TINY.model, nnx.Rngs(params=seed)))


def _tokens(b: int, t: int, seed: int = 0, vocab: int = 258) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, t)), jnp.int32)


def _assert_trees_equal(x, y, atol: float = 0.0):
    assert jax.tree.structure(x) == jax.tree.structure(y)
    for (path, a), b in zip(jax.tree.leaves_with_path(x), jax.tree.leaves(y)):
        a, b = np.asarray(a), np.asarray(b)
        if atol:
            np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))
        else:
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


# --- patchify and the next-patch loss ------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(k=st.sampled_from([1, 2, 3, 4, 8]), b=st.integers(1, 3), n=st.integers(1, 5), d=st.integers(1, 6),
       seed=st.integers(0, 2**31))
def test_patchify_is_mean_of_each_k_tokens(k, b, n, d, seed):
    x_btd = np.random.default_rng(seed).normal(size=(b, n * k, d)).astype(np.float32)
    out_bnd = np.asarray(patchify(jnp.asarray(x_btd), k))
    assert out_bnd.shape == (b, n, d)
    np.testing.assert_allclose(out_bnd, naive_patchify(x_btd, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_next_patch_loss_matches_naive_loop(k, b, masked):
    rng = np.random.default_rng(100 * k + 10 * b + masked)
    n, v = 5, 11
    logits_bnv = (3.0 * rng.normal(size=(b, n, v))).astype(np.float32)
    tokens_bt = rng.integers(0, v, (b, n * k)).astype(np.int32)
    mask_bt = (rng.random((b, n * k)) > 0.35).astype(np.int32) if masked else None
    if masked:
        mask_bt[0, k] = 1  # at least one target survives
    want, nll_want, count_want, lse_sq_want = naive_next_patch(logits_bnv, tokens_bt, k, mask_bt)
    mask = None if mask_bt is None else jnp.asarray(mask_bt)
    got = next_patch_loss(jnp.asarray(logits_bnv), jnp.asarray(tokens_bt), k, mask)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    nll, count, lse_sq = next_patch_nll(jnp.asarray(logits_bnv), jnp.asarray(tokens_bt), k, mask)
    assert float(count) == count_want == (mask_bt[:, k:].sum() if masked else b * (n - 1) * k)
    np.testing.assert_allclose([float(nll), float(lse_sq)], [nll_want, lse_sq_want], rtol=1e-5)


def test_fully_masked_loss_is_zero_not_nan():
    logits_bnv = jnp.zeros((2, 3, 5))
    tokens_bt = jnp.zeros((2, 6), jnp.int32)
    assert float(next_patch_loss(logits_bnv, tokens_bt, 2, jnp.zeros((2, 6), jnp.int32))) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("b,t", [(1, 2), (3, 17), (4, 64)])
def test_k1_is_token_cross_entropy(b, t):
    rng = np.random.default_rng(t)
    logits_btv = jnp.asarray(4.0 * rng.normal(size=(b, t, 50)), jnp.float32)
    tokens_bt = _tokens(b, t, seed=t, vocab=50)
    want = optax.softmax_cross_entropy_with_integer_labels(logits_btv[:, :-1], tokens_bt[:, 1:]).mean()
    np.testing.assert_allclose(float(next_patch_loss(logits_btv, tokens_bt, 1)), float(want), rtol=1e-6)
    x_btd = jnp.asarray(rng.normal(size=(b, t, 3)), jnp.float32)
    assert patchify(x_btd, 1) is x_btd


@pytest.mark.slow
def test_objective_k1_equals_token_loss_and_gradients():
    """Through the model: the patch path at K = 1 is plain next-token training (loss and gradients)."""
    graphdef, params = _tiny_model()
    tokens_bt = _tokens(4, 32, seed=1)
    mask_bt = jnp.ones_like(tokens_bt)
    total = jnp.float32(4 * 31)

    def token_loss(p):
        logits_btv = nnx.merge(graphdef, p)(tokens_bt)
        return optax.softmax_cross_entropy_with_integer_labels(logits_btv[:, :-1], tokens_bt[:, 1:]).mean()

    def patch_loss(p):
        return objective(p, graphdef, tokens_bt, mask_bt, 1, 0.0, total)[0]

    loss_tok, grads_tok = jax.jit(jax.value_and_grad(token_loss))(params)
    loss_patch, grads_patch = jax.jit(jax.value_and_grad(patch_loss))(params)
    np.testing.assert_allclose(float(loss_patch), float(loss_tok), rtol=0, atol=1e-6)
    _assert_trees_equal(grads_patch, grads_tok, atol=1e-6)


@pytest.mark.slow
def test_objective_k4_is_model_on_mean_embeddings():
    """The K = 4 objective is the naive loss of the model run on hand-made mean embeddings at
    positions 0 .. T-1 (patch i = mean of the model's own embeddings of tokens 4i .. 4i+3)."""
    graphdef, params = _tiny_model(seed=3)
    k, b, t = 4, 2, 32
    tokens_bt = _tokens(b, t, seed=2)
    model = nnx.merge(graphdef, params)
    table_vd = np.asarray(model.embed[...])
    x_bnd = naive_patchify(table_vd[np.asarray(tokens_bt)], k).astype(np.float32)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(embeddings_btd=x))
    logits_bnv = np.asarray(forward(params, jnp.asarray(x_bnd)))[..., : TINY.model.vocab_size]
    want = naive_next_patch(logits_bnv, np.asarray(tokens_bt), k)[0]
    total = jnp.float32(b * (t - k))
    loss_fn = jax.jit(lambda p: objective(p, graphdef, tokens_bt, jnp.ones_like(tokens_bt), k, 0.0, total))
    got, (_, count) = loss_fn(params)
    assert float(count) == b * (t - k)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.slow
def test_patch_gradients_finite_and_nonzero_for_every_parameter():
    graphdef, params = _tiny_model()
    tokens_bt = _tokens(4, 64, seed=5)
    grads = jax.jit(jax.grad(lambda p: objective(p, graphdef, tokens_bt, jnp.ones_like(tokens_bt), 4,
                                                          1e-4, jnp.float32(4 * 60))[0]))(params)
    leaves = jax.tree.leaves_with_path(grads)
    assert any("embed" in jax.tree_util.keystr(p) for p, _ in leaves)
    for path, g in leaves:
        g = np.asarray(g)
        assert np.isfinite(g).all(), jax.tree_util.keystr(path)
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)


# --- bad input -----------------------------------------------------------------------------------
def test_bad_input_is_config_error():
    x_btd = jnp.zeros((2, 10, 4))
    with pytest.raises(ConfigError, match="not divisible by patch_size=4"):
        patchify(x_btd, 4)
    with pytest.raises(ConfigError, match="not divisible"):
        check_patch_size(30, 8)
    for k in (0, -2):
        with pytest.raises(ConfigError, match=">= 1"):
            patchify(x_btd, k)
        with pytest.raises(ConfigError, match=">= 1"):
            plan_stages(token_budget=1000, batch_size=2, seq_len=8, patch_size=k, patch_fraction=0.5)
    with pytest.raises(ConfigError, match="patch_size"):
        TINY.override("training.patch_size=0").validate()
    for lam in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match="patch_fraction"):
            TINY.override(f"training.patch_fraction={lam}").validate()
    with pytest.raises(ConfigError, match="does not match"):  # 12 tokens for 3 patches of K = 4 would be right
        next_patch_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 10), jnp.int32), 4)
    with pytest.raises(ConfigError, match="does not match"):  # batch mismatch
        next_patch_loss(jnp.zeros((2, 3, 5)), jnp.zeros((3, 12), jnp.int32), 4)


def test_train_rejects_bad_patch_fraction_before_any_work(tmp_path):
    cfg = TINY.override("training.patch_size=4", "training.patch_fraction=1.5", f"training.workdir={tmp_path}/w")
    with pytest.raises(ConfigError, match="patch_fraction"):
        train(cfg)
    assert not (tmp_path / "w").exists()


# --- the two-stage plan --------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 5000), batch=st.sampled_from([1, 8, 16, 64]), seq=st.sampled_from([16, 128, 1024]),
       k=st.sampled_from([2, 3, 4, 8, 16]), lam=st.sampled_from([0.1, 0.5, 2 / 3, 0.75, 0.8, 0.99]))
def test_plan_splits_token_budget(steps, batch, seq, k, lam):
    d = steps * batch * seq
    patch, token = plan_stages(token_budget=d, batch_size=batch, seq_len=seq, patch_size=k, patch_fraction=lam)
    assert (patch.name, patch.patch_size, patch.seq_tokens) == ("patch", k, k * seq)
    assert (token.name, token.patch_size, token.seq_tokens) == ("token", 1, seq)
    assert patch.steps >= 1 and token.steps >= 1
    # within half a step of the exact split (a whole step where max(1, .) lifts a zero-step stage)
    slack1 = 0.5 if lam * d >= 0.5 * batch * k * seq else 1.0
    slack2 = 0.5 if (1 - lam) * d >= 0.5 * batch * seq else 1.0
    assert abs(patch.tokens(batch) - lam * d) <= slack1 * batch * k * seq + 1e-6
    assert abs(token.tokens(batch) - (1 - lam) * d) <= slack2 * batch * seq + 1e-6


def test_plan_edge_cases():
    d = 300 * 16 * 128
    (only,) = plan_stages(token_budget=d, batch_size=16, seq_len=128, patch_size=1, patch_fraction=2 / 3)
    assert (only.name, only.patch_size, only.steps, only.tokens(16)) == ("token", 1, 300, d)
    (only,) = plan_stages(token_budget=d, batch_size=16, seq_len=128, patch_size=4, patch_fraction=0.0)
    assert (only.name, only.steps) == ("token", 300)
    (only,) = plan_stages(token_budget=d, batch_size=16, seq_len=128, patch_size=4, patch_fraction=1.0)
    assert (only.name, only.patch_size, only.steps, only.seq_tokens, only.tokens(16)) == ("patch", 4, 75, 512, d)
    patch, token = plan_stages(token_budget=d, batch_size=16, seq_len=128, patch_size=4, patch_fraction=2 / 3)
    assert (patch.steps, token.steps) == (50, 100)
    assert (patch.tokens(16), token.tokens(16)) == (2 * d // 3, d // 3)


def test_relative_cost():
    assert relative_cost(4, 2 / 3) == pytest.approx(0.5, rel=1e-15)
    assert relative_cost(1, 2 / 3) == 1.0
    assert relative_cost(2, 0.5) == 0.75
    assert relative_cost(8, 1.0) == 0.125
    assert relative_cost(4, 0.0) == 1.0


def test_relative_cost_exact_for_paper_setting():
    assert relative_cost(4, 2 / 3) == 0.5


# --- a two-stage run, preempted and resumed at the stage boundary -------------------------------
def _corpus(tmp_path) -> str:
    words = "patch level training feeds the mean of four token embeddings through the same model".split()
    rng = np.random.default_rng(0)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)))
    return str(path)


def _two_stage_cfg(tmp_path, name: str) -> Config:
    return TINY.override("training.patch_size=4", "training.steps=24", f"data.source={_corpus(tmp_path)}",
                         f"training.workdir={tmp_path / name}")


def _restore(cfg_saved: Config, workdir, step: int, stage_steps: int):
    """(train state, meta) of checkpoint `step`, restored on the run's mesh like the trainer does."""
    program = build_program(cfg_saved.model, cfg_saved.training, make_mesh(cfg_saved.mesh), steps=stage_steps)
    abstract = program.abstract_state()
    ckpt = Checkpointer(workdir / "checkpoints", keep=3)
    try:
        return ckpt.restore_params(step, abstract), ckpt.restore_meta(step)
    finally:
        ckpt.close()


@pytest.mark.slow
def test_two_stage_run_resumes_exactly_at_stage_boundary(tmp_path):
    cfg_a, cfg_b = _two_stage_cfg(tmp_path, "a"), _two_stage_cfg(tmp_path, "b")
    tc = cfg_a.training
    d = tc.steps * tc.batch_size * cfg_a.data.seq_len
    patch, token = plan_stages(token_budget=d, batch_size=tc.batch_size, seq_len=cfg_a.data.seq_len,
                               patch_size=4, patch_fraction=tc.patch_fraction)
    s1, s2 = patch.steps, token.steps
    assert (s1, s2) == (4, 8)

    full = train(cfg_a)  # uninterrupted

    # (a) the checkpoint written at the end of stage 1 ...
    saved_cfg = Config.load(str(tmp_path / "a" / "config.json"))
    state1, meta = _restore(saved_cfg, tmp_path / "a", s1, s1)
    assert (meta["stage"], meta["stage_step"], meta["global_step"]) == (0, s1, s1)
    assert [s["name"] for s in meta["summaries"]] == ["patch"]
    # ... is what stage 2 starts from, with a fresh optimizer (the trainer's stage-2 initialisation)
    program2 = build_program(saved_cfg.model, saved_cfg.training, make_mesh(saved_cfg.mesh), steps=s2,
                             first_stage=False)
    with jax.set_mesh(program2.mesh):
        init2 = program2.init(state1["params"])
    _assert_trees_equal(init2["params"], state1["params"])
    assert int(init2["step"]) == 0
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(init2["opt_state"]))
    # the loss logged at stage 2's first step (computed before its update) is the token-level loss of
    # exactly these parameters on stage 2's first batch
    ctx = setup(cfg_a, compile_steps=False)  # the data only
    p1 = ctx.stages[0]
    batch = next(ctx.data.batches(ctx.stages[1].seq_tokens, ctx.data.next_start(p1.seq_tokens, p1.steps, 0, -1)))
    batch = {"tokens": jnp.asarray(batch["tokens"]), "mask": jnp.ones(batch["tokens"].shape, jnp.int32)}
    graphdef, _ = abstract_model(saved_cfg.model)
    nll, count = jax.jit(eval_step, static_argnums=0)(graphdef, state1["params"], batch)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    first_token = next(r for r in rows if r["step"] == s1 + 1 and "train/loss" in r)
    np.testing.assert_allclose(first_token["train/loss"], float(nll / count), rtol=1e-5)
    # ... and a run preempted right after it (only that checkpoint on disk) resumes into stage 2 and
    # ends exactly like the uninterrupted run, bit for bit
    shutil.copytree(tmp_path / "a" / "checkpoints" / str(s1), tmp_path / "b" / "checkpoints" / str(s1))
    resumed = train(cfg_b)
    _assert_trees_equal(resumed.params, full.params)
    assert resumed.stages == full.stages
    assert resumed.eval == full.eval
    resumed_rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["step"] for r in resumed_rows) == s1 + 1  # nothing of stage 1 was re-run

    # (b) cost, tokens and FLOPs of the two stages, and what each stage logs
    assert full.summary["relative_cost"] == pytest.approx(0.5, rel=1e-15)
    stage_p, stage_t = full.stages
    assert (stage_p["name"], stage_p["patch_size"], stage_p["steps"]) == ("patch", 4, s1)
    assert (stage_t["name"], stage_t["patch_size"], stage_t["steps"]) == ("token", 1, s2)
    assert stage_p["tokens"] == 2 * d // 3 and stage_t["tokens"] == d // 3
    baseline_flops = tc.steps * tc.batch_size * cfg_a.data.seq_len * flops_per_position(cfg_a.model, 32)
    assert stage_p["flops"] + stage_t["flops"] == 0.5 * baseline_flops
    # each stage's end-of-stage held-out bits/byte (8-device mesh) = an independent evaluation of the
    # checkpoint at the stage's last step, reloaded on one device (float32 summation order: 1e-5)
    eval_docs = load_documents(saved_cfg.data.source, "eval", eval_fraction=saved_cfg.data.eval_fraction)
    for stage, step in ((stage_p, s1), (stage_t, s1 + s2)):
        again = score_text(load_trained(tmp_path / "a", step=step), eval_docs)
        np.testing.assert_allclose(stage["end_bits_per_byte"], again["bits_per_byte"], rtol=1e-5)
    assert full.eval["eval/bits_per_byte"] == stage_t["end_bits_per_byte"]

    train_rows = [r for r in rows if "train/stage" in r]
    patch_rows = [r for r in train_rows if r["train/stage"] == 0]
    token_rows = [r for r in train_rows if r["train/stage"] == 1]
    assert patch_rows and token_rows and len(patch_rows) + len(token_rows) == len(train_rows)
    assert all("train/patch_loss" in r and "train/loss" not in r and r["step"] <= s1 for r in patch_rows)
    assert all("train/loss" in r and "train/patch_loss" not in r and r["step"] > s1 for r in token_rows)
    assert patch_rows[-1]["train/tokens_seen"] == 2 * d // 3
    assert token_rows[-1]["train/tokens_seen"] == d
    # stage 2 restarts its warmup + cosine schedule
    assert min(r["step"] for r in token_rows) == s1 + 1
    np.testing.assert_allclose(first_token["train/lr"], float(program2.schedule(0)), rtol=1e-6)


# --- the per-stage warm-up -----------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 50, 999, 45000])
@pytest.mark.parametrize("fraction", [0.0, 0.04, 0.1])
def test_stage_warmup_is_a_fraction_of_a_later_stage_and_the_old_rule_otherwise(steps, fraction):
    tc = TrainingConfig(lr=2e-3, min_lr_ratio=0.1, warmup_steps=100, warmup_fraction=fraction)
    old_rule = min(100, steps // 5)
    assert warmup_steps(tc, steps, first_stage=True) == old_rule
    later = warmup_steps(tc, steps, first_stage=False)
    assert later == (round(fraction * steps) if fraction else old_rule)
    if steps == 45000 and fraction == 0.04:
        assert later == 1800  # the paper re-warms for 2000 of 45000 steps
    for first, w in ((True, old_rule), (False, later)):
        _, schedule = make_optimizer(tc, steps, first_stage=first)
        for t in sorted({0, w // 2, w, steps - 1, steps}):  # naive reference: linear ramp, then cosine
            if t < w:
                want = 2e-3 * t / w
            else:
                progress = min((t - w) / max(steps - w, 1), 1.0)
                want = 2e-4 + (2e-3 - 2e-4) * 0.5 * (1 + math.cos(math.pi * progress))
            np.testing.assert_allclose(float(schedule(t)), want, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 50_000), warmup=st.integers(0, 3000), lr=st.floats(1e-5, 1.0),
       min_ratio=st.sampled_from([0.0, 0.1, 0.5, 1.0]), first=st.booleans())
def test_traced_schedule_agrees_with_optax_warmup_cosine(steps, warmup, lr, min_ratio, first):
    """The train step computes its learning rate from the schedule's values (`learning_rate`), so one
    compiled step serves every stage length. At every step it agrees with optax's own
    warmup_cosine_decay_schedule compiled with the lengths as constants (what the step computed before),
    and both with the exact schedule in float64, to float32 rounding of the peak (XLA folds constants
    into the constant-length program, e.g. x / 7 into x * f32(1/7), so the last bit may differ)."""
    tc = TrainingConfig(lr=lr, min_lr_ratio=min_ratio, warmup_steps=warmup, warmup_fraction=0.04)
    s = LRSchedule.of(tc, steps, first_stage=first)
    reference = optax.warmup_cosine_decay_schedule(init_value=s.init, peak_value=s.peak, warmup_steps=s.warmup,
                                                   decay_steps=s.decay_steps, end_value=s.end)
    counts = sorted({0, 1, s.warmup - 1, s.warmup, s.warmup + 1, steps // 2, steps - 1, steps, steps + 7} - {-1})
    exact = [s.init + (s.peak - s.init) * t / s.warmup if t < s.warmup else
             s.end + (s.peak - s.end) * 0.5 * (1 + math.cos(math.pi * min(t - s.warmup, s.decay_steps - s.warmup)
                                                               / (s.decay_steps - s.warmup)))
             for t in counts]
    c = jnp.asarray(counts, jnp.int32)
    want = np.asarray(jax.jit(jax.vmap(reference))(c), np.float64)
    got = np.asarray(jax.jit(jax.vmap(learning_rate, in_axes=(0, None)))(c, s.args()), np.float64)
    tol = 4 * 2.0**-24 * s.peak
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    np.testing.assert_allclose(got, exact, rtol=0, atol=tol)
    np.testing.assert_allclose(want, exact, rtol=0, atol=tol)


@pytest.mark.slow
def test_steps_of_any_length_compile_to_one_program():
    """The schedule is an argument of the train step, not constants in it: stages of other lengths, warm-up
    and learning rate lower to the same program text (so JAX's compilation cache serves them all)."""
    cfg = Config.preset("test-tiny")
    mesh = make_mesh(cfg.mesh, model=cfg.model)

    def hlo(training, steps, first_stage=True):
        program = build_program(cfg.model, training, mesh, steps=steps, first_stage=first_stage)
        with jax.set_mesh(mesh):
            return program.lower_step(cfg.training.batch_size, cfg.data.seq_len).as_text()

    base = hlo(cfg.training, 10)
    assert hlo(cfg.training, 45_000, first_stage=False) == base
    assert hlo(cfg.override("training.lr=0.5", "training.warmup_steps=3").training, 7) == base
    assert hlo(cfg.override("training.weight_decay=0.3").training, 10) != base  # a constant of the step


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0])
def test_stage_warmup_fraction_out_of_range_is_a_config_error(fraction):
    with pytest.raises(ConfigError, match="training.warmup_fraction"):
        make_optimizer(TrainingConfig(warmup_fraction=fraction), 100, first_stage=False)
