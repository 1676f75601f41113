"""Fuzz: the two fast paths of issue 16 against their plain forms and float64 truth.

- The screened Gram bound of a circular convolution (liplax/norms/gram_screen.py, used once a
  kernel has more than 64 frequency matrices) is never below the float64 circular norm, and
  equals the plain maximum over every frequency (the reverse-mode reference path of
  tests/test_gram_grad.py) to 1e-6 relative; NaN/inf entries give a non-finite bound. Float64
  and float32, scales 2^-900..2^900 (float64) and 2^-120..2^120 (float32), exact zeros, kernels
  with one dominant frequency and kernels whose frequencies are all alike (the sweep).
- The Winograd power iteration (liplax/norms/winograd.py, stride-1 3×3 with ≥ 16 channels):
  the estimate is never above the float64 σ₁ by more than rounding, at every scale.

One compilation per shape (fixed shapes; hypothesis varies values). ``HYPOTHESIS_PROFILE=fuzz``
runs 10,000 examples per property.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from liplax import conv
from liplax.norms import gram_vjp
from tests import reference as ref

GRAM_HW = (12, 12)  # 3×3 kernels: 78 frequency matrices (> 2·KEEP: the screen is used)
POWER = ((3, 3, 16, 16), (5, 4), "SAME")


@functools.cache
def _gram_fns(dtype: str):
    """(screened, plain) jitted circular Gram bounds for 3×3×3×2 kernels on GRAM_HW."""
    def bound(k):
        return conv.gram_bound(k, GRAM_HW, padding="CIRCULAR").value

    with jax.enable_x64(dtype == "float64"):
        screened = jax.jit(bound)
        screened(jnp.ones((3, 3, 3, 2), dtype))
        with gram_vjp.reverse_mode_reference():
            plain = jax.jit(lambda k: bound(k))
            plain(jnp.ones((3, 3, 3, 2), dtype))
    return screened, plain


def _kernel(seed: int, kind: str, exponent: int, zero_frac: float, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "alike":  # one tap: every frequency matrix has the same singular values
        k = np.zeros((3, 3, 3, 2))
        k[rng.integers(3), rng.integers(3)] = rng.standard_normal((3, 2))
    elif kind == "peaked":  # a smooth kernel: one frequency dominates
        k = rng.standard_normal((1, 1, 3, 2)) + 0.1 * rng.standard_normal((3, 3, 3, 2))
    else:
        k = rng.standard_normal((3, 3, 3, 2))
    k = np.where(rng.random(k.shape) < zero_frac, 0.0, k) * 2.0**exponent
    return k.astype(dtype)


@given(st.sampled_from(["float32", "float64"]), st.integers(0, 2**32 - 1),
       st.sampled_from(["random", "alike", "peaked"]), st.integers(-900, 900),
       st.sampled_from([0.0, 0.0, 0.5]))
def test_screened_gram_bound_is_above_the_truth_and_equals_the_plain_maximum(
        dtype, seed, kind, exponent, zero_frac):
    if dtype == "float32":
        exponent = exponent * 120 // 900
    k = _kernel(seed, kind, exponent, zero_frac, dtype)
    screened, plain = _gram_fns(dtype)
    with jax.enable_x64(dtype == "float64"):
        got, want = float(screened(jnp.asarray(k))), float(plain(jnp.asarray(k)))
    truth = ref.circular_spectral_norm_fft(k.astype(np.float64), GRAM_HW)
    assert got >= truth
    assert abs(got - want) <= 1e-6 * want


@given(st.sampled_from(["float32", "float64"]), st.integers(0, 2**32 - 1),
       st.sampled_from([np.nan, np.inf, -np.inf]))
def test_screened_gram_bound_of_a_non_finite_kernel_is_non_finite(dtype, seed, bad):
    k = _kernel(seed, "random", 0, 0.0, dtype)
    k.reshape(-1)[np.random.default_rng(seed).integers(k.size)] = bad
    screened, _ = _gram_fns(dtype)
    with jax.enable_x64(dtype == "float64"):
        assert not np.isfinite(float(screened(jnp.asarray(k))))


@functools.cache
def _power_fn():
    shape, hw, padding = POWER
    f = jax.jit(lambda k: conv.power_iteration(k, hw, padding=padding, num_iters=30,
                                               key=jax.random.PRNGKey(0))[0].value)
    f(jnp.ones(shape, jnp.float32))
    return f


@given(st.integers(0, 2**32 - 1), st.integers(-120, 120))
def test_winograd_power_iteration_stays_below_sigma1(seed, exponent):
    shape, hw, padding = POWER
    k = (np.random.default_rng(seed).standard_normal(shape) * 2.0**exponent).astype(np.float32)
    est = float(_power_fn()(jnp.asarray(k)))
    truth = ref.spectral_norm_truth(ref.conv_operator(k.astype(np.float64), hw, 1, padding))
    assert np.isfinite(est)
    assert est <= truth * (1 + 1e-5)
    assert est >= truth * 0.5  # 30 warm-less steps from a random start
