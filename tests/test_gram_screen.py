"""The screened maximum of the Gram bound over frequencies (liplax/norms/gram_screen.py).

It must return the plain maximum over every matrix of the T-step bound (up to the rounding
margin's growth the module docstring states), an index attaining it, never less than any σ₁
(float64 SVD), through the sweep when many frequencies compete, under vmap, and a non-finite
value for non-finite input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax import conv
from liplax.norms import gram_screen
from liplax.norms.dft import frequency_pair
from liplax.norms.gram_core import gram_finish, gram_start, gram_steps
from tests import reference as ref
from tests._helpers import precision, value


def _plain(re, im, t):
    return gram_finish(gram_steps(gram_start(re, im), t), re.shape[-2])


def _batch(seed, f, m, n, dtype, spread):
    """F complex matrices whose norms spread by ``spread`` (0: all alike, so the sweep runs)."""
    rng = np.random.default_rng(seed)
    scale = (1 + spread * rng.random(f))[:, None, None]
    re = (rng.standard_normal((f, m, n)) * scale).astype(dtype)
    im = (rng.standard_normal((f, m, n)) * scale).astype(dtype)
    return re, im


@pytest.mark.parametrize("dtype", [
    "float32", pytest.param("float64", marks=pytest.mark.slow)])  # the suite's 10-minute budget
@pytest.mark.parametrize("spread", [0.0, 0.05, 1.0])
def test_screened_max_is_the_plain_maximum_and_above_every_sigma1(spread, dtype):
    re, im = _batch(1, 150, 10, 8, dtype, spread)
    with precision(dtype):
        got, f = jax.jit(lambda a, b: gram_screen.screened_max(a, b, 6))(re, im)
        plain = np.asarray(_plain(jnp.asarray(re), jnp.asarray(im), 6))
    got, f = float(got), int(f)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert abs(got - plain.max()) <= rtol * plain.max()
    assert plain[f] == pytest.approx(got, rel=rtol)
    sig = np.linalg.svd(re.astype(np.float64) + 1j * im.astype(np.float64), compute_uv=False)
    assert got >= sig[:, 0].max()


def test_the_sweep_finishes_frequencies_outside_the_kept_ones():
    # all matrices alike: the kept ones are no better than the rest, which must be finished,
    # and the maximizer may lie anywhere; put it last
    re, im = _batch(2, 1, 8, 8, "float32", 0.0)
    re, im = np.repeat(re, 200, axis=0), np.repeat(im, 200, axis=0)
    re[-1] *= 1.001
    got, f = jax.jit(lambda a, b: gram_screen.screened_max(a, b, 5))(re, im)
    plain = np.asarray(_plain(jnp.asarray(re), jnp.asarray(im), 5))
    assert int(f) == plain.argmax() == 199
    assert float(got) == pytest.approx(plain.max(), rel=1e-6)


def test_real_matrices_and_few_steps_take_the_plain_path():
    re, _ = _batch(3, 100, 6, 6, "float32", 1.0)
    for t in (2, 6):  # t ≤ TAIL: no screen
        got, _ = jax.jit(gram_screen.screened_max, static_argnums=2)(jnp.asarray(re), None, t)
        want = jnp.max(jax.jit(_plain, static_argnums=2)(jnp.asarray(re), None, t))
        assert float(got) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_matrices_give_a_non_finite_maximum(bad):
    re, im = _batch(4, 100, 6, 6, "float32", 1.0)
    re[57, 2, 3] = bad
    got, _ = jax.jit(lambda a, b: gram_screen.screened_max(a, b, 6))(re, im)
    assert not np.isfinite(float(got))


def test_vmap_over_kernels_matches_each_and_bounds_the_circular_norm():
    rng = np.random.default_rng(5)
    kernels = rng.standard_normal((3, 3, 3, 4, 4)).astype(np.float32)
    kernels[1] *= np.linspace(0.2, 1, 4)[None, None, None, :]  # different spectra
    def bound(k):
        return value(conv.gram_bound(k, (12, 12), padding="CIRCULAR"), "upper")

    got = np.asarray(jax.jit(jax.vmap(bound))(jnp.asarray(kernels)))
    single = jax.jit(bound)
    for i, k in enumerate(kernels):
        one = float(single(jnp.asarray(k)))
        assert got[i] == pytest.approx(one, rel=1e-6)
        assert got[i] >= ref.circular_spectral_norm_fft(k, (12, 12))
        re, im = frequency_pair(jnp.asarray(k), (12, 12))
        assert re.shape[0] > 2 * gram_screen.KEEP  # the screen is used
