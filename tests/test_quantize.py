"""Tests for pcomp.compress.quantize: exact totals, f >= 1, agreement with a naive exact-rational loop."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pcomp.compress.quantize import cumulative, quantize_probs, quantize_probs_jax


def naive_quantize(p, precision):
    """Reference: the rule with exact rationals, one element at a time (before the remainder fix-up)."""
    n = len(p)
    total = sum(Fraction(float(x)) for x in p)
    m = 2**precision - n
    return [1 + math.floor(Fraction(float(x)) / total * m) for x in p]


@st.composite
def distributions(draw):
    """(probs [n], precision): uniform, one-hot, very peaked, random, with zeros, wide dynamic range, huge n."""
    precision = draw(st.integers(2, 24))
    max_n = min(2**precision // 2, 3000)
    kind = draw(st.sampled_from(["uniform", "onehot", "peaked", "random", "zeros", "wide", "huge"]))
    n = max_n if kind == "huge" else draw(st.integers(1, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind in ("uniform", "huge"):
        p = np.full(n, draw(st.floats(1e-300, 1e300)))
    elif kind == "onehot":
        p = np.zeros(n)
        p[rng.integers(n)] = draw(st.floats(1e-300, 1e300))
    elif kind == "peaked":
        p = np.full(n, 1e-12)
        p[rng.integers(n)] = 1.0
    elif kind == "random":
        p = rng.random(n)
    elif kind == "zeros":
        p = rng.random(n) * (rng.random(n) < 0.3)
        p[rng.integers(n)] = rng.random() + 1e-3
    else:
        p = 10.0 ** rng.uniform(-300, 300, n)
    return p, precision


@settings(max_examples=200, deadline=None)
@given(distributions())
def test_quantize_matches_naive_loop(case):
    p, precision = case
    f = quantize_probs(p, precision)
    assert f.dtype == np.int32 and f.shape == p.shape
    assert int(f.sum(dtype=np.int64)) == 2**precision
    assert f.min() >= 1
    ref = naive_quantize(p, precision)
    top = int(np.argmax(p))
    others = [i for i in range(len(p)) if i != top]
    # float64 rounding may move a floor by one; the remainder (>= 0 here) all goes to the first argmax
    assert all(abs(int(f[i]) - ref[i]) <= 1 for i in others)
    assert int(f[top]) >= ref[top] - 1
    assert all(f[top] >= f[i] for i in others)
    # monotone: a larger probability never gets a smaller frequency (outside the argmax)
    order = sorted(others, key=lambda i: p[i])
    assert all(f[a] <= f[b] for a, b in zip(order, order[1:]))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 16), st.data())
def test_quantize_exact_when_arithmetic_is_exact(precision, data):
    # integer counts summing to a power of two: p / total * M is exact, so the loop must agree exactly
    n = data.draw(st.integers(1, min(2**precision // 2, 64)))
    k = data.draw(st.integers(0, 20))
    cuts = sorted(data.draw(st.lists(st.integers(0, 2**k), min_size=n - 1, max_size=n - 1)))
    counts = np.diff([0, *cuts, 2**k]).astype(np.float64)
    f = quantize_probs(counts, precision)
    ref = naive_quantize(counts, precision)
    top = int(np.argmax(counts))
    ref[top] += 2**precision - sum(ref)
    assert f.tolist() == ref


def test_quantize_known_values():
    assert quantize_probs([0.5, 0.25, 0.25], 4).tolist() == [1 + 6 + 1, 1 + 3, 1 + 3]
    assert quantize_probs([0.0, 1.0], 2).tolist() == [1, 3]
    assert quantize_probs([1, 1, 1, 1], 3).tolist() == [2, 2, 2, 2]
    # ties: the remainder goes to the first maximum
    assert quantize_probs([1, 1, 1], 4).tolist() == [6, 5, 5]


def test_quantize_batched_rows_are_independent():
    rng = np.random.default_rng(0)
    p = rng.random((3, 5, 17))
    f = quantize_probs(p, 10)
    assert f.shape == p.shape
    assert (f.sum(-1) == 1024).all()
    for idx in np.ndindex(3, 5):
        assert (f[idx] == quantize_probs(p[idx], 10)).all()


@pytest.mark.parametrize(
    "probs, precision, match",
    [
        ([0.5, 0.5], 1, "precision=1"),
        ([0.5, 0.5], 25, "precision=25"),
        ([0.5, 0.5], 14.0, "precision=14.0"),
        ([0.5, 0.5], True, "precision=True"),
        ([0.25] * 3, 2, "n=3"),
        ([], 14, "n=0"),
        (0.5, 14, "scalar"),
        ([0.5, float("nan")], 14, "NaN"),
        ([0.5, float("inf")], 14, "inf"),
        ([1e308, 1e308], 14, "overflow"),
        ([0.5, -0.1], 14, "negative value"),
        ([0.0, 0.0], 14, "summing to 0"),
        ([[0.5, 0.5], [0.0, 0.0]], 14, "summing to 0"),
    ],
)
def test_quantize_rejects_bad_input(probs, precision, match):
    with pytest.raises(ValueError, match=match):
        quantize_probs(probs, precision)


def test_cumulative():
    f = np.array([[3, 0, 5], [1, 1, 6]], dtype=np.int32)
    cum = cumulative(f)
    assert cum.dtype == np.int64
    assert cum.tolist() == [[0, 3, 3, 8], [0, 1, 2, 8]]
    with pytest.raises(ValueError, match="float64"):
        cumulative([0.5, 0.5])


@settings(max_examples=12, deadline=None)  # each new shape compiles: keep it small
@given(distributions())
def test_quantize_jax_is_valid(case):
    p, precision = case
    with np.errstate(over="ignore"):
        p32 = p.astype(np.float32)
    if not np.isfinite(p32).all() or p32.sum(dtype=np.float64) <= 0:
        with pytest.raises(ValueError):  # not representable in float32: rejected, never garbage
            quantize_probs_jax(p, precision)
        return
    f = np.asarray(quantize_probs_jax(p, precision))
    assert f.shape == p.shape and int(f.sum()) == 2**precision and f.min() >= 1


def test_quantize_jax_jit_and_agreement():
    import jax

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(256, 0.3), size=64)
    f_np = quantize_probs(p, 14)
    f_jax = np.asarray(jax.jit(quantize_probs_jax, static_argnums=1)(p.astype(np.float32), 14))
    assert (f_jax.sum(-1) == 2**14).all() and f_jax.min() >= 1
    assert np.abs(f_jax - f_np).max() <= 2  # float32 vs float64 rounding only
    assert (np.asarray(quantize_probs_jax(p, 14)) == np.asarray(quantize_probs_jax(p, 14))).all()
    with pytest.raises(ValueError, match="n=3"):
        quantize_probs_jax(np.ones(3), 2)
    with pytest.raises(ValueError, match="negative"):
        quantize_probs_jax(np.array([0.5, -0.5, 1.0]), 14)
