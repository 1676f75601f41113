"""Fuzzed soundness of every ``liplax.nn`` layer's ``lipschitz_bound`` for p = 1, 2, ∞.

Layers are float32, as trained; their weights are drawn adversarially (the matrix and kernel
strategies of ``tests/test_properties.py``: rank-1, nearly rank-deficient, repeated top singular
values, one entry, scales 1e-30 … 1e30) and written into the parameters. The truth is float64:

- linear layers (Dense, LinfDense, AOLDense, BjorckDense, SpectralDense; Conv, AOLConv,
  SpectralConv): the induced norm of the explicit operator of the kernel the layer actually
  applies (``effective_kernel()``, computed under the same ``jit`` as the bound);
- AvgPool, Flatten, Scale: the float64 Jacobian (a constant matrix);
- SinusoidalDense, MaxPool and the activations: the float64 Jacobian norm at sampled points (a
  lower bound on the true constant), the points chosen where the supremum is attained when
  that is known (θ = xW = π/4 for the ℓ1 constant √2‖W‖₁ of the sinusoidal layer, z = 0 or
  z > 0 for the activations).

An ``upper`` bound must be ≥ the truth with no tolerance; an ``exact`` one within its documented
rounding margin (EXACT_RTOL, or 3γ_n for an n-term abs-sum), and never a wrong zero.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import liplax.nn as ln
from liplax.bounds import trivial_bound
from liplax.nn.walk import bound_of
from tests import reference as ref
from tests._helpers import abs_sum_rtol, assert_exact, assert_upper
from tests.nn_helpers import induced_norm, rngs
from tests.test_properties import WIDE, _has_output, conv_geometries, kernels, matrices

P_ALL = (1, 2, math.inf)
PS = st.sampled_from(P_ALL)


def _truth_of_matrix(op: np.ndarray, p) -> float:
    return float(induced_norm(np.asarray(op, np.float64), p))


def _check(bound, truth: float, p, what: str, *, n_terms: int = 1, lower_only=False) -> None:
    """``upper``: ≥ truth. ``exact``: within the documented margin. Never a wrong zero."""
    value = float(np.asarray(bound.value))
    note(f"{what}: kind={bound.kind} value={value!r} truth={truth!r}")
    assert bound.kind in ("exact", "upper"), f"{what}: certificate kind {bound.kind!r}"
    assert np.asarray(bound.value).dtype == np.float32, f"{what}: dtype {bound.value.dtype}"
    if truth > 0:
        assert value > 0, f"{what}: a wrong zero (truth {truth!r})"
    if bound.kind == "upper" or lower_only:
        assert_upper(value, truth, what)
    elif p == 2:
        assert_exact(value, truth, "float32", what)
    else:
        rtol = abs_sum_rtol(n_terms, "float32")
        assert math.isfinite(value) and abs(value - truth) <= rtol * truth, (
            f"{what}: exact {value!r} vs truth {truth!r} (> {rtol:.2e})"
        )


@partial(nnx.jit, static_argnums=1)
def _bounds_and_kernel(layer, shape):
    """Every p's certified bound and the applied kernel, in one compilation per layer shape."""
    bounds = {p: bound_of(layer, shape, p=p) for p in P_ALL}
    return bounds, layer.effective_kernel()


def _bound(layer, shape, p):
    return trivial_bound(layer, shape, p=p)


def budget(n: int):
    """Examples per test in the default profile (each new layer shape compiles); the fuzz
    profile keeps its own count."""
    return settings(max_examples=n) if not WIDE else (lambda f: f)


# ---------------------------------------------------------------------------------------------
# Dense layers
# ---------------------------------------------------------------------------------------------

DENSE = {
    "Dense": lambda i, o: ln.Dense(i, o, rngs=rngs()),
    "Dense-gram": lambda i, o: ln.Dense(i, o, method="gram", rngs=rngs()),
    "LinfDense": lambda i, o: ln.LinfDense(i, o, rngs=rngs()),
    "AOLDense": lambda i, o: ln.AOLDense(i, o, rngs=rngs()),
    "BjorckDense": lambda i, o: ln.BjorckDense(i, o, num_iters=4, rngs=rngs()),
    "BjorckDense-2": lambda i, o: ln.BjorckDense(i, o, order=2, num_iters=3, rngs=rngs()),
    "SpectralDense": lambda i, o: ln.SpectralDense(i, o, rngs=rngs()),
    "SpectralDense-gram": lambda i, o: ln.SpectralDense(i, o, method="gram", rngs=rngs()),
}


