"""Transformer: causality, attention / RoPE against naive numpy loops, KV-cache decoding, embedding
override, padded vocabulary, sharding by logical axes, parameter counts and config errors.

Compilation dominates the runtime on CPU, so the `test-tiny` parameters are created once (sharded,
on the 2x2x2 mesh, which the sharding test inspects) and copied to one device for the other tests,
and every forward pass goes through the module-level jitted helpers with few distinct shapes.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from pcomp.config import Config, MeshConfig, ModelConfig
from pcomp.errors import ConfigError
from pcomp.models.sharding import make_mesh, param_shardings
from pcomp.models.attention import blocked_causal_attention
from pcomp.models.transformer import Transformer, count_params, rope, rotary
from pcomp.train.step import abstract_model

TINY = Config.preset("test-tiny").model

# The sharding rules, written independently of pcomp.models.sharding.RULES.
EXPECTED_RULES = {
    "layers": None,  # the stacked blocks' leading axis: never sharded
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "norm": None,
}

_forward = nnx.jit(lambda m, tokens: m(tokens))
_rope = jax.jit(lambda x, positions, theta: rope(x, rotary(positions, x.shape[-1], theta)), static_argnums=2)
_blocked = jax.jit(blocked_causal_attention, static_argnames="block")
_fused = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
_decode = nnx.jit(lambda m, tokens, positions, cache: m.decode_step(tokens, positions, cache))


def _params(state):
    """[(path string, Variable)] for every parameter of an nnx.State."""
    leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [(jax.tree_util.keystr(p), v) for p, v in leaves]


def _with_attention(model: Transformer, attention: str) -> Transformer:
    """The same parameters under a config with another attention implementation."""
    graphdef, _ = abstract_model(dataclasses.replace(model.cfg, attention=attention))
    return nnx.merge(graphdef, nnx.state(model))


def _random_model(cfg: ModelConfig, std: float, seed: int) -> Transformer:
    """A model whose parameters are numpy normals with a larger std than the init, so attention is far
    from uniform (a real test of masking / positions); no jax RNG compilation needed."""
    graphdef, abstract = abstract_model(cfg)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, std, a.shape).astype(np.float32)), abstract)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


@pytest.fixture(scope="module")
def sharded_state(mesh):
    _, abstract_state = abstract_model(TINY)
    shardings = param_shardings(abstract_state, mesh)
    return jax.jit(lambda: nnx.split(Transformer(TINY, nnx.Rngs(0)))[1], out_shardings=shardings)()


@pytest.fixture(scope="module")
def tiny(sharded_state):
    """Transformer(test-tiny, nnx.Rngs(0)) with blocked attention, its parameters on one device."""
    graphdef, _ = abstract_model(dataclasses.replace(TINY, attention="blocked"))
    local = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), sharded_state)
    return nnx.merge(graphdef, local)


# --- attention and RoPE against naive loops -----------------------------------------------------------
def naive_causal_attention(q, k, v):
    """q [b, t, n, h], k/v [b, t, kv, h]; query head i reads kv head i // (n / kv). float64 loops."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    group = n // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for ni in range(n):
            kv = ni // group
            for qi in range(t):
                scores = np.array([q[bi, qi, ni] @ k[bi, s, kv] for s in range(qi + 1)]) / math.sqrt(h)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                out[bi, qi, ni] = sum(p[s] * v[bi, s, kv] for s in range(qi + 1))
    return out


@pytest.mark.parametrize(
    "t, n, kv, block",
    [
        (128, 4, 2, 64),  # two blocks of the default size, grouped-query attention
        (12, 4, 2, 4),  # three small blocks
        (10, 4, 2, 4),  # 10 is not a multiple of 4: falls back to one block
        (50, 2, 2, 64),  # default block, shorter sequence: one block; no GQA
        (9, 4, 1, 64),  # multi-query attention
    ],
)
def test_blocked_attention_matches_naive_loop_and_fused(t, n, kv, block):
    rng = np.random.default_rng(t * 100 + n * 10 + kv)
    b, h = 2, 8
    # scale 2: scores of order 1..10, so the softmax is far from uniform
    q = (2 * rng.normal(size=(b, t, n, h))).astype(np.float32)
    k = (2 * rng.normal(size=(b, t, kv, h))).astype(np.float32)
    v = rng.normal(size=(b, t, kv, h)).astype(np.float32)
    got = np.asarray(_blocked(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), block=block))
    assert got.shape == (b, t, n, h)
    # float32 scores of magnitude ~10 and sums over <= 128 keys: errors ~1e-6; 1e-5 leaves 10x margin
    np.testing.assert_allclose(got, naive_causal_attention(q, k, v), atol=1e-5, rtol=1e-5)
    fused = np.asarray(_fused(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)))
    np.testing.assert_allclose(got, fused, atol=1e-5, rtol=1e-5)


