"""Numerical edge cases of every bound: 1e30 / 1e-30 scales, zero weights, low precision.

- Scales: every operator is 1-homogeneous (AOL and spectral normalization are scale
  invariant), so at 1e30 and 1e-30 in float32 the result must be the scale times the result at
  scale 1 (to rounding): no overflow to inf, no underflow to a wrong zero, no NaN.
- Zero weights: every bound is 0 and its gradient (``jax.grad`` at 0) finite.
- bfloat16 / float16 weights: float32 results that bound the operator of the stored values
  (the fuzzed versions live in test_fuzz_linalg.py / test_fuzz_conv.py).
- Regressions for the fixes made while fuzzing (AOL, spectral normalization and the product of
  exact layer constants).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import bounds, conv, linalg
from liplax.guarantee import Bound, compose
from tests import reference as ref
from tests._helpers import rotate, split_slow, thin
from tests.nn_helpers import rngs

W = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
K = np.random.default_rng(1).standard_normal((3, 3, 2, 2)).astype(np.float32)
PADDINGS = ["CIRCULAR", "SAME", ((1, 2), (0, 1)), "VALID"]

MATRIX_OPS = {
    "spectral_norm": linalg.spectral_norm,
    "gram_bound": linalg.gram_bound,
    "norm_inf": linalg.norm_inf,
    "norm_1": linalg.norm_1,
}


def _conv_ops(padding):
    ops = {
        "gram_bound": lambda k: conv.gram_bound(k, (4, 4), padding=padding),
        "norm_inf": lambda k: conv.norm_inf(k, (4, 4), padding=padding),
        "norm_1": lambda k: conv.norm_1(k, (4, 4), padding=padding),
    }
    if padding == "CIRCULAR":
        ops["exact_spectral_norm"] = lambda k: conv.exact_spectral_norm(k, (4, 4), strides=2)
    return ops


def _homogeneous(f, x, scale, what, rtol=2e-5):
    base = float(f(jnp.asarray(x)))
    scaled = float(f(jnp.asarray(x * np.float32(scale))))
    assert math.isfinite(scaled) and scaled > 0, f"{what} at scale {scale}: {scaled!r}"
    assert scaled == pytest.approx(base * scale, rel=rtol), (what, scale, scaled, base)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_matrix_operators_are_homogeneous_at_extreme_scales(scale):
    for name, f in MATRIX_OPS.items():
        _homogeneous(jax.jit(f), W, scale, name)


@pytest.mark.parametrize("padding,scale", rotate(
    [(p,) for p in PADDINGS], [1e30, 1e-30], xid=lambda p: str(p[0]).replace(" ", "")))
def test_conv_operators_are_homogeneous_at_extreme_scales(padding, scale):
    for name, f in _conv_ops(padding).items():
        _homogeneous(jax.jit(f), K, scale, f"{name} {padding}")


def test_zero_matrix_gives_zero_bounds_with_finite_gradients():
    z = jnp.zeros_like(jnp.asarray(W))
    for name, f in MATRIX_OPS.items():
        v, g = jax.jit(jax.value_and_grad(lambda x, f=f: f(x).value))(z)
        assert float(v) == 0.0, (name, float(v))
        assert np.all(np.isfinite(np.asarray(g))), f"{name}: gradient at 0 is not finite"


@pytest.mark.parametrize("padding", split_slow([(p,) for p in PADDINGS], 1))
def test_zero_kernel_gives_zero_bounds_with_finite_gradients(padding):
    """(SAME: the dense path's sqrt had a NaN gradient at a zero kernel.)"""
    zk = jnp.zeros_like(jnp.asarray(K))
    for name, f in _conv_ops(padding).items():
        v, g = jax.jit(jax.value_and_grad(lambda x, f=f: f(x).value))(zk)
        assert float(v) == 0.0, (name, padding, float(v))
        assert np.all(np.isfinite(np.asarray(g))), f"{name} {padding}: gradient not finite"


LAYERS = {
    "Dense": lambda: (ln.Dense(5, 3, rngs=rngs()), (5,)),
    "LinfDense": lambda: (ln.LinfDense(5, 3, rngs=rngs()), (5,)),
    "SinusoidalDense": lambda: (ln.SinusoidalDense(5, 3, rngs=rngs()), (5,)),
    "Conv": lambda: (ln.Conv(2, 2, 3, input_size=(4, 4), rngs=rngs()), (4, 4, 2)),
    "Conv-circular": lambda: (
        ln.Conv(2, 2, 3, input_size=(4, 4), padding="CIRCULAR", rngs=rngs()), (4, 4, 2)),
}


@pytest.mark.parametrize("name", thin(sorted(LAYERS), 2))
def test_zero_kernel_layer_bounds_are_zero_with_finite_gradients(name):
    layer, shape = LAYERS[name]()
    layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
    for p in (1, 2, math.inf):
        def value(m, p=p):
            return bounds.trivial_bound(m, shape, p=p).value

        v, grads = nnx.jit(nnx.value_and_grad(value))(layer)
        assert float(v) == 0.0, (name, p, float(v))
        leaves = jax.tree.leaves(grads)
        assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves), (name, p)


