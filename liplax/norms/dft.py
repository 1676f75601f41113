r"""Fourier view of a convolution layer: its circular reformulation (Sedghi et al., ICLR 2019).

A circular convolution is block-diagonalized by the 2-D DFT (Sedghi, Gupta, Long, ICLR 2019);
a stride dividing the input is a stride-1 circular convolution of the polyphase kernel; a
zero-padded layer is a submatrix of a circular one on a larger input (:func:`circular_size`).
Here: the polyphase kernel, the circular size, the frequencies holding every singular value,
the frequency matrices K̂(u, v) summed directly over the taps, and the bound on their rounding.
The norm routines of :mod:`liplax.norms.exact` and :mod:`liplax.norms.gram` build on these
(``docs/design.md §norms``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from liplax.guarantee import gamma

_HI = lax.Precision.HIGHEST


def circular_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
    r"""Smallest N such that the zero-padded conv on n samples is a submatrix of the circular one.

    Embed x at offset lo in N zeros. Every output whose window touches the input reads, on the
    circle, exactly what it reads from the zero-padded input once N ≥ n + min(k − 1, max(lo, hi)),
    and distinct such outputs land on distinct circular outputs. Outputs whose window lies in the
    padding are zero rows and do not change the norm. N is rounded up to a multiple of s.
    """
    big_n = n + min(k - 1, max(lo, hi))
    return -(-big_n // s) * s


def polyphase_kernel(kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """k'[a, b, (i, j, c), o] = k[s_h a + i, s_w b + j, c, o]: the stride-1 kernel on space-to-depth
    components (Sedghi et al. §3; the strided circular conv equals it when s divides N)."""
    sh, sw = strides
    if (sh, sw) == (1, 1):
        return kernel
    kh, kw, cin, cout = kernel.shape
    ah, aw = -(-kh // sh), -(-kw // sw)
    k = jnp.pad(kernel, ((0, ah * sh - kh), (0, aw * sw - kw), (0, 0), (0, 0)))
    k = k.reshape(ah, sh, aw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return k.reshape(ah, aw, sh * sw * cin, cout)


def unique_frequencies(n_hw: tuple[int, int]) -> np.ndarray:
    """(F, 2) integer frequencies (u, v) that hold every singular value, one per conjugate pair.

    K̂(−u, −v) = conj K̂(u, v) has the same singular values, so v ∈ [0, N_w//2] suffices, and in
    the self-conjugate columns v = 0 and v = N_w/2 (N_w even) also u ∈ [0, N_h//2].
    """
    nh, nw = n_hw
    rows = []
    for v in range(nw // 2 + 1):
        self_conjugate = (2 * v) % nw == 0
        us = range(nh // 2 + 1) if self_conjugate else range(nh)
        rows.extend((u, v) for u in us)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


TWIDDLE_ERR = 2.0**-48
"""Absolute error bound of a float64 twiddle component cos/sin(2π·j/N) before the cast: the
angle carries ≤ 3 float64 roundings (≤ 19·2⁻⁵³ absolute) and libm's cos/sin < 1 ulp."""


def twiddles(kernel_hw: tuple[int, int], n_hw: tuple[int, int], dtype) -> tuple[jax.Array, ...]:
    """cos and sin of 2π(p·u/N_h + q·v/N_w), shape (F, kh·kw), from exact integer phases."""
    kh, kw = kernel_hw
    nh, nw = n_hw
    uv = unique_frequencies(n_hw)
    p, q = np.arange(kh).repeat(kw), np.tile(np.arange(kw), kh)
    num = ((uv[:, :1] * p[None] % nh) * nw + (uv[:, 1:] * q[None] % nw) * nh) % (nh * nw)
    angle = 2.0 * np.pi * num / (nh * nw)
    return jnp.asarray(np.cos(angle), dtype), jnp.asarray(np.sin(angle), dtype)


def frequency_pair(kernel: jax.Array, n_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    r"""(Re K̂, Im K̂) at the frequencies of :func:`unique_frequencies`, arranged (F, m, n) with
    m ≥ n: (F, in, out) when in ≥ out, else transposed (the Gram on the smaller side).

    K̂(u, v) = Σ_{p,q} k[p, q] e^{2πi(pu/N_h + qv/N_w)}, summed directly over the kh·kw taps as
    two real matrix products (no complex arithmetic; see :func:`dft_error` for the rounding).
    """
    kh, kw, cin, cout = kernel.shape
    k = kernel if cin >= cout else jnp.swapaxes(kernel, 2, 3)
    m, n = k.shape[2:]
    k = k.reshape(kh * kw, m * n)
    cos, sin = twiddles((kh, kw), n_hw, kernel.dtype)
    re = jnp.matmul(cos, k, precision=_HI).reshape(-1, m, n)
    im = jnp.matmul(sin, k, precision=_HI).reshape(-1, m, n)
    return re, im


def frequency_matrices(kernel: jax.Array, n_hw: tuple[int, int]) -> jax.Array:
    """K̂(u, v) at the frequencies of :func:`unique_frequencies`: shape (F, in, out), complex."""
    re, im = frequency_pair(kernel, n_hw)
    if kernel.shape[2] < kernel.shape[3]:
        re, im = jnp.swapaxes(re, 1, 2), jnp.swapaxes(im, 1, 2)
    return lax.complex(re, im)


def dft_error(kernel: jax.Array) -> jax.Array:
    """Bound on ‖fl(K̂(u,v)) − K̂(u,v)‖₂ at every frequency: √2(γ_{K+1} + 2ε)‖A‖_F, A = Σ_{p,q}|k|.

    Each twiddle component is ŵ = w(1 + δ) + η, |δ| ≤ u (cast), |η| ≤ ε (:data:`TWIDDLE_ERR`);
    a real or imaginary part is a K = kh·kw term sum, so it errs by
    ≤ γ_K Σ|k||ŵ| + Σ|k||ŵ − w| ≤ (γ_{K+1} + 2ε)Σ_{p,q}|k| (Higham §3.1); a complex entry by √2
    times that, and the spectral norm by at most the Frobenius norm over (in, out).
    """
    kh, kw = kernel.shape[:2]
    g = math.sqrt(2.0) * (gamma(kh * kw + 1, kernel.dtype) + 2.0 * TWIDDLE_ERR)
    a = jnp.sum(jnp.abs(kernel), axis=(0, 1))
    return lax.stop_gradient(g * jnp.sqrt(jnp.sum(a * a)))


def circular_setup(kernel, hw, st, pads):
    """(polyphase kernel, circular size per axis after the stride) for any padding.

    Circular padding needs s | n; zero padding embeds into a circular conv (:func:`circular_size`).
    """
    if pads == "CIRCULAR":
        for axis in range(2):
            if hw[axis] % st[axis]:
                raise ValueError(
                    f"strides {st} must divide input_shape {hw} for a circular convolution "
                    f"(axis {axis}: {hw[axis]} % {st[axis]} != 0)"
                )
        big = hw
    else:
        big = tuple(
            circular_size(hw[a], kernel.shape[a], st[a], pads[a][0], pads[a][1]) for a in range(2)
        )
    n_poly = (big[0] // st[0], big[1] // st[1])
    return polyphase_kernel(kernel, st), n_poly
