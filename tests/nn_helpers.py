"""Shared test helpers for liplax.nn: Jacobians materialized in float64 and their induced norms.

Call these inside ``with jax.enable_x64(True):`` with a model built in float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

P_ALL = (1, 2, math.inf)


def per_example(layer, input_shape):
    """x (one example, flat) ↦ layer(x[None])[0] flattened."""

    def f(xflat):
        return layer(xflat.reshape(1, *input_shape))[0].reshape(-1)

    return f


def induced_norm(j, p):
    """‖J‖_{p→p} of a materialized (m, n) Jacobian: max column sum, σ₁, max row sum.

    NumPy arrays are handled by NumPy (float64), JAX arrays (possibly traced) by jax.numpy.
    """
    xp = np if isinstance(j, np.ndarray) else jnp
    if p == 1:
        return xp.max(xp.sum(xp.abs(j), axis=0))
    if p == 2:
        return xp.linalg.svd(j, compute_uv=False)[0]
    return xp.max(xp.sum(xp.abs(j), axis=1))


def jacobian(layer, input_shape):
    """x ↦ J(x), the (m, n) Jacobian of the per-example map at a flat x."""
    return jax.jacfwd(per_example(layer, input_shape))


def max_jacobian_norms(layer, input_shape, key, *, ps=P_ALL, num_random=8, num_starts=3,
                       steps=20, step_size=0.3, scale=2.0, linear=False) -> dict:
    """For each p: the largest ‖J(x)‖_p over random inputs, x = 0, and gradient ascent.

    The ascent takes normalized gradient steps on x ↦ ‖J(x)‖_p from random starts and keeps the
    best value seen. Everything runs in one ``jax.jit``. With ``linear=True`` the map must be
    linear: the Jacobians at all random points are checked equal (so no input can do better)
    and the ascent is skipped.
    """
    jac = jacobian(layer, input_shape)
    n = math.prod(input_shape)
    k1, k2 = jax.random.split(key)
    xs = scale * jax.random.normal(k1, (num_random, n), jnp.float64)
    xs = jnp.concatenate([xs, jnp.zeros((1, n), jnp.float64)])
    starts = scale * jax.random.normal(k2, (num_starts, n), jnp.float64)

    def search(p):
        def norm_at(x):
            return induced_norm(jac(x), p)

        value_grad = jax.value_and_grad(norm_at)

        def ascend(x0):
            def body(_, carry):
                x, best = carry
                v, g = value_grad(x)
                gn = jnp.linalg.norm(g)
                return x + step_size * g / jnp.where(gn > 0, gn, 1.0), jnp.maximum(best, v)

            x, best = lax.fori_loop(0, steps, body, (x0, jnp.zeros((), x0.dtype)))
            return jnp.maximum(best, norm_at(x))

        random_best = jnp.max(jax.vmap(norm_at)(xs))
        if linear:
            return random_best
        return jnp.maximum(random_best, jnp.max(jax.vmap(ascend)(starts)))

    if linear:
        js = np.asarray(jax.jit(jax.vmap(jac))(xs))
        spread = np.max(np.abs(js - js[:1]))
        assert spread <= 1e-12 * (1.0 + np.max(np.abs(js))), "Jacobian is not constant"
        return {p: float(np.asarray(induced_norm(js[0], p))) for p in ps}
    found = jax.jit(lambda: jnp.stack([search(p) for p in ps]))()
    return {p: float(v) for p, v in zip(ps, found, strict=True)}


def rngs(seed: int = 0):
    """``nnx.Rngs`` on an ``rbg`` key: the same API, much cheaper to compile than threefry on CPU
    (every new parameter shape compiles a random-number kernel when a test builds its model)."""
    from flax import nnx

    return nnx.Rngs(jax.random.key(seed, impl="rbg"))