@pytest.mark.parametrize("low", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_low_precision_weights_give_float32_upper_bounds(low):
    w = jnp.asarray(W, getattr(jnp, low))
    k = jnp.asarray(K, getattr(jnp, low))
    truth_w = ref.spectral_norm_truth(ref.dense_operator(np.asarray(w, np.float64)))
    for name in ("spectral_norm", "gram_bound"):
        out = MATRIX_OPS[name](w).value
        assert out.dtype == jnp.float32
        if name == "gram_bound":
            assert float(out) >= truth_w
    k64 = np.asarray(k, np.float64)
    for padding in PADDINGS[:2]:  # the compiled shapes of the tests above
        truth = ref.spectral_norm_truth(ref.conv_operator(k64, (4, 4), 1, padding))
        out = conv.gram_bound(k, (4, 4), padding=padding).value
        assert out.dtype == jnp.float32 and float(out) >= truth, (padding, float(out), truth)
    layer = ln.Dense(5, 3, param_dtype=getattr(jnp, low), rngs=rngs())
    layer.kernel[...] = w
    b = bounds.trivial_bound(layer, (5,), p=2)
    assert b.value.dtype == jnp.float32
    assert float(b.value) == pytest.approx(truth_w, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Regressions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_aol_is_scale_invariant_and_its_certificate_finite(scale):
    """AOL's Gram rows overflowed (1e30: certificate NaN) or flushed to 0 (1e-30: certificate
    a wrong 0 for a non-zero applied weight)."""
    for layer, shape in ((ln.AOLDense(5, 3, rngs=rngs()), (5,)),
                         (ln.AOLConv(2, 2, 3, rngs=rngs()), (4, 4, 2))):
        base = np.asarray(layer.effective_kernel(), np.float64)
        cert = float(bounds.trivial_bound(layer, shape).value)
        layer.kernel[...] = layer.kernel[...] * np.float32(scale)
        eff = np.asarray(layer.effective_kernel(), np.float64)
        scaled_cert = float(bounds.trivial_bound(layer, shape).value)
        np.testing.assert_allclose(eff, base, rtol=1e-5, atol=1e-7)
        assert math.isfinite(scaled_cert) and scaled_cert == pytest.approx(cert, rel=1e-5)
        op = eff.T if eff.ndim == 2 else ref.conv_operator(eff, shape[:2], 1, "SAME")
        assert scaled_cert >= ref.spectral_norm_truth(op)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_spectral_normalization_divides_by_a_finite_nonzero_sigma(scale):
    """σ̂ = ‖u W‖ underflowed to 0 at 1e-30 (the applied weight W/σ̂ was inf) and overflowed
    at 1e30; both the eval path and the training power step are scaled now."""
    for layer, shape in ((ln.SpectralDense(5, 3, rngs=rngs()), (5,)),
                         (ln.SpectralConv(2, 2, 3, input_size=(4, 4), rngs=rngs()), (4, 4, 2))):
        base = np.asarray(layer.sigma())
        layer.kernel[...] = layer.kernel[...] * np.float32(scale)
        sigma = float(layer.sigma())
        assert sigma == pytest.approx(float(base) * scale, rel=1e-5)
        layer.train()
        est = float(layer.sigma(update=True))  # one training-mode power step: from below
        k = np.asarray(layer.kernel[...], np.float64)
        op = k.T if k.ndim == 2 else ref.conv_operator(k, shape[:2], 1, "SAME")
        assert 0 < est <= ref.spectral_norm_truth(op) * (1 + 1e-5)
        assert np.all(np.isfinite(np.asarray(layer.effective_kernel())))


def test_trivial_bound_of_an_aligned_rank1_chain_is_not_below_the_product_norm():
    """Π‖W_l‖ = ‖W_2 W_1‖ for rank-1 layers sharing a singular direction: the float32 product of
    exact SVD values used to land below the float64 truth about half the time."""
    rng = np.random.default_rng(3)
    below = 0
    for _ in range(40):
        a, b, c = rng.random(4) + 0.1, rng.random(3) + 0.1, rng.random(2) + 0.1
        w1, w2 = np.outer(a, b).astype(np.float32), np.outer(b, c).astype(np.float32)
        d1, d2 = ln.Dense(4, 3, rngs=rngs()), ln.Dense(3, 2, rngs=rngs())
        d1.kernel[...], d2.kernel[...] = jnp.asarray(w1), jnp.asarray(w2)
        model = ln.Sequential(d1, d2)
        prod = w1.astype(np.float64) @ w2.astype(np.float64)
        for p, order in ((2, 2), (1, 1), (math.inf, np.inf)):
            truth = np.linalg.norm(prod.T, order)
            b_ = bounds.trivial_bound(model, (4,), p=p)
            log_b = bounds.log_trivial_bound(model, (4,), p=p)
            below += float(b_.value) < truth or float(log_b.value) < math.log(truth)
    assert below == 0


def test_compose_has_no_partial_overflow_or_underflow():
    for values, want in (([1e30, 1e30, 1e-30], 1e30), ([1e-30, 1e-30, 1e30], 1e-30)):
        got = float(compose([Bound(jnp.float32(v), "upper") for v in values]).value)
        assert got >= want * (1 - 1e-6) and got == pytest.approx(want, rel=1e-5)


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_spectral_normalization_of_a_zero_operator_is_finite():
    """A kernel whose taps only read padding is the zero operator: σ̂ = 0 and W/σ̂ was NaN
    (found by test_fuzz_nn). The layer now applies W itself there, and certifies it."""
    k = np.zeros((5, 5, 1, 2), np.float32)
    k[1, 0] = [0.125, -0.25]  # on a 2×2 SAME input this tap never meets the image
    layer = ln.SpectralConv(1, 2, 5, input_size=(2, 2), rngs=rngs())
    layer.kernel[...] = jnp.asarray(k)
    layer.eval()
    assert np.all(np.isfinite(np.asarray(layer.effective_kernel())))
    assert 0.0 <= float(bounds.trivial_bound(layer, (2, 2, 1)).value) < 1e-30  # flush slack
    dense = ln.SpectralDense(3, 2, rngs=rngs())
    dense.kernel[...] = jnp.zeros((3, 2))
    assert np.all(np.isfinite(np.asarray(dense.effective_kernel())))
    y = dense(jnp.ones((1, 3)))
    assert np.all(np.asarray(y) == 0.0)