def naive_rope(x, positions, theta):
    """Rotate-half RoPE, one pair (i, i + h/2) at a time, in float64."""
    x = np.asarray(x, np.float64)
    b, t, n, h = x.shape
    out = np.zeros_like(x)
    for bi in range(b):
        for ti in range(t):
            for ni in range(n):
                for i in range(h // 2):
                    angle = positions[bi, ti] * theta ** (-2.0 * i / h)
                    c, s = math.cos(angle), math.sin(angle)
                    x1, x2 = x[bi, ti, ni, i], x[bi, ti, ni, i + h // 2]
                    out[bi, ti, ni, i] = x1 * c - x2 * s
                    out[bi, ti, ni, i + h // 2] = x2 * c + x1 * s
    return out


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.sampled_from([2, 8, 16]), theta=st.sampled_from([100.0, 10_000.0]))
def test_rope_matches_naive_loop(seed, h, theta):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 5, 3, h)).astype(np.float32)
    positions = rng.integers(0, 128, size=(2, 5))  # arbitrary, per-row positions
    got = np.asarray(_rope(jnp.asarray(x), jnp.asarray(positions, jnp.int32), theta))
    # float32 angles up to 128 rad carry an absolute error ~128 * 6e-8 ~ 1e-5 rad; |x| <~ 4
    np.testing.assert_allclose(got, naive_rope(x, positions, theta), atol=1e-4, rtol=0)
    # a rotation: the norm of every (i, i + h/2) pair is preserved
    pair_norm = lambda y: y[..., : h // 2] ** 2 + y[..., h // 2 :] ** 2  # noqa: E731
    np.testing.assert_allclose(pair_norm(got), pair_norm(x), rtol=1e-5, atol=1e-5)


# --- whole-model properties ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("attention", ["blocked", "fused"])
def test_causality(tiny, attention):
    model = _with_attention(tiny, attention)
    t_len = 128  # two blocks of 64 for the blocked path
    changed = [0, 1, 37, 63, 64, 100, 127]
    base = np.random.default_rng(1).integers(0, TINY.vocab_size, size=t_len)
    rows = [base]
    for t in changed:
        row = base.copy()
        row[t] = (row[t] + 1 + t) % TINY.vocab_size
        assert row[t] != base[t]
        rows.append(row)
    logits = np.asarray(_forward(model, jnp.asarray(np.stack(rows), jnp.int32)))[..., : TINY.vocab_size]
    for i, t in enumerate(changed, start=1):
        # masked keys get exactly zero weight, so earlier positions are bit-identical
        np.testing.assert_array_equal(logits[i, :t], logits[0, :t], err_msg=f"position < {t} saw token {t}")
        # the changed token itself changes its own prediction (and what comes after it)
        scale = np.abs(logits[0]).max()
        assert np.abs(logits[i, t] - logits[0, t]).max() > 1e-2 * scale
        if t + 1 < t_len:
            assert np.abs(logits[i, t + 1 :] - logits[0, t + 1 :]).max(axis=-1).min() > 0


@pytest.mark.slow
@pytest.mark.parametrize("sharp", [False, True])
def test_blocked_and_fused_models_agree(tiny, sharp):
    model = _random_model(dataclasses.replace(TINY, n_kv_heads=2), 0.2, 7) if sharp else tiny
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, TINY.vocab_size, size=(8, 128)), jnp.int32)
    a = np.asarray(_forward(_with_attention(model, "blocked"), tokens))[..., : TINY.vocab_size]
    b = np.asarray(_forward(_with_attention(model, "fused"), tokens))[..., : TINY.vocab_size]
    # same math, different summation order: float32 relative error ~1e-7 of the logit scale
    np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(a).max(), rtol=1e-5)


