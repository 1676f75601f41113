"""Activations: values against NumPy, the saturating property measured, and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import liplax.nn as ln

ACTIVATIONS = {
    "ReLU": ln.ReLU(),
    "Abs": ln.Abs(),
    "GroupSort3": ln.GroupSort(3),
    "MaxMin": ln.MaxMin(),
    "FullSort": ln.FullSort(),
    "CReLU": ln.CReLU(),
    "SinPoly": ln.SinPoly(),
    "CosSin": ln.CosSin(),
    "Poly-CReLU-like": ln.PolyActivation(
        [jax.nn.relu, lambda z: jax.nn.relu(-z)], [1.0, 1.0], saturating=(1, 2, "inf")
    ),
}


def _lp(v, p):
    return np.max(np.abs(v), axis=-1) if p == math.inf else np.sum(np.abs(v) ** p, -1) ** (1 / p)


def test_group_sort_matches_numpy():
    x = np.random.default_rng(0).normal(size=(4, 12)).astype(np.float32)
    for k in (1, 2, 3, 4, 12):
        want = -np.sort(-x.reshape(4, 12 // k, k), axis=-1).reshape(4, 12)
        np.testing.assert_array_equal(np.asarray(ln.group_sort(jnp.asarray(x), k)), want)
    np.testing.assert_array_equal(np.asarray(ln.max_min(jnp.asarray(x))),
                                  np.asarray(ln.group_sort(jnp.asarray(x), 2)))
    np.testing.assert_array_equal(np.asarray(ln.FullSort()(jnp.asarray(x))),
                                  -np.sort(-x, axis=-1))
    pair = np.asarray(ln.MaxMin()(jnp.asarray([[1.0, 3.0, -2.0, -5.0]])))
    np.testing.assert_array_equal(pair, [[3.0, 1.0, -2.0, -5.0]])


def test_polyactivations_values_and_width():
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    xj = jnp.asarray(x)
    want = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1)
    np.testing.assert_allclose(ln.crelu(xj), want)
    np.testing.assert_allclose(
        ln.sin_poly(xj), np.concatenate([(x + np.sin(x)) / 2, (x - np.sin(x)) / 2], -1), atol=1e-6
    )
    np.testing.assert_allclose(ln.cos_sin(xj), np.concatenate([np.cos(x), np.sin(x)], -1),
                               atol=1e-6)
    poly = ln.PolyActivation([jnp.tanh, jnp.sin, jnp.abs], [1.0, 1.0, 1.0])
    assert poly(xj).shape == (3, 15)
    assert poly.output_shape((7, 5)) == (7, 15)
    assert ln.CReLU().output_shape((5,)) == (10,)
    # ‖(1, 1, 1)‖_p: 3, √3, 1.
    for p, want in ((1, 3.0), (2, math.sqrt(3.0)), (math.inf, 1.0)):
        b = poly.lipschitz_bound((5,), p=p)
        assert b.kind == "upper" and float(b.value) >= want and float(b.value) <= want * (1 + 1e-6)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_saturating_declaration_matches_jacobian(name):
    """‖Dσ(z)v‖_p = ‖v‖_p on samples exactly for the declared p; a strict gap otherwise."""
    act = ACTIVATIONS[name]
    d = 6
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        z = jnp.asarray(rng.normal(scale=2.0, size=(64, d)))
        v = jnp.asarray(rng.normal(size=(64, d)))
        dz = np.asarray(jax.vmap(lambda z, v: jax.jvp(act, (z[None],), (v[None],))[1][0])(z, v))
        for p in (1, 2, math.inf):
            ratio = _lp(dz, p) / _lp(np.asarray(v), p)
            # never above the declared constant
            assert np.all(ratio <= act.lipschitz_constant(p) * (1 + 1e-12)), (name, p)
            if act.is_saturating(p):
                np.testing.assert_allclose(ratio, 1.0, rtol=1e-12, err_msg=f"{name} p={p}")
            else:
                assert np.max(np.abs(ratio - 1.0)) > 1e-3, (name, p)


def test_declared_constants_are_suprema():
    """CosSin reaches √2 in ℓ1 at z = π/4; SinPoly reaches 1 in ℓ2/ℓ∞ at z = 0."""
    with jax.enable_x64(True):
        def gain(act, z, p):
            dz = jax.jvp(act, (jnp.asarray([[z]]),), (jnp.asarray([[1.0]]),))[1]
            return float(_lp(np.asarray(dz)[0], p))

        assert gain(ln.CosSin(), math.pi / 4, 1) == pytest.approx(math.sqrt(2), rel=1e-12)
        assert ln.CosSin().lipschitz_constant(1) == pytest.approx(math.sqrt(2))
        for p in (2, math.inf):
            assert gain(ln.SinPoly(), 0.0, p) == pytest.approx(1.0, rel=1e-12)
            assert gain(ln.SinPoly(), 1.0, p) < 1.0 - 1e-3


def test_bad_input_names_layer_and_argument():
    with pytest.raises(ValueError, match=r"MaxMin.*width 5"):
        ln.MaxMin()(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"MaxMin.*width 7"):
        ln.MaxMin().lipschitz_bound((7,))
    with pytest.raises(ValueError, match=r"GroupSort: group_size=3 does not divide .* 8"):
        ln.GroupSort(3)(jnp.ones((2, 8)))
    with pytest.raises(ValueError, match=r"group_size=4 does not divide the number of features 6"):
        ln.group_sort(jnp.ones((6,)), 4)
    with pytest.raises(ValueError, match=r"group_size must be a positive int"):
        ln.GroupSort(0)
    with pytest.raises(ValueError, match=r"ReLU.lipschitz_bound: p must be 1, 2 or inf, got 3"):
        ln.ReLU().lipschitz_bound((4,), p=3)
    with pytest.raises(ValueError, match=r"PolyActivation: lipschitz must hold one"):
        ln.PolyActivation([jnp.sin, jnp.cos], [1.0])
