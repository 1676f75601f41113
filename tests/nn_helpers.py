"""Shared test helpers for liplax.nn: Jacobians materialized in float64 and their induced norms.

Call these inside ``with jax.enable_x64(True):`` with a model built in float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

P_ALL = (1, 2, math.inf)


def per_example(layer, input_shape):
    """x (one example, flat) ↦ layer(x[None])[0] flattened."""

    def f(xflat):
        return layer(xflat.reshape(1, *input_shape))[0].reshape(-1)

    return f


def induced_norm(j: jax.Array, p) -> jax.Array:
    """‖J‖_{p→p} of a materialized (m, n) Jacobian: max column sum, σ₁, max row sum."""
    if p == 1:
        return jnp.max(jnp.sum(jnp.abs(j), axis=0))
    if p == 2:
        return jnp.linalg.svd(j, compute_uv=False)[0]
    return jnp.max(jnp.sum(jnp.abs(j), axis=1))


def jacobian(layer, input_shape):
    """x ↦ J(x), the (m, n) Jacobian of the per-example map at a flat x."""
    return jax.jacfwd(per_example(layer, input_shape))


def max_jacobian_norms(layer, input_shape, key, *, ps=P_ALL, num_random=8, num_starts=3,
                       steps=20, step_size=0.3, scale=2.0) -> dict:
    """For each p: the largest ‖J(x)‖_p over random inputs, x = 0, and gradient ascent.

    The ascent takes normalized gradient steps on x ↦ ‖J(x)‖_p from random starts and keeps the
    best value seen. Everything runs in one ``jax.jit``.
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

        return jnp.maximum(jnp.max(jax.vmap(norm_at)(xs)), jnp.max(jax.vmap(ascend)(starts)))

    found = jax.jit(lambda: jnp.stack([search(p) for p in ps]))()
    return {p: float(v) for p, v in zip(ps, found, strict=True)}
