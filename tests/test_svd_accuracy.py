"""An ``exact`` spectral norm is never more than 64u below the float64 truth (guarantee.EXACT_ULPS),
including matrices whose top singular values cluster (near-orthogonal ones: a Björck layer's
weight), where jaxlib's CPU SVD without vectors was measured up to ~80u low (1 matrix in 300
beyond 64u, most beyond 32u). The tests hold the SVD to HALF the margin, 32u (measured ≤ 13u
with vectors), so that a path drifting towards the margin fails here before it crosses it.

Dense (``linalg.spectral_norm``), convolution (``conv.exact_spectral_norm``, whose frequency
matrices get an SVD) and complex batches (``norms.exact.max_sigma``), float32 and float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax import conv, linalg
from liplax.guarantee import exact_margin
from liplax.norms.exact import max_sigma
from tests._helpers import precision, value


def clustered(rng, m: int, n: int, complex_: bool = False) -> np.ndarray:
    """An m×n matrix with σ₁ = 1 and the others within 10⁻⁸…10⁻¹ of it (float64)."""
    def g(shape):
        x = rng.standard_normal(shape)
        return x + 1j * rng.standard_normal(shape) if complex_ else x

    k = min(m, n)
    q, _ = np.linalg.qr(g((max(m, n), k)))
    v, _ = np.linalg.qr(g((k, k)))
    gaps = np.abs(rng.standard_normal(k - 1)) * 10.0 ** rng.uniform(-8, -1)
    s = 1 - np.concatenate([[0.0], gaps])
    a = (q * s) @ v.conj().T
    return a if m >= n else a.T


def _check(got, a, dtype):
    truth = np.linalg.svd(np.asarray(a, np.complex128 if np.iscomplexobj(a) else np.float64),
                          compute_uv=False)[..., 0]
    low = (truth - np.asarray(got, np.float64)) / truth
    u = exact_margin(jnp.dtype(dtype)) / 64
    assert low.max() <= 32 * u, f"{low.max() / u:.1f}u below the float64 σ₁"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (16, 16)])
def test_dense_exact_norm_of_clustered_matrices(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    mats = np.stack([clustered(rng, *shape) for _ in range(60)]).astype(dtype)
    with precision(dtype):
        f = jax.jit(lambda w: value(linalg.spectral_norm(w), "exact"))
        got = np.stack([f(w) for w in mats])  # one matrix per call: batched SVDs differ
    _check(got, mats, dtype)


def test_the_bjorck_weight_the_fuzz_found():
    # tests/test_fuzz_mlp_configs.py: a 3-step order-1 Björck weight of shape (5, 3) whose
    # σ = (1.00000004, 0.99998856, …) got 0.99999607 (67u low) from the SVD without vectors
    rng = np.random.default_rng(1212783)
    w = rng.normal(size=(5, 3))
    for _ in range(3):  # order-1 Björck: W ← W(3I − WᵀW)/2, from W/‖W‖_F... as the layer does
        w = w / np.linalg.norm(w) if _ == 0 else w
        w = 1.5 * w - 0.5 * w @ (w.T @ w)
    w = w.astype(np.float32)
    _check(jax.jit(lambda w: value(linalg.spectral_norm(w)))(w)[None], w[None], "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_complex_and_convolution_exact_norms_of_clustered_matrices(dtype):
    rng = np.random.default_rng(7)
    mats = np.stack([clustered(rng, 6, 4, complex_=True) for _ in range(60)])
    cdt = np.complex64 if dtype == "float32" else np.complex128
    mats = mats.astype(cdt)
    with precision(dtype):
        f = jax.jit(lambda a, b: max_sigma(a[None], b[None]))
        got = np.stack([f(m.real, m.imag) for m in mats])
    _check(got, mats, dtype)
    # a 1×1 circular convolution: every frequency matrix is the weight itself
    ws = np.stack([clustered(rng, 8, 8) for _ in range(30)]).astype(dtype)
    with precision(dtype):
        g = jax.jit(lambda k: value(conv.exact_spectral_norm(k[None, None], (4, 4))))
        got = np.stack([g(w) for w in ws])
    _check(got, ws, dtype)