def _check_decode_matches_forward(model: Transformer, lags, t_len: int):
    cfg = model.cfg
    b = len(lags)
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, size=(b, t_len)).astype(np.int32)
    full = np.asarray(_forward(model, jnp.asarray(tokens)))
    # float32 through 2 layers: relative error ~1e-6 of the logit scale (measured ~5e-7); the
    # init-scale model has logits of only ~0.01, so the tolerance is relative to that scale
    atol = 2e-5 * np.abs(full[..., : cfg.vocab_size]).max()
    cache = model.init_cache(b, t_len)
    seen = np.zeros((b, t_len), bool)
    for step in range(t_len + max(lags)):
        # row r is at its own position; a row that has not started yet (or has finished) re-feeds
        # position 0 (or t_len - 1) with the same token, which rewrites identical k/v
        positions = np.array([min(max(step - lag, 0), t_len - 1) for lag in lags], np.int32)
        step_tokens = tokens[np.arange(b), positions]
        logits, cache = _decode(model, jnp.asarray(step_tokens), jnp.asarray(positions), cache)
        logits = np.asarray(logits)
        for r in range(b):
            p = positions[r]
            np.testing.assert_allclose(
                logits[r, : cfg.vocab_size], full[r, p, : cfg.vocab_size], atol=atol, rtol=1e-5,
                err_msg=f"row {r} position {p} (step {step})",
            )
            assert np.all(np.isneginf(logits[r, cfg.vocab_size :]))
            seen[r, p] = True
    assert seen.all()


@pytest.mark.slow
def test_decode_step_matches_forward(tiny):
    # lags 0, 3, 7: rows sit at different positions in the same decode_step call
    _check_decode_matches_forward(tiny, lags=[0, 3, 7], t_len=20)


@pytest.mark.slow
def test_decode_step_matches_forward_gqa_sharp_attention():
    cfg = dataclasses.replace(TINY, n_kv_heads=2, attention="blocked")
    model = _random_model(cfg, std=0.2, seed=4)
    logits = np.asarray(_forward(model, jnp.zeros((3, 20), jnp.int32)))[..., : cfg.vocab_size]
    assert np.abs(logits).max() > 0.5  # far from the near-uniform init
    _check_decode_matches_forward(model, lags=[5, 0, 2], t_len=20)


@pytest.mark.slow
def test_decode_step_with_blocks_sliced_once_equals_slicing_in_the_step():
    """M1 passes `unstacked_blocks()` made once, outside jit; generation lets decode_step slice the
    stacked parameters inside the step. Same logits and caches, bit for bit, over a few steps."""
    model = _random_model(dataclasses.replace(TINY, n_kv_heads=2), std=0.2, seed=6)
    blocks = model.unstacked_blocks()
    assert len(blocks) == TINY.n_layers
    stacked = jax.tree.leaves(nnx.state(model.blocks))
    for i, block in enumerate(blocks):  # each block holds its layer's slice of the stack
        assert all(np.array_equal(np.asarray(a), np.asarray(s[i])) for a, s in zip(jax.tree.leaves(nnx.state(block)),
                                                                                    stacked))
    given = nnx.jit(lambda m, bl, tokens, positions, cache: m.decode_step(tokens, positions, cache, bl))
    rng = np.random.default_rng(7)
    cache_a = cache_b = model.init_cache(3, 16)
    for step in range(6):
        tokens = jnp.asarray(rng.integers(0, TINY.vocab_size, 3), jnp.int32)
        positions = jnp.asarray([step, step + 2, 9 - step], jnp.int32)
        logits_a, cache_a = _decode(model, tokens, positions, cache_a)
        logits_b, cache_b = given(model, blocks, tokens, positions, cache_b)
        assert np.array_equal(np.asarray(logits_a), np.asarray(logits_b))
        assert all(np.array_equal(np.asarray(x), np.asarray(y))
                   for x, y in zip(jax.tree.leaves(cache_a), jax.tree.leaves(cache_b)))


