"""What the README promises about numerics, each against an independent reference on one device:
greedy generation is the argmax loop over the full forward pass (no KV cache); bfloat16 compute
trains like float32 with float32 parameters; remat (full or dots_saveable) changes nothing; the z-loss objective is the
numpy formula and changes the step.

One-step tests build the trainer's own program (`build_program`) on a 1-device mesh with the
`test-tiny` model; they train (two train-step compilations each), so they are marked slow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pcomp.config import Config, MeshConfig
from pcomp.models.generate import generate
from pcomp.models.sharding import make_mesh
from pcomp.models.transformer import rope_tables
from pcomp.train.step import CPU_TRAIN_OPTIONS, abstract_model, build_program, compiler_options, init_params, objective

TINY = Config.preset("test-tiny").override("data.seq_len=32", "training.lr=1e-3", "training.warmup_steps=0")


def assert_same_adam_step(after_a, after_b, lr: float = TINY.training.lr) -> None:
    """Parameters after one step of two programs that differ only in float association (remat, the CPU
    options), whose loss and gradient norm agree to 1e-6. Adam moves a weight by lr * g / (|g| + eps),
    so a gradient entry whose magnitude is near eps (a sum that cancels) turns a reassociation of g
    into a change of the update by a fraction of lr (seen: 1 of 16,384 entries off by 1.3e-5 at lr
    1e-3). So: all but 0.1% of the entries agree to 1e-6, and none differs by more than one step
    (lr); a wrong gradient moves most entries by up to 2 lr."""
    for a, b in zip(_leaves(after_a), _leaves(after_b)):
        diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        assert np.mean(diff > 1e-6) <= 1e-3, f"{np.mean(diff > 1e-6):.2%} of the entries differ by > 1e-6"
        assert diff.max() <= lr, f"an entry differs by {diff.max():.2e} > lr = {lr}"


@pytest.fixture(scope="module")
def mesh1():
    return make_mesh(MeshConfig(), jax.devices()[:1])


def _batch(cfg: Config, seed: int = 0, patch_size: int = 1, masked: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    b, t = cfg.training.batch_size, cfg.data.seq_len * patch_size
    tokens = rng.integers(0, cfg.model.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    if masked:  # padding at the end of some rows, as eval / document ends produce
        for row in range(0, b, 2):
            mask[row, t - 1 - rng.integers(0, t // 2):] = 0
    return {"tokens": tokens, "mask": mask}


def _one_step(cfg: Config, mesh, batch: dict, patch_size: int = 1):
    """(params before, params after as numpy, step metrics) of one trainer step from the seed's init."""
    program = build_program(cfg.model, cfg.training, mesh, steps=10, patch_size=patch_size)
    with jax.set_mesh(mesh):
        state = program.init(None)
        before = jax.tree.map(np.asarray, state["params"])
        state, metrics = program.step(state, batch)
        after = jax.tree.map(lambda x: x, state["params"])
    return before, after, jax.device_get(metrics)


def _step_of(program, mesh, batch: dict):
    """(params after as numpy, metrics) of one step of `program` from the seed's init."""
    with jax.set_mesh(mesh):
        state, metrics = program.step(program.init(None), batch)
        return jax.tree.map(np.asarray, state["params"]), jax.device_get(metrics)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --- greedy generation = argmax over the full forward pass ------------------------------------------
_forward = nnx.jit(lambda m, tokens: m(tokens))


def _random_model(seed: int, std: float = 0.3):
    """test-tiny with numpy-normal parameters: sharp, far-from-uniform logits, so argmax has clear margins."""
    graphdef, abstract = abstract_model(TINY.model)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, std, a.shape).astype(np.float32)), abstract)
    return graphdef, params


def argmax_loop(model, prompt: list[int], n: int, stop_id: int | None = None) -> tuple[list[int], float]:
    """Greedy continuation by re-running the whole sequence each step (no cache); also the smallest
    top-1 / top-2 logit margin seen, so a tie (where any order is right) would be reported."""
    ids, margin = list(prompt), np.inf
    for _ in range(n):
        # one padded shape (one compilation): causal, so the padding after position len(ids)-1 is unseen
        padded = np.zeros((1, len(prompt) + n), np.int32)
        padded[0, :len(ids)] = ids
        logits = np.asarray(_forward(model, jnp.asarray(padded)))[0, len(ids) - 1]
        top2 = np.sort(logits)[-2:]
        margin = min(margin, float(top2[1] - top2[0]))
        token = int(np.argmax(logits))
        if token == stop_id:
            break
        ids.append(token)
    return ids[len(prompt):], margin