def _f32(case):
    w, kind, scale = case
    w = np.asarray(w, np.float32)
    assume(np.all(np.isfinite(w)) and np.any(w != 0))
    return w, kind, scale


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@budget(7)
@given(matrices(), st.sampled_from(sorted(DENSE)))
def test_dense_layer_bounds_are_sound(case, name):
    w, kind, scale = _f32(case)
    layer = DENSE[name](*w.shape)
    layer.kernel[...] = jnp.asarray(w)
    layer.eval()
    note(f"{name} shape={w.shape} kind={kind} scale={scale}")
    bounds, eff = _bounds_and_kernel(layer, (w.shape[0],))
    eff = np.asarray(eff, np.float64)
    assert np.all(np.isfinite(eff)), f"{name}: the applied kernel is not finite"
    op = ref.dense_operator(eff)
    for p, b in bounds.items():
        n_terms = w.shape[0] if p == math.inf else w.shape[1]
        _check(b, _truth_of_matrix(op, p), p, f"{name} p={p}", n_terms=n_terms)


@budget(7)
@given(matrices(), PS, st.integers(0, 2**32 - 1))
def test_sinusoidal_dense_bound_is_sound(case, p, seed):
    w, kind, scale = _f32(case)
    layer = ln.SinusoidalDense(*w.shape, rngs=rngs())
    layer.kernel[...] = jnp.asarray(w)
    b = _bound(layer, (w.shape[0],), p)
    w64 = w.astype(np.float64)
    rng = np.random.default_rng(seed)
    # Points: x = 0 (θ = 0), random, and the least-squares x with θ = xW ≈ π/4 (exactly π/4
    # when W has full column rank: there the ℓ1 gain is √2‖W‖₁, the supremum).
    xs = [np.zeros(w.shape[0]), rng.standard_normal(w.shape[0]) / max(scale, 1e-300)]
    xs.append(np.linalg.lstsq(w64.T, np.full(w.shape[1], math.pi / 4), rcond=None)[0])
    gains = []
    for x in xs:
        theta = x @ w64
        jac = np.concatenate([-np.sin(theta)[:, None] * w64.T, np.cos(theta)[:, None] * w64.T])
        gains.append(_truth_of_matrix(jac, p))
    note(f"shape={w.shape} kind={kind} scale={scale} p={p} gains={gains}")
    _check(b, max(gains), p, f"SinusoidalDense p={p}", n_terms=max(w.shape), lower_only=p == 1)


# ---------------------------------------------------------------------------------------------
# Convolution layers
# ---------------------------------------------------------------------------------------------

CONV_GEOMETRIES = [
    ((3, 3), (2, 2), (6, 6), 2, "CIRCULAR"),
    ((3, 3), (3, 2), (6, 6), 3, "CIRCULAR"),
    ((5, 5), (2, 2), (3, 3), 1, "CIRCULAR"),  # kernel larger than the input
    ((3, 1), (2, 2), (5, 4), 2, "CIRCULAR"),  # stride does not divide
    ((3, 3), (2, 2), (5, 5), 1, "SAME"),
    ((5, 5), (1, 2), (2, 2), 1, "SAME"),  # kernel larger than the input
    ((1, 1), (2, 1), (1, 1), 1, "VALID"),  # 1x1 input and kernel
    ((2, 2), (2, 3), (7, 5), (3, 2), "VALID"),
    ((3, 3), (2, 2), (5, 6), 2, ((1, 2), (0, 3))),
]
CONV = {
    "Conv": ln.Conv,
    "AOLConv": ln.AOLConv,
    "SpectralConv": ln.SpectralConv,
}


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@budget(5)
@given(st.data())
def test_conv_layer_bounds_are_sound(data):
    geometry = data.draw(conv_geometries() if WIDE else st.sampled_from(CONV_GEOMETRIES))
    assume(_has_output(geometry))
    kernel_hw, (cin, cout), n_hw, strides, padding = geometry
    k, kind, scale = data.draw(kernels(kernel_hw, (cin, cout)))
    k = np.asarray(k, np.float32)
    assume(np.all(np.isfinite(k)) and np.any(k != 0))
    name = data.draw(st.sampled_from(sorted(CONV)))
    note(f"{name} geometry={geometry} kind={kind} scale={scale}")
    layer = CONV[name](cin, cout, kernel_hw, input_size=n_hw, strides=strides, padding=padding,
                       rngs=rngs())
    layer.kernel[...] = jnp.asarray(k)
    layer.eval()
    bounds, eff = _bounds_and_kernel(layer, (*n_hw, cin))
    eff = np.asarray(eff, np.float64)
    assert np.all(np.isfinite(eff)), f"{name}: the applied kernel is not finite"
    op = ref.conv_operator(eff, n_hw, strides, padding)
    for p, b in bounds.items():
        terms = int(np.prod(k.shape[:3])) if p == math.inf else k.shape[0] * k.shape[1] * cout
        _check(b, _truth_of_matrix(op, p), p, f"{name} p={p}", n_terms=terms)