def test_embedding_override_equals_token_path(tiny):
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, TINY.vocab_size, size=(3, 20)), jnp.int32)

    @nnx.jit
    def both(m, tok):
        return m(tok), m(embeddings_btd=m.embed_tokens(tok))

    by_tokens, by_embeddings = both(tiny, tokens)
    np.testing.assert_array_equal(np.asarray(by_embeddings), np.asarray(by_tokens))
    # the embedding is the table row of each token
    emb = np.asarray(nnx.jit(lambda m, tok: m.embed_tokens(tok))(tiny, tokens))
    np.testing.assert_array_equal(emb, np.asarray(tiny.embed[...])[np.asarray(tokens)])
    with pytest.raises(ValueError):
        tiny(tokens, embeddings_btd=emb)
    with pytest.raises(ValueError):
        tiny()


@pytest.mark.parametrize("tie", [False, True])
def test_padded_vocabulary(tiny, tie):
    model = tiny
    if tie:
        model = _random_model(dataclasses.replace(TINY, tie_embeddings=True, attention="blocked"), 0.02, 6)
    assert model.cfg.padded_vocab == 384 and model.cfg.padded_vocab % 128 == 0
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, TINY.vocab_size, size=(3, 20)), jnp.int32)
    logits = np.asarray(_forward(model, tokens))
    assert logits.shape == (3, 20, model.cfg.padded_vocab) and logits.dtype == np.float32
    assert np.all(np.isneginf(logits[..., TINY.vocab_size :]))
    assert np.all(np.isfinite(logits[..., : TINY.vocab_size]))
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
    assert np.all(p[..., TINY.vocab_size :] == 0)
    # float32 softmax over 384 entries: the sum is 1 up to a few ulps
    np.testing.assert_allclose(p[..., : TINY.vocab_size].sum(-1), 1.0, atol=1e-5)


# --- sharding -----------------------------------------------------------------------------------------
def test_every_parameter_sharded_by_its_logical_axes(sharded_state, mesh):
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    params = _params(sharded_state)
    # embed, lm_head, final norm; the stacked blocks: 2 norms + wq, wk, wv, wo + w_gate, w_up, w_down,
    # each with a leading layers axis of n_layers entries
    assert len(params) == 3 + 9
    stacked = [path for path, _ in params if path.startswith("['blocks']")]
    assert len(stacked) == 9
    sharded_over = set()
    for path, var in params:
        arr = var[...]
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None, f"{path} has no logical_axes"
        assert len(axes) == arr.ndim, f"{path}: logical_axes {axes} for shape {arr.shape}"
        if path in stacked:
            assert axes[0] == "layers" and arr.shape[0] == TINY.n_layers, (path, axes, arr.shape)
        else:
            assert "layers" not in axes, (path, axes)
        expected = tuple(EXPECTED_RULES[a] for a in axes)
        spec = tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec))
        assert spec == expected, f"{path}: spec {spec}, expected {expected} from {axes}"
        sharded_over.update(m for m in expected if m)
        # every device holds the block given by its mesh coordinates
        assert len(arr.addressable_shards) == 8
        for shard in arr.addressable_shards:
            coords = dict(zip(mesh.axis_names, np.argwhere(mesh.devices == shard.device)[0]))
            want_shape, want_index = [], []
            for dim, mesh_axis in zip(arr.shape, expected):
                parts = mesh.shape[mesh_axis] if mesh_axis else 1
                assert dim % parts == 0
                size = dim // parts
                start = coords[mesh_axis] * size if mesh_axis else 0
                want_shape.append(size)
                want_index.append((start, start + size))
            assert shard.data.shape == tuple(want_shape), f"{path} on {shard.device}"
            got_index = tuple(
                (s.start or 0, dim if s.stop is None else s.stop) for s, dim in zip(shard.index, arr.shape)
            )
            assert got_index == tuple(want_index), f"{path} on {shard.device}"
    assert sharded_over == {"fsdp", "tensor"}  # the test really exercised both axes