@pytest.mark.slow
@pytest.mark.parametrize("seed, prompt", [(2, [256, 72, 101]), (1, [7])])  # seeds without near-ties
def test_greedy_generation_equals_argmax_loop_over_full_forward(seed, prompt):
    graphdef, params = _random_model(seed)
    n = 24
    out = generate(graphdef, params, prompt, max_new_tokens=n, max_len=TINY.model.max_seq_len, temperature=0.0,
                   top_k=TINY.model.vocab_size, seed=123)
    ref, margin = argmax_loop(nnx.merge(graphdef, params), prompt, n)
    assert margin > 1e-3, "reference has a near-tie; pick another seed"  # float32 noise is ~1e-6
    assert out.tolist() == ref
    assert len(ref) == n
    # greedy ignores the seed and top_k (argmax is always inside the top k)
    again = generate(graphdef, params, prompt, max_new_tokens=n, max_len=TINY.model.max_seq_len, temperature=0.0,
                     top_k=5, seed=7)
    assert again.tolist() == ref


def test_greedy_generation_stops_at_stop_id():
    graphdef, params = _random_model(2)  # no near-tie on this prompt
    ref, _ = argmax_loop(nnx.merge(graphdef, params), [256, 72, 101], 24)
    stop = ref[5]
    first = ref.index(stop)
    out = generate(graphdef, params, [256, 72, 101], max_new_tokens=24, max_len=TINY.model.max_seq_len,
                   temperature=0.0, stop_id=stop)
    assert out.tolist() == ref[:first]


# --- bfloat16 compute ------------------------------------------------------------------------------
@pytest.mark.slow
def test_bfloat16_step_matches_float32_and_keeps_float32_params(mesh1):
    """One step in bfloat16 compute: loss within 2e-2 relative of the float32 step (bfloat16 has an
    8-bit mantissa, ~4e-3 relative per rounding), gradient norm within 5e-2; parameters and Adam
    moments stay in param_dtype = float32."""
    batch = _batch(TINY)
    before32, after32, m32 = _one_step(TINY, mesh1, batch)
    bf16 = TINY.override("model.dtype=bfloat16")
    before16, after16, m16 = _one_step(bf16, mesh1, batch)
    for a, b in zip(_leaves(before32), _leaves(before16)):  # same float32 init
        np.testing.assert_array_equal(a, b)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(after16))
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)
    np.testing.assert_allclose(m16["grad_norm"], m32["grad_norm"], rtol=5e-2)
    # the step really moved the parameters, and the bfloat16 forward really differs from float32
    assert any(np.any(a != b) for a, b in zip(_leaves(before16), _leaves(after16)))
    assert m16["loss"] != m32["loss"]
    # an Adam step moves each weight by at most ~lr (+ weight decay): both steps stay within that
    lr = TINY.training.lr
    for a, b in zip(_leaves(after32), _leaves(after16)):
        np.testing.assert_allclose(a, b, atol=2.5 * lr)


