"""Soundness of every certified routine from subnormal to overflowing entries, and for NaN/inf.

XLA flushes subnormal operands to zero and divides by multiplying with a (possibly subnormal)
reciprocal, so a kernel of 1e-40 entries once gave norms of 0 and one of 2e38 entries gave 0
labelled ``exact``; a NaN weight gave a finite Gram bound (3.5e-38) that certification accepted.
Contract (tests/scale_helpers.py): never below the float64 truth (an ``exact`` value by at most
EXACT_ULPS·u), inf beyond the range, NaN for a NaN entry, non-finite for an infinite one.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liplax import certify, conv, linalg
from liplax import nn as ln
from liplax.nn.conv import conv_bound
from liplax.nn.dense import matrix_bound
from liplax.nn.linf import project_l1_ball
from liplax.norms import scaling
from liplax.norms.gram import gram_iteration
from tests import reference as ref
from tests._helpers import precision
from tests.scale_helpers import ROUTINES, SCALES, check, draw, store

IDS = [r.name for r in ROUTINES]
LOW_PRECISION = ("linalg.spectral_norm", "linalg.gram_bound", "linalg.norm_inf",
                 "conv.exact_spectral_norm[(4,4),1,SAME]", "conv.gram_bound[(5,5),1,SAME]",
                 "conv.norm_inf[(5,5),2,VALID]")


def _run_scales(routine, dtype: str) -> None:
    rng = np.random.default_rng(hash(routine.name) % 2**32)
    with precision(dtype):
        for top in SCALES[dtype]:
            check(routine, draw(rng, routine.shape, top, dtype), dtype, f"max|x|={top}")
        for _ in range(3):
            top = SCALES[dtype][-1]
            check(routine, draw(rng, routine.shape, top, dtype, mixed=True), dtype, "mixed")
        x = draw(rng, routine.shape, 1.0, dtype)
        flat = x.reshape(-1).copy()
        for bad in (np.nan, np.inf, -np.inf):
            y = flat.copy()
            y[rng.integers(flat.size)] = bad
            check(routine, y.reshape(x.shape), dtype, f"entry {bad}")
        check(routine, np.zeros(routine.shape, x.dtype), dtype, "zero")


# Every routine in both dtypes under -m slow; by default each routine once, the dtypes alternating.
@pytest.mark.parametrize("routine,dtype", [
    pytest.param(r, d, id=f"{d}-{i}",
                 marks=() if d == ("float32", "float64")[k % 2] else pytest.mark.slow)
    for k, (r, i) in enumerate(zip(ROUTINES, IDS, strict=True)) for d in ("float32", "float64")])
def test_every_scale_and_nonfinite(routine, dtype):
    _run_scales(routine, dtype)


@pytest.mark.parametrize(
    "routine", [r for r in ROUTINES if r.name in LOW_PRECISION],
    ids=[n for n in IDS if n in LOW_PRECISION],
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_storage(routine, dtype):
    _run_scales(routine, dtype)


@pytest.mark.parametrize("top", [1e-40, 1e-44])
def test_subnormal_matrix_regressions(top):
    """The issue's examples: a 1e-40 matrix had norm 0 (exact) and gram 4e-38 from a slack."""
    w = draw(np.random.default_rng(1), (4, 3), top, "float32")
    truth = ref.spectral_norm_truth(w.astype(np.float64))
    assert float(linalg.spectral_norm(w)) >= truth
    assert float(linalg.norm_inf(w)) >= ref.linf_truth(ref.dense_operator(w.astype(np.float64)))
    assert float(linalg.spectral_norm(w)) == float(np.finfo(np.float32).tiny)


def test_overflow_regressions():
    """2e38 entries: the truth 6e38 is beyond float32, so every bound is inf (was 0, 0, 6)."""
    w = np.full((3, 3), 2e38, np.float32)
    for fn in (linalg.spectral_norm, linalg.gram_bound, linalg.norm_inf, linalg.norm_1):
        assert float(fn(w)) == math.inf, fn.__name__
    # 1e37 entries: 3e37 is in range and must come back right.
    w = np.full((3, 3), 1e37, np.float32)
    assert float(linalg.spectral_norm(w)) == pytest.approx(3e37, rel=1e-6)
    assert float(linalg.gram_bound(w)) >= 3e37 * (1 - 1e-7)


def test_nan_gram_dense_is_refused():
    """A Dense(method="gram") with one NaN weight once got certified accuracy 1.0 at ε = 1e30."""
    layer = ln.Dense(3, 2, method="gram", rngs=nnx.Rngs(0))
    layer.kernel[...] = layer.kernel[...].at[0, 0].set(jnp.nan)
    bound = layer.lipschitz_bound((3,))
    assert bound.certified and math.isnan(float(bound.value))
    logits, labels = jnp.asarray([[3.0, 0.0]]), jnp.asarray([0])
    with pytest.raises(ValueError, match="lipschitz must be finite"):
        certify.certified_accuracy(logits, labels, bound, 1e30)