# ---------------------------------------------------------------------------------------------
# Parameter-free layers: pools, Flatten, Scale, activations
# ---------------------------------------------------------------------------------------------


def _jacobians(layer, shape, xs):
    """float64 Jacobians of the per-example map at the points ``xs`` (flat)."""
    with jax.enable_x64(True):
        def f(x):
            return layer(x.reshape(1, *shape)).reshape(-1)

        return [np.asarray(jax.jacfwd(f)(jnp.asarray(x, jnp.float64))) for x in xs]


@st.composite
def pools(draw):
    window = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    hw = (draw(st.integers(window[0], 6)), draw(st.integers(window[1], 6)))
    if not WIDE:  # a fixed pool of shapes keeps the compilations few
        window, strides, hw = draw(st.sampled_from([
            ((2, 2), (2, 2), (4, 4)), ((3, 3), (1, 1), (4, 5)), ((2, 3), (1, 2), (3, 5)),
            ((1, 1), (1, 1), (1, 1)), ((3, 2), (3, 1), (6, 2)),
        ]))
    return window, strides, hw


@budget(5)
@given(pools(), st.sampled_from(["AvgPool", "MaxPool"]), PS, st.integers(1, 2), st.integers(0, 99))
def test_pool_bounds_are_sound(geometry, name, p, channels, seed):
    window, strides, hw = geometry
    layer = getattr(ln, name)(window, strides)
    shape = (*hw, channels)
    b = _bound(layer, shape, p)
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    # MaxPool: the Jacobian picks one input per window; points whose maxima sit where windows
    # overlap most reach the supremum (random points, and a point peaked at one pixel).
    xs = [rng.standard_normal(n) for _ in range(4)]
    peak = np.zeros(shape)
    peak[min(hw[0] - 1, window[0] - 1), min(hw[1] - 1, window[1] - 1)] = 1.0
    xs.append(peak.reshape(-1) + 1e-3 * rng.standard_normal(n))
    gains = [_truth_of_matrix(j, p) for j in _jacobians(layer, shape, xs)]
    note(f"{name} {geometry} p={p} gains={gains}")
    _check(b, max(gains), p, f"{name} p={p}", lower_only=(name == "MaxPool"))


ACTIVATIONS = {
    "ReLU": (ln.ReLU, 1), "Abs": (ln.Abs, 1), "MaxMin": (ln.MaxMin, 2),
    "GroupSort3": (lambda: ln.GroupSort(3), 3), "FullSort": (ln.FullSort, 1),
    "CReLU": (ln.CReLU, 1), "SinPoly": (ln.SinPoly, 1), "CosSin": (ln.CosSin, 1),
    "Flatten": (ln.Flatten, 1),
}


@budget(6)
@given(st.sampled_from(sorted(ACTIVATIONS)), PS, st.integers(1, 4), st.integers(0, 99),
       st.sampled_from([1.0, 1e-30, 1e30]))
def test_activation_and_shape_layer_bounds_are_sound(name, p, groups, seed, scale):
    make, width = ACTIVATIONS[name]
    layer = make()
    shape = (groups * width,)
    b = _bound(layer, shape, p)
    rng = np.random.default_rng(seed)
    n = shape[0]
    # z > 0 (ReLU all active), z = 0, z = π/4 (the ℓ1 supremum √2 of CosSin), random at scale.
    xs = [np.abs(rng.standard_normal(n)) + 0.1, np.zeros(n), np.full(n, math.pi / 4),
          scale * rng.standard_normal(n)]
    gains = [_truth_of_matrix(j, p) for j in _jacobians(layer, shape, xs)]
    note(f"{name} shape={shape} p={p} gains={gains}")
    _check(b, max(gains), p, f"{name} p={p}")  # every one of these is attained: exact


_F32_1E30 = float(np.float32(1e30))


@budget(10)
@given(st.floats(-_F32_1E30, _F32_1E30, allow_nan=False, width=32), PS)
def test_scale_bound_is_sound(factor, p):
    layer = ln.Scale(float(factor))
    b = _bound(layer, (3,), p)
    _check(b, abs(float(factor)), p, f"Scale({factor!r}) p={p}")