# --- remat ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("patch_size,policy", [(1, "full"), (4, "full"), (1, "dots_saveable")])
def test_remat_step_equals_plain_step(mesh1, patch_size, policy):
    """Recomputing (part of) each block in the backward pass gives the same loss and parameters (to 1e-6)."""
    cfg = TINY.override(f"training.patch_size={patch_size}")
    batch = _batch(cfg, seed=2, patch_size=patch_size)
    _, plain, m_plain = _one_step(cfg, mesh1, batch, patch_size)
    _, remat, m_remat = _one_step(cfg.override(f"model.remat={policy}"), mesh1, batch, patch_size)
    np.testing.assert_allclose(m_remat["loss"], m_plain["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_remat["grad_norm"], m_plain["grad_norm"], rtol=1e-6)
    assert_same_adam_step(plain, remat)


@pytest.mark.slow
def test_scan_unroll_step_equals_looped_step(mesh1):
    """The layer loop fully unrolled (the CPU presets) and one block per iteration compute the same step."""
    assert TINY.model.scan_unroll == TINY.model.n_layers == 2
    batch = _batch(TINY, seed=3)
    _, unrolled, m_unrolled = _one_step(TINY, mesh1, batch)
    _, looped, m_looped = _one_step(TINY.override("model.scan_unroll=1"), mesh1, batch)
    np.testing.assert_allclose(m_looped["loss"], m_unrolled["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_looped["grad_norm"], m_unrolled["grad_norm"], rtol=1e-6)
    for a, b in zip(_leaves(unrolled), _leaves(looped)):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


# --- what the CPU train step gets on top: rotary tables as inputs, XLA:CPU options -------------------
@pytest.mark.slow
@pytest.mark.parametrize("patch_size", [1, 4])
def test_rope_tables_give_the_same_objective_and_gradient(patch_size):
    """The train step's rotary cos/sin tables (computed once, outside the program) are the values the
    model computes in-graph: objective and gradient agree to the bit."""
    graphdef, _ = abstract_model(TINY.model)
    params = init_params(TINY.model, 5)
    batch = _batch(TINY, seed=4, patch_size=patch_size, masked=True)
    tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"])
    f = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=(1, 4))
    (obj_in, _), grad_in = f(params, graphdef, tokens, mask, patch_size, 1e-4, 100.0, None)
    (obj_tab, _), grad_tab = f(params, graphdef, tokens, mask, patch_size, 1e-4, 100.0, rope_tables(TINY.model))
    assert float(obj_in) == float(obj_tab)
    for a, b in zip(_leaves(grad_in), _leaves(grad_tab)):
        np.testing.assert_array_equal(a, b)


def test_cpu_train_options_yield_to_the_users_xla_flags(mesh1, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compiler_options(mesh1) == CPU_TRAIN_OPTIONS
    (flag, _), = CPU_TRAIN_OPTIONS.items()
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{flag}=LIBRARY_FUSION_TYPE_ELTWISE")
    assert compiler_options(mesh1) is None


@pytest.mark.slow
@pytest.mark.parametrize("patch_size", [1, 4])
def test_cpu_train_options_change_the_program_not_the_step(mesh1, monkeypatch, patch_size):
    """The XLA:CPU options compile another program (the options reach the compiler) that takes the same
    step up to float reassociation."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    cfg = TINY.override(f"training.patch_size={patch_size}")
    batch = _batch(cfg, seed=6, patch_size=patch_size, masked=True)
    seq = cfg.data.seq_len * patch_size
    programs = [build_program(cfg.model, cfg.training, mesh1, steps=10, patch_size=patch_size, cpu_options=on)
                for on in (True, False)]
    hlo, hlo0 = (p.compile_step(cfg.training.batch_size, seq).executable.as_text() for p in programs)
    assert hlo != hlo0
    (after, metrics), (after0, metrics0) = (_step_of(p, mesh1, batch) for p in programs)
    np.testing.assert_allclose(metrics["loss"], metrics0["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], metrics0["grad_norm"], rtol=1e-5)
    assert_same_adam_step(after, after0)


# --- z-loss -----------------------------------------------------------------------------------------
def numpy_objective(logits_bnv: np.ndarray, tokens_bt: np.ndarray, mask_bt: np.ndarray, k: int, z: float):
    """(sum NLL + z * K * sum over patch positions of logsumexp^2) / number of real targets, in float64
    loops; the last patch has no next patch; a patch position counts for the z term if any of its K
    targets is real (pcomp.train.step.objective)."""
    logits = np.asarray(logits_bnv, np.float64)
    b, n, _ = logits.shape
    nll = lse_sq = total = 0.0
    for r in range(b):
        for i in range(n - 1):
            row = logits[r, i]
            m = row[np.isfinite(row)].max()
            lse = m + np.log(np.sum(np.exp(row[np.isfinite(row)] - m)))
            real = False
            for j in range(k):
                pos = (i + 1) * k + j
                if mask_bt[r, pos]:
                    nll += lse - row[tokens_bt[r, pos]]
                    total += 1
                    real = True
            lse_sq += lse * lse if real else 0.0
    return (nll + z * k * lse_sq) / total, nll / total


def _patch_logits(graphdef, params, tokens_bt, k):
    """The model's logits on the mean of every K token embeddings (numpy mean, not pcomp.patching)."""
    embed = jax.jit(lambda params, tokens: nnx.merge(graphdef, params).embed_tokens(tokens))
    x_btd = np.asarray(embed(params, jnp.asarray(tokens_bt)), np.float32)
    b, t, d = x_btd.shape
    p_bnd = x_btd.reshape(b, t // k, k, d).mean(axis=2)
    forward = jax.jit(lambda params, p: nnx.merge(graphdef, params)(embeddings_btd=p))
    return np.asarray(forward(params, jnp.asarray(p_bnd)))


@pytest.mark.slow
@pytest.mark.parametrize("patch_size, masked", [(1, False), (1, True), (4, True)])
def test_z_loss_objective_matches_numpy_and_changes_the_step(mesh1, patch_size, masked):
    z = 0.1  # large enough that the z term moves the gradient norm far beyond the 1e-5 match tolerance
    cfg = TINY.override(f"training.patch_size={patch_size}", f"training.z_loss={z}")
    batch = _batch(cfg, seed=3, patch_size=patch_size, masked=masked)
    program = build_program(cfg.model, cfg.training, mesh1, steps=10, patch_size=patch_size)
    with jax.set_mesh(mesh1):
        state = program.init(None)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state["params"])  # a copy: step donates state
    tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"])
    total = jnp.float32(batch["mask"][:, patch_size:].sum())

    ref_obj, ref_nll = numpy_objective(_patch_logits(program.graphdef, params, batch["tokens"], patch_size),
                                       batch["tokens"], batch["mask"], patch_size, z)
    # jitted (graphdef and K static): eager op-by-op dispatch through the scanned layers took minutes
    objective_ = jax.jit(objective, static_argnums=(1, 4))
    grad_ = jax.jit(jax.grad(_jnp_objective), static_argnums=(1, 4))
    obj, (nll, count) = objective_(params, program.graphdef, tokens, mask, patch_size, z, total)
    assert float(count) == float(total)
    np.testing.assert_allclose(float(obj), ref_obj, rtol=1e-5)
    np.testing.assert_allclose(float(nll) / float(total), ref_nll, rtol=1e-5)
    obj0, _ = objective_(params, program.graphdef, tokens, mask, patch_size, 0.0, total)
    np.testing.assert_allclose(float(obj0), ref_nll, rtol=1e-5)
    assert float(obj) - float(obj0) > 1e-3 * z  # logsumexp^2 ~ log(258)^2 ~ 31: the z term is there

    # the trainer's step takes the gradient of this objective: its norm is that of the gradient of a jnp
    # reference written here (rtol 1e-5), and differs from the z_loss = 0 gradient's by far more (the
    # parameters after one Adam step are ~lr * sign(g) either way, so the norm is what tells them apart)
    grads = grad_(params, program.graphdef, tokens, mask, patch_size, z)
    grads0 = grad_(params, program.graphdef, tokens, mask, patch_size, 0.0)
    with jax.set_mesh(mesh1):
        _, metrics = program.step(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), ref_nll, rtol=1e-5)  # the logged loss is the NLL only
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-5)
    assert abs(float(optax.tree.norm(grads)) / float(optax.tree.norm(grads0)) - 1) > 1e-4
    _, _, m0 = _one_step(cfg.override("training.z_loss=0"), mesh1, batch, patch_size)
    np.testing.assert_allclose(float(m0["grad_norm"]), float(optax.tree.norm(grads0)), rtol=1e-5)


def _jnp_objective(params, graphdef, tokens_bt, mask_bt, k, z):
    """numpy_objective in jnp (differentiable), without pcomp.patching."""
    model = nnx.merge(graphdef, params)
    x_btd = model.embed_tokens(tokens_bt)
    b, t, d = x_btd.shape
    logits = model(embeddings_btd=x_btd.reshape(b, t // k, k, d).mean(axis=2))[:, :-1]  # [b, n-1, v]
    lse_bn = jax.nn.logsumexp(logits, axis=-1)
    targets = tokens_bt[:, k:].reshape(b, -1, k)
    w_bnk = mask_bt[:, k:].reshape(b, -1, k).astype(jnp.float32)
    nll = ((lse_bn[..., None] - jnp.take_along_axis(logits, targets, axis=-1)) * w_bnk).sum()
    lse_sq = (lse_bn**2 * (w_bnk.sum(-1) > 0)).sum()
    return (nll + z * k * lse_sq) / w_bnk.sum()