@pytest.mark.parametrize("method", ["exact", "gram"])
@pytest.mark.parametrize("p", [1, 2, math.inf])
def test_dense_layer_bound_scales(method, p):
    rng = np.random.default_rng(7)
    truth = {1: ref.l1_truth, 2: ref.spectral_norm_truth, math.inf: ref.linf_truth}[p]
    for top in (1e-44, 1e-40, 1.0, 1e37, 3e38):
        w = draw(rng, (4, 3), top, "float32")
        b = matrix_bound(jnp.asarray(w), p, method=method)
        t = truth(ref.dense_operator(w.astype(np.float64)))
        want = t * (1 - 1e-5) if b.kind == "exact" else t
        assert float(b.value) >= min(want, float(np.finfo(np.float32).max)) or (
            t > float(np.finfo(np.float32).max) and float(b.value) == math.inf
        ), (top, float(b.value), t)
    w[1, 2] = np.nan
    assert math.isnan(float(matrix_bound(jnp.asarray(w), p, method=method).value))


# Each padding once and each p once by default (the diagonal); all nine under -m slow.
@pytest.mark.parametrize("padding,strides,p", [
    pytest.param(pad, st, p, marks=() if i == j else pytest.mark.slow, id=f"{pad}-{p}")
    for i, (pad, st) in enumerate([("SAME", (1, 1)), ("CIRCULAR", (2, 2)), ("VALID", (2, 1))])
    for j, p in enumerate([1, 2, math.inf])])
def test_conv_layer_bound_scales(padding, strides, p):
    rng = np.random.default_rng(8)
    truth = {1: ref.l1_truth, 2: ref.spectral_norm_truth, math.inf: ref.linf_truth}[p]
    for top in (1e-44, 1e-40, 1.0, 1e37):
        k = draw(rng, (3, 3, 2, 2), top, "float32")
        b = conv_bound(jnp.asarray(k), (4, 4), p, strides=strides, padding=padding)
        t = truth(ref.conv_operator(k.astype(np.float64), (4, 4), strides, padding))
        want = t * (1 - 1e-5) if b.kind == "exact" else t
        assert float(b.value) >= want, (top, float(b.value), t)
    k[0, 1, 1, 0] = np.inf
    b = conv_bound(jnp.asarray(k), (4, 4), p, strides=strides, padding=padding)
    assert not math.isfinite(float(b.value))


def _project_exact(v: np.ndarray, r: int = 1) -> list[Fraction]:
    """Euclidean projection onto the ℓ1 ball in exact rational arithmetic (Duchi et al. 2008)."""
    f = [Fraction(float(x)) for x in v]
    if sum(abs(x) for x in f) <= r:
        return f
    mu = sorted((abs(x) for x in f), reverse=True)
    css = Fraction(0)
    for j, m in enumerate(mu, 1):
        css += m
        if m - (css - r) / j > 0:  # the last such j is ρ, and θ = (Σ_{k≤ρ} μ_k − r)/ρ
            theta = (css - r) / j
    return [(1 if x > 0 else -1) * max(abs(x) - theta, Fraction(0)) for x in f]


@pytest.mark.parametrize("top", [1e-3, 1.0, 1e8, 1e20, 1e30, 3e38])
def test_linf_projection_is_scale_robust(top):
    """Weights of 1e8 once projected to the zero matrix (θ ≈ 1e8 swallowed the radius)."""
    rng = np.random.default_rng(int(math.log10(top) + 10))
    w = draw(rng, (7, 4), top, "float32")
    w[1, 0] = np.nextafter(w[0, 0], np.float32(0))  # near-tie with the largest
    w[:, 3] = w[:, 3] / np.float32(np.abs(w[:, 3]).sum() * 4)  # a column inside the ball
    got = np.asarray(project_l1_ball(jnp.asarray(w))).astype(np.float64)
    u = float(np.finfo(np.float32).eps) / 2
    for j in range(w.shape[1]):
        want = np.asarray([float(x) for x in _project_exact(w[:, j])])
        # Each output entry is (t − D_i) with t, D_i of order 1: absolute error a few u.
        assert np.max(np.abs(got[:, j] - want)) <= 16 * u * max(1.0, np.abs(want).max()), j
        assert np.abs(got[:, j]).sum() <= 1.0 + 8 * w.shape[0] * u, j
    np.testing.assert_array_equal(got[:, 3], w[:, 3])
    assert float(linalg.norm_inf(project_l1_ball(jnp.asarray(w)))) <= 1.0 + 8 * w.shape[0] * u


def test_linf_dense_large_weights_bound():
    layer = ln.LinfDense(5, 3, rngs=nnx.Rngs(0))
    layer.kernel[...] = layer.kernel[...] * 1e8
    k = np.asarray(layer.effective_kernel())
    assert np.all(np.abs(k).sum(0) > 0.99), "projected to (nearly) zero"
    assert float(layer.lipschitz_bound((5,), p=math.inf).value) <= 1.0 + 1e-6