@pytest.mark.slow
def test_stacked_init_draws_one_key_per_matrix_in_creation_order():
    """Layer i's matrices are std * normal(key) with the keys of nnx.Rngs(params=seed) in creation order
    (embed; per layer wq, wk, wv, wo, w_gate, w_up, w_down; lm_head), stacked along the layers axis:
    the values do not depend on the stacking. Norm scales start at one."""
    cfg = dataclasses.replace(TINY, n_layers=3, n_kv_heads=2)
    state = jax.jit(lambda: nnx.split(Transformer(cfg, nnx.Rngs(params=7)))[1])()
    rngs = nnx.Rngs(params=7)
    keys = [rngs.params() for _ in range(1 + 7 * cfg.n_layers + 1)]
    std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
    d, n, k, h, f, v = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.d_ff, cfg.padded_vocab

    def normal(key, shape, scale):
        return np.asarray(scale * jax.random.normal(key, shape, jnp.float32))

    # the same draws; eager and compiled normals may round an ulp apart (another key differs at once)
    same = functools.partial(np.testing.assert_allclose, rtol=3e-7, atol=0)
    same(np.asarray(state["embed"][...]), normal(keys[0], (v, d), std))
    same(np.asarray(state["lm_head"][...]), normal(keys[-1], (d, v), std))
    blocks = state["blocks"]
    expected = [("attn", "wq", (d, n, h), std), ("attn", "wk", (d, k, h), std), ("attn", "wv", (d, k, h), std),
                ("attn", "wo", (n, h, d), out_std), ("mlp", "w_gate", (d, f), std), ("mlp", "w_up", (d, f), std),
                ("mlp", "w_down", (f, d), out_std)]
    for i in range(cfg.n_layers):
        for j, (part, name, shape, scale) in enumerate(expected):
            got = np.asarray(blocks[part][name][...])
            assert got.shape == (cfg.n_layers, *shape)
            same(got[i], normal(keys[1 + 7 * i + j], shape, scale), err_msg=f"{name}[{i}]")
    for norm in ("attn_norm", "mlp_norm"):
        np.testing.assert_array_equal(np.asarray(blocks[norm]["scale"][...]), np.ones((cfg.n_layers, d), np.float32))


def test_count_params_matches_state():
    configs = [
        TINY,
        dataclasses.replace(TINY, tie_embeddings=True),
        dataclasses.replace(TINY, n_kv_heads=2, vocab_size=300, d_ff=96, n_layers=3),
        ModelConfig(d_model=48, n_heads=6, n_kv_heads=3, d_ff=80, n_layers=1, vocab_size=129),
    ]
    for cfg in configs:
        _, state = abstract_model(cfg)
        params = _params(state)
        total = sum(math.prod(v.get_value().shape) for _, v in params)
        assert count_params(cfg) == total, cfg
        no_emb = sum(math.prod(v.get_value().shape) for p, v in params if "'embed'" not in p and "'lm_head'" not in p)
        assert count_params(cfg, embeddings=False) == no_emb, cfg


# --- config errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(d_model=66, n_heads=4), ["d_model", "n_heads", "66"]),
        (dict(d_model=20, n_heads=4), ["head dim", "5"]),  # head dim 5 is odd
        (dict(n_heads=4, n_kv_heads=3), ["n_kv_heads"]),
        (dict(dtype="float16"), ["model.dtype", "float16"]),
        (dict(param_dtype="int8"), ["model.param_dtype", "int8"]),
        (dict(attention="flash"), ["model.attention", "flash"]),
        (dict(remat="true"), ["model.remat", "'true'", "'dots_saveable'"]),
        (dict(n_layers=0), ["model.n_layers"]),
    ],
)
def test_bad_model_config_raises(changes, words):
    cfg = dataclasses.replace(TINY, **changes)
    with pytest.raises(ConfigError) as info:
        nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize(
    "mesh_cfg, words",
    [
        (MeshConfig(fsdp=3), ["fsdp=3", "8"]),  # data=-1 takes the rest: 3 does not divide 8
        (MeshConfig(data=3, fsdp=1, tensor=1), ["data=3", "8"]),
        (MeshConfig(data=2, fsdp=2, tensor=4), ["tensor=4", "16", "8"]),
        (MeshConfig(data=1, fsdp=0, tensor=1), ["fsdp=0"]),
    ],
)
def test_bad_mesh_raises(mesh_cfg, words):
    assert len(jax.devices()) == 8
    with pytest.raises(ConfigError) as info:
        make_mesh(mesh_cfg)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_mesh_data_takes_the_rest():
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2, tensor=1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
