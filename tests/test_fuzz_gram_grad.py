"""Fuzz: the Gram bound's closed-form gradient against reverse mode through every step.

Float64, one compilation per operator shape (a few fixed shapes; hypothesis varies the values,
their scale from 2^-900 to 2^900, exact zeros, non-finite entries):

- the value is bit for bit the reverse-mode reference's, the gradient agrees to 1e-8 relative,
  and ⟨∇b, x⟩ = b (Euler: the bound is 1-homogeneous, its margins constants);
- a zero array gets a zero gradient, one with a NaN or ±inf entry an all-NaN gradient;
- gram_iteration of complex batches: the same against reverse mode.

``HYPOTHESIS_PROFILE=fuzz`` runs 10,000 examples per property.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from liplax.norms import gram
from tests.test_gram_grad import bound_fn, reference_path

SHAPES = [
    ((6, 4), None),
    ((3, 3, 3, 2), dict(input_shape=(6, 6), strides=2, padding="CIRCULAR")),
    ((2, 2, 2, 3), dict(input_shape=(4, 4), strides=1, padding="SAME")),  # materialized path too
]


@functools.cache
def _fns(i: int):
    """(closed form, reference) value_and_grad of shape i, jitted once (float64)."""
    with jax.enable_x64(True):
        kw = SHAPES[i][1]
        new = jax.jit(jax.value_and_grad(bound_fn(kw)))
        with reference_path():
            g = bound_fn(kw)
            ref_fn = jax.jit(jax.value_and_grad(g))
            ref_fn(jnp.ones(SHAPES[i][0], jnp.float64))  # traced (and cached) under it
        return new, ref_fn


def _array(seed: int, shape, exponent: int, zero_frac: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2.0**exponent
    return np.where(rng.random(shape) < zero_frac, 0.0, x)


@given(st.integers(0, len(SHAPES) - 1), st.integers(0, 2**32 - 1), st.integers(-900, 900),
       st.sampled_from([0.0, 0.0, 0.3, 0.8]))
def test_gradient_equals_reverse_mode(i, seed, exponent, zero_frac):
    with jax.enable_x64(True):
        new, ref = _fns(i)
        x = jnp.asarray(_array(seed, SHAPES[i][0], exponent, zero_frac))
        (v, g), (rv, rg) = new(x), ref(x)
        assert float(v) == float(rv)
        if not bool(jnp.any(x != 0)):
            assert bool(jnp.all(g == 0))
            return
        scale_g = float(jnp.max(jnp.abs(rg)))
        assert float(jnp.max(jnp.abs(g - rg))) <= 1e-8 * scale_g
        # Euler, in units of the scale 2^exponent (exact powers of two)
        inner = float(jnp.vdot(g, x * 2.0**-exponent))
        assert abs(inner - float(v) * 2.0**-exponent) <= 1e-12 * float(v) * 2.0**-exponent


@given(st.integers(0, len(SHAPES) - 1), st.integers(0, 2**32 - 1),
       st.sampled_from([np.nan, np.inf, -np.inf, 0.0]), st.integers(1, 3))
def test_zero_and_nonfinite_gradients(i, seed, bad, count):
    with jax.enable_x64(True):
        new, _ = _fns(i)
        shape = SHAPES[i][0]
        rng = np.random.default_rng(seed)
        if bad == 0.0:
            x = np.zeros(shape)
        else:
            x = rng.standard_normal(shape)
            x.reshape(-1)[rng.choice(x.size, count, replace=False)] = bad
        v, g = new(jnp.asarray(x))
        if bad == 0.0:
            assert float(v) == 0.0 and bool(jnp.all(g == 0))
        else:
            assert not np.isfinite(float(v))
            assert bool(jnp.all(jnp.isnan(g)))


@functools.cache
def _iteration_fns():
    def f(re, im, ct):
        return jnp.vdot(ct, gram.gram_iteration(jax.lax.complex(re, im), 5))

    new = jax.jit(jax.grad(f, argnums=(0, 1)))
    with reference_path():
        ref = jax.jit(jax.grad(lambda a, b, c: f(a, b, c), argnums=(0, 1)))
        ref(*(jnp.ones((4, 5, 3), jnp.float64),) * 2, jnp.ones(4, jnp.float64))  # traced here
    return new, ref


@given(st.integers(0, 2**32 - 1))
def test_gram_iteration_complex_gradient(seed):
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        re, im = (jnp.asarray(rng.standard_normal((4, 5, 3))) for _ in range(2))
        ct = jnp.asarray(rng.standard_normal(4))
        new, ref = _iteration_fns()
        for a, b in zip(new(re, im, ct), ref(re, im, ct), strict=True):
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-8 * float(jnp.max(jnp.abs(b)))