def test_scale_helpers_exact_on_bits():
    """The bit-level split is exact: x = 2^k·x_s for every finite entry that stays normal."""
    x = store(np.asarray([3e38, -1e-40, 1.5e30, 0.0, 2.0**-126]), "float32")
    sc = scaling.scale(jnp.asarray(x))
    xs, k = np.asarray(sc.x).astype(np.float64), int(sc.k)
    assert k == 127 and np.max(np.abs(xs)) < 2 and np.max(np.abs(xs)) >= 1
    np.testing.assert_array_equal(np.ldexp(xs[[0, 2, 3]], k), x[[0, 2, 3]].astype(np.float64))
    assert bool(sc.lost)  # 1e-40·2^-127 and 2^-253 cannot be stored
    g = jax.grad(lambda v: jnp.sum(scaling.scale(v).x))(jnp.asarray([4.0, -1.0]))
    np.testing.assert_array_equal(np.asarray(g), [0.25, 0.25])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("num_iters", [0, 3])
def test_gram_iteration_propagates_nonfinite(bad, num_iters):
    """The public Gram iteration once mapped a NaN matrix to a finite bound (NaN > 0 is false,
    so the NaN Frobenius norm was treated as a zero one)."""
    w = np.ones((4, 3), np.float32)
    w[1, 2] = bad
    assert not math.isfinite(float(gram_iteration(jnp.asarray(w), num_iters)))
    g = np.ones((2, 4, 3), np.float32)
    g[0, 0, 0] = bad
    out = np.asarray(gram_iteration(jnp.asarray(g), num_iters))
    assert not np.isfinite(out[0]) and out[1] >= ref.spectral_norm_truth(g[1].astype(np.float64))


def test_vmap_scales_each_element():
    """Under vmap the power of two is chosen per batch element (no shared scale that would
    flush the small elements or overflow the large ones), and a NaN stays in its element."""
    w = draw(np.random.default_rng(3), (4, 3), 1.0, "float32").astype(np.float64)
    batch = np.stack([w, w * 1e-40, w * 1e37, w]).astype(np.float32)
    batch[3, 0, 0] = np.nan
    got = np.asarray(jax.vmap(linalg.spectral_norm)(jnp.asarray(batch)).value)
    gram = np.asarray(jax.vmap(linalg.gram_bound)(jnp.asarray(batch)).value)
    for i in range(3):
        t = ref.spectral_norm_truth(batch[i].astype(np.float64))
        assert got[i] >= t * (1 - 1e-5) and got[i] <= max(t * (1 + 1e-5), 1.2e-38), (i, got[i], t)
        assert gram[i] >= t, (i, gram[i], t)
    assert np.isnan(got[3]) and np.isnan(gram[3])


@pytest.mark.parametrize("tiny_tap", [2.0**-140, 2.0**-149])
def test_lost_entry_under_cancellation(tiny_tap):
    """Aliased taps 1 and −1 cancel on a 1×1 circular input, leaving a tap too small to survive
    the scaling: the truth is that tap, and an `exact` 0 would be 100% low."""
    k = np.zeros((3, 1, 1, 1), np.float32)
    k[:, 0, 0, 0] = [1.0, -1.0, tiny_tap]
    truth = ref.spectral_norm_truth(ref.conv_operator(k.astype(np.float64), (1, 1), 1,
                                                      "CIRCULAR"))
    assert truth == tiny_tap
    assert float(conv.exact_spectral_norm(k, (1, 1))) >= truth
    assert float(conv.gram_bound(k, (1, 1), padding="CIRCULAR")) >= truth
    assert float(conv.norm_inf(k, (1, 1), padding="CIRCULAR")) >= truth
    assert float(conv.norm_1(k, (1, 1), padding="CIRCULAR")) >= truth


def test_exact_circular_norm_with_cancelling_aliased_taps():
    """Taps p and p + 2 cancel on a 2×2 circular input and a centre tap 1e-22 of the others is
    the whole operator: the DFT summed all taps at once and its rounding (relative to the big
    taps) absorbed the centre, so the `exact` norm was 0."""
    rng = np.random.default_rng(5)
    k = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    k[2] = -k[0]
    k[:, 2] = -k[:, 0]  # after the line above: every aliased pair sums to exactly 0
    k[1, 1] = rng.standard_normal((2, 2)).astype(np.float32) * np.float32(1e-22)
    truth = ref.spectral_norm_truth(ref.conv_operator(k.astype(np.float64), (2, 2), 1,
                                                      "CIRCULAR"))
    got = float(conv.exact_spectral_norm(k, (2, 2)))
    assert abs(got - truth) <= 1e-5 * truth, (got, truth)
    grad = jax.grad(lambda x: conv.exact_spectral_norm(x, (2, 2)).value)(jnp.asarray(k))
    assert np.all(np.isfinite(np.asarray(grad)))
