"""The sinusoidal layer makes the trivial bound tight; a ReLU network does not.

- ‖J(x)‖₂ of ``SinusoidalDense`` equals ‖W‖₂ at every sampled x (docs/design.md §activations).
- A ``SinusoidalDense → Dense`` network whose second weight's top singular direction is aligned
  with the first layer's output direction has a trivial bound within 1% of its true ℓ2
  constant, found independently by gradient ascent on ‖J(x)‖₂ from random starts.
- The ``Dense → ReLU → Dense`` network built the same way (second weight aligned with the first
  layer's output direction J₁(x*)v at the same x*) does not: even the maximum of
  ‖W₁ diag(s) W₂‖₂ over *all* 2^m activation patterns s, an upper bound on its true constant, is
  far below the trivial bound, because ReLU's Jacobian diag(s) drops the negative part of the
  direction (it is not saturating), while the sinusoidal layer's Jacobian is an isometry.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

import liplax.nn as ln
from liplax import bounds
from tests.nn_helpers import jacobian, max_jacobian_norms, rngs

F64 = {"param_dtype": jnp.float64}


def test_sinusoidal_jacobian_norm_equals_weight_norm_everywhere():
    with jax.enable_x64(True):
        layer = ln.SinusoidalDense(5, 4, rngs=rngs(0), **F64)
        w = np.asarray(layer.kernel[...])
        want = np.linalg.svd(w, compute_uv=False)[0]
        xs = 3.0 * jax.random.normal(jax.random.key(1), (32, 5), jnp.float64)
        js = jax.jit(jax.vmap(jacobian(layer, (5,))))(xs)
        got = np.linalg.svd(np.asarray(js), compute_uv=False)[:, 0]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        # not only the norm: ‖J(x)v‖ = ‖vW‖ for every v (the layer is an isometry of xW's space)
        v = np.asarray(jax.random.normal(jax.random.key(2), (5,), jnp.float64))
        np.testing.assert_allclose(np.linalg.norm(np.asarray(js) @ v, axis=1),
                                   np.linalg.norm(v @ w), rtol=1e-10)
        b = layer.lipschitz_bound((5,))
        assert b.kind == "exact" and float(b.value) == np.float64(want).item() or abs(
            float(b.value) - want) <= 1e-12 * want


def _aligned_second_weight(rng, top_out, n_out, s1=2.0, rest=0.5):
    """A (len(top_out), n_out) weight whose top input-side singular vector is ``top_out``."""
    m = top_out.shape[0]
    u2 = top_out / np.linalg.norm(top_out)
    q1 = rng.normal(size=n_out)
    q1 /= np.linalg.norm(q1)
    g = rng.normal(size=(m, n_out))
    g = g - np.outer(u2, u2 @ g)  # rows ⟂ u2
    g = g - np.outer(g @ q1, q1)  # columns ⟂ q1
    g *= rest / np.linalg.svd(g, compute_uv=False)[0]
    return s1 * np.outer(u2, q1) + g


N, M, K = 2, 8, 2  # input, hidden, output widths of both networks


def _first_weight():
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(N, M))
    v = np.linalg.svd(w1)[0][:, 0]  # top input vector of x ↦ x W1
    return rng, w1, v


def test_sinusoidal_network_trivial_bound_is_tight():
    rng, w1, v = _first_weight()
    n, m, k = N, M, K
    with jax.enable_x64(True):
        a = v @ w1
        x_star = v
        theta = x_star @ w1
        top = np.concatenate([-np.sin(theta) * a, np.cos(theta) * a])  # D(x*)·v
        w2 = _aligned_second_weight(rng, top, k)
        model = ln.Sequential(ln.SinusoidalDense(n, m, rngs=rngs(0), **F64),
                              ln.Dense(2 * m, k, rngs=rngs(0), **F64))
        model.layers[0].kernel[...] = jnp.asarray(w1)
        model.layers[1].kernel[...] = jnp.asarray(w2)
        trivial = float(bounds.trivial_bound(model, (n,)).value)
        s1 = np.linalg.svd(w1, compute_uv=False)[0] * np.linalg.svd(w2, compute_uv=False)[0]
        np.testing.assert_allclose(trivial, s1, rtol=1e-10)
        # the true constant, from random starts (x* is not given to the search)
        found = max_jacobian_norms(model, (n,), jax.random.key(3), ps=(2,), num_random=64,
                                   num_starts=16, steps=60, step_size=0.2)[2]
        assert found <= trivial * (1 + 1e-9)
        assert trivial <= 1.01 * found, (trivial, found)


def test_relu_network_trivial_bound_is_loose():
    rng, w1, v = _first_weight()
    n, m, k = N, M, K
    with jax.enable_x64(True):
        a = v @ w1
        # the first layer's output direction at x* = v: J₁(v)·v = diag(a > 0)·a
        w2 = _aligned_second_weight(rng, np.where(a > 0, a, 0.0), k)
        model = ln.Sequential(ln.Dense(n, m, rngs=rngs(0), **F64), ln.ReLU(),
                              ln.Dense(m, k, rngs=rngs(0), **F64))
        model.layers[0].kernel[...] = jnp.asarray(w1)
        model.layers[2].kernel[...] = jnp.asarray(w2)
        trivial = float(bounds.trivial_bound(model, (n,)).value)
        # upper bound on the true constant: max over all patterns s of ‖W1 diag(s) W2‖₂
        true = max(
            np.linalg.svd(w1 @ np.diag(s) @ w2, compute_uv=False)[0]
            for s in itertools.product((0.0, 1.0), repeat=m)
        )
        found = max_jacobian_norms(model, (n,), jax.random.key(4), ps=(2,))[2]
        assert found <= true * (1 + 1e-9)  # the search never beats the pattern maximum
        assert trivial >= 1.3 * true, (trivial, true)
