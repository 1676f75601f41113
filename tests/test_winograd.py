"""The power iteration's Winograd fast path (liplax/norms/winograd.py, ConvOperator.power_maps).

It must be the layer's own linear map and adjoint (checked against the float64 matrix of the
layer, tests/reference.py) for every padding and odd size it accepts, and the power iteration
that uses it must still return an estimate of the real operator, converging to σ₁ from below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax import conv
from liplax.norms import operator as opm
from liplax.norms.operator import ConvOperator
from tests import reference as ref
from tests._helpers import precision, rotate, value

PADDINGS = {"SAME": "SAME", "CIRCULAR": "CIRCULAR", "VALID": "VALID",
            "asymmetric": ((2, 0), (0, 1)), "int": 2}
SIZES = {"4x4": (4, 4), "5x7": (5, 7), "9x6": (9, 6)}
TOL = {"float32": 2e-5, "float64": 1e-12}


def _kernel(seed, cin=16, cout=24, dtype="float32"):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 3, cin, cout)).astype(dtype)


def test_the_fast_path_is_taken_where_it_is_meant_to_be():
    k = jnp.asarray(_kernel(0))
    op = ConvOperator(k, (8, 8), 1, "SAME")
    assert op.power_maps()[0] != op.apply  # Winograd: 3×3, stride 1, ≥ 16 channels, CPU
    for other in (ConvOperator(k, (8, 8), 2, "SAME"), ConvOperator(k[:, :, :8], (8, 8)),
                  ConvOperator(jnp.asarray(_kernel(0)[:2]), (8, 8))):
        assert other.power_maps() == (other.apply, other.transpose)


@pytest.mark.parametrize("dtype", [
    "float32",
    pytest.param("float64", marks=pytest.mark.slow)])  # the default suite's budget; fuzz: float32
@pytest.mark.parametrize(("pad_name", "hw_name"), rotate(list(PADDINGS), list(SIZES)))
def test_power_maps_are_the_layer_and_its_adjoint(pad_name, hw_name, dtype):
    padding, hw = PADDINGS[pad_name], SIZES[hw_name]
    kernel = _kernel(1, dtype=dtype)
    m = ref.conv_operator(kernel, hw, 1, padding)  # float64, acts on columns
    rng = np.random.default_rng(2)
    with precision(dtype):
        op = ConvOperator(jnp.asarray(kernel), hw, 1, padding)
        fwd, adj = op.power_maps()
        assert fwd != op.apply
        x = rng.standard_normal(op.in_shape).astype(dtype)
        y = rng.standard_normal(op.out_shape).astype(dtype)
        ax, aty = np.asarray(jax.jit(fwd)(x), np.float64), np.asarray(jax.jit(adj)(y), np.float64)
    assert ax.shape == op.out_shape and aty.shape == op.in_shape
    want_ax = m @ x.astype(np.float64).ravel()
    want_aty = m.T @ y.astype(np.float64).ravel()
    scale = np.abs(kernel).astype(np.float64).sum(axis=(0, 1)).max() * max(
        np.abs(x).max(), np.abs(y).max())
    np.testing.assert_allclose(ax.ravel(), want_ax, rtol=0, atol=TOL[dtype] * scale)
    np.testing.assert_allclose(aty.ravel(), want_aty, rtol=0, atol=TOL[dtype] * scale)


@pytest.mark.parametrize("padding", [
    "SAME", pytest.param("CIRCULAR", marks=pytest.mark.slow),  # the default suite's budget
    pytest.param(((0, 2), (1, 1)), id="asymmetric", marks=pytest.mark.slow)])
def test_power_iteration_on_the_fast_path_converges_to_sigma1_from_below(padding, monkeypatch):
    kernel = _kernel(3, cin=16, cout=16)
    hw = (6, 5)
    truth = ref.spectral_norm_truth(ref.conv_operator(kernel, hw, 1, padding))
    key = jax.random.PRNGKey(0)
    est, v = jax.jit(lambda k: conv.power_iteration(k, hw, padding=padding, num_iters=300,
                                                    key=key))(jnp.asarray(kernel))
    est = float(value(est, "estimate"))
    assert est <= truth * (1 + 1e-5)
    assert est >= truth * (1 - 1e-3)
    # the same iteration on the direct maps reaches the same estimate
    monkeypatch.setattr(opm, "WINOGRAD_MIN_CHANNELS", 10**9)
    direct, _ = jax.jit(lambda k: conv.power_iteration(k, hw, padding=padding, num_iters=300,
                                                       key=key))(jnp.asarray(kernel))
    assert abs(float(value(direct)) - est) <= 1e-4 * truth


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_vmapped_power_iteration_matches_each_kernel_alone():
    kernels = jnp.stack([jnp.asarray(_kernel(s)) for s in (4, 5)])
    key = jax.random.PRNGKey(1)
    f = jax.vmap(lambda k: value(conv.power_iteration(k, (5, 5), num_iters=200, key=key)[0],
                                 "estimate"))
    got = np.asarray(jax.jit(f)(kernels))
    assert got.shape == (2,)
    for i, k in enumerate(np.asarray(kernels)):
        truth = ref.spectral_norm_truth(ref.conv_operator(k, (5, 5)))
        one = float(value(conv.power_iteration(k, (5, 5), num_iters=200, key=key)[0]))
        assert abs(got[i] - one) <= 1e-5 * truth  # each kernel its own transforms
        assert truth * (1 - 1e-2) <= got[i] <= truth * (1 + 1e-5)


def test_non_finite_kernels_give_a_non_finite_estimate():
    k = _kernel(6)
    k[1, 1, 0, 0] = np.nan
    est, _ = conv.power_iteration(jnp.asarray(k), (6, 6), num_iters=5, key=jax.random.PRNGKey(0))
    assert not np.isfinite(float(value(est)))
