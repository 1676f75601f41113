r"""Operator norms of 2-D convolution layers: exact (circular), Gram upper bound, estimate.

Conventions follow ``flax.nnx.Conv``: kernels are HWIO ``(kh, kw, in, out)``, inputs NHWC, the
layer is a cross-correlation, and ``padding`` is ``"CIRCULAR"`` (flax wraps (k−1)//2 before and
k//2 after), ``"SAME"``, ``"VALID"`` or explicit ((lo, hi), (lo, hi)) ints. ``input_shape`` is
(H, W).

The mathematics (Sedghi, Gupta, Long, *The Singular Values of Convolutional Layers*, ICLR 2019):
a circular convolution on an N_h×N_w input is block-diagonalized by the 2-D DFT; its singular values
are those of the in×out matrices K̂(u, v) = Σ_{p,q} k[p, q] e^{2πi(pu/N_h + qv/N_w)}, one per
frequency. Taps beyond the input size alias (p and p + N_h land on the same sample). Conjugate
symmetry K̂(−u, −v) = conj K̂(u, v) means half the frequencies in v suffice.

A stride s dividing N is a stride-1 circular convolution of the polyphase (space-to-depth) input
with kernel k'[a, b, (i, j, c), o] = k[s_h a + i, s_w b + j, c, o]; so it is exact too.
A zero-padded convolution is a submatrix of a circular one on a larger input (see
:func:`circular_size`), so the circular norm bounds it from above.

K̂ is computed by direct separable summation over the taps (not an FFT): its rounding error is
then at most 2γ_{kh+kw+4}·Σ_{p,q}|k[p,q,i,o]| per entry, which the upper bounds add in full.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from liplax import _checks
from liplax.guarantee import gamma, guarantee
from liplax.linalg import (
    flush_slack,
    gram_iteration,
    init_vector,
    pow2_scale,
    power_iteration_op,
)

_HI = lax.Precision.HIGHEST
_DIMS = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------------------------
# The layer itself.
# --------------------------------------------------------------------------------------------


def _resolve(kernel, input_shape, strides, padding):
    """Validate and normalize the arguments shared by every operator."""
    kernel = _checks.kernel(kernel)
    hw = _checks.input_shape(input_shape)
    st = _checks.strides(strides)
    pads = _checks.padding(padding, hw, kernel.shape[:2], st)
    return kernel, hw, st, pads


def _circular_pads(kernel_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """flax's circular padding: (k−1)//2 before and k//2 after, wrapped."""
    return tuple(((k - 1) // 2, k // 2) for k in kernel_hw)


def _apply(kernel: jax.Array, x: jax.Array, strides, pads) -> jax.Array:
    """The convolution on a batch ``x`` (N, H, W, C) with resolved strides and padding."""
    if pads == "CIRCULAR":
        cp = _circular_pads(kernel.shape[:2])
        x = jnp.pad(x, ((0, 0), cp[0], cp[1], (0, 0)), mode="wrap")
        pads = ((0, 0), (0, 0))
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads, dimension_numbers=_DIMS, precision=_HI
    )


def apply(
    kernel: jax.Array,
    x: jax.Array,
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
) -> jax.Array:
    """The convolution layer x ↦ k ⋆ x exactly as ``nnx.Conv`` (no bias) computes it.

    Args:
      kernel: HWIO ``(kh, kw, in, out)``.
      x: ``(N, H, W, in)`` or a single image ``(H, W, in)``.
    Returns:
      The output, with the batch axis if ``x`` had one.
    """
    x = _checks.float_array(x, "x")
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be NHWC (rank 4) or HWC (rank 3), got shape {x.shape}")
    single = x.ndim == 3
    xb = x[None] if single else x
    kernel, _, st, pads = _resolve(kernel, xb.shape[1:3], strides, padding)
    if xb.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"x has {xb.shape[-1]} channels but kernel expects in = {kernel.shape[2]} "
            f"(kernel shape {kernel.shape})"
        )
    y = _apply(kernel, xb.astype(kernel.dtype), st, pads)
    return y[0] if single else y


def output_shape(
    kernel_shape: tuple[int, ...],
    input_shape: tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
) -> tuple[int, int]:
    """Spatial output shape (H', W') of the layer."""
    if len(kernel_shape) != 4:
        raise ValueError(f"kernel_shape must be HWIO of length 4, got {kernel_shape}")
    hw = _checks.input_shape(input_shape)
    st = _checks.strides(strides)
    pads = _checks.padding(padding, hw, tuple(kernel_shape[:2]), st)
    if pads == "CIRCULAR":
        return tuple(-(-n // s) for n, s in zip(hw, st, strict=True))
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, (lo, hi), k, s in zip(hw, pads, kernel_shape[:2], st, strict=True)
    )


# --------------------------------------------------------------------------------------------
# Circular reformulation: polyphase kernel, circular size, frequency matrices.
# --------------------------------------------------------------------------------------------


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


def _twiddles(taps: int, n: int, num_freq: int, dtype) -> jax.Array:
    """F[p, u] = exp(2πi·(p·u mod n)/n), from exact integer phases, in ``dtype``."""
    phase = (np.arange(taps)[:, None] * np.arange(num_freq)[None, :]) % n
    return jnp.asarray(np.exp(2j * np.pi * phase / n), dtype)


def frequency_matrices(kernel: jax.Array, n_hw: tuple[int, int]) -> jax.Array:
    """K̂(u, v) for u ∈ [0, N_h), v ∈ [0, N_w//2]: shape (N_h·(N_w//2+1), in, out), complex.

    The half spectrum in v holds every singular value (conjugate symmetry).
    """
    kh, kw, cin, cout = kernel.shape
    nh, nw = n_hw
    cdtype = jnp.result_type(kernel.dtype, jnp.complex64)
    fh = _twiddles(kh, nh, nh, cdtype)
    fw = _twiddles(kw, nw, nw // 2 + 1, cdtype)
    k = kernel.astype(cdtype)
    t = jnp.einsum("pqio,qv->pvio", k, fw, precision=_HI)
    m = jnp.einsum("pvio,pu->uvio", t, fh, precision=_HI)
    return m.reshape(-1, cin, cout)


def _dft_error(kernel: jax.Array) -> jax.Array:
    """Bound on ‖fl(K̂(u,v)) − K̂(u,v)‖₂ for every frequency: 2γ_{kh+kw+4}‖A‖_F, A = Σ_{p,q}|k|."""
    kh, kw = kernel.shape[:2]
    g = 2.0 * gamma(kh + kw + 4, kernel.dtype, complex_=True)
    a = jnp.sum(jnp.abs(kernel), axis=(0, 1))
    return lax.stop_gradient(g * jnp.sqrt(jnp.sum(a * a)))


def _circular_setup(kernel, hw, st, pads):
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


# --------------------------------------------------------------------------------------------
# Exact.
# --------------------------------------------------------------------------------------------


@jax.custom_jvp
def _max_sigma(mats: jax.Array) -> jax.Array:
    """max over a batch of matrices (…, m, n), m ≥ n, of σ₁, from the eigenvalues of MᴴM."""
    gram = jnp.matmul(jnp.conj(jnp.swapaxes(mats, -1, -2)), mats, precision=_HI)
    lam = jnp.linalg.eigvalsh(gram)[..., -1]
    return jnp.sqrt(jnp.maximum(jnp.max(lam), 0.0))


@_max_sigma.defjvp
def _max_sigma_jvp(primals, tangents):
    (mats,), (dmats,) = primals, tangents
    gram = jnp.matmul(jnp.conj(jnp.swapaxes(mats, -1, -2)), mats, precision=_HI)
    lam, vec = jnp.linalg.eigh(gram)
    f = jnp.argmax(lam[..., -1])
    sigma = jnp.sqrt(jnp.maximum(lam[f, -1], 0.0))
    v = vec[f, :, -1]
    mv = jnp.matmul(mats[f], v, precision=_HI)
    u = mv / jnp.where(sigma > 0, sigma, 1.0)
    # dσ₁ = Re(uᴴ dM v) at the frequency attaining the maximum.
    dsigma = jnp.real(jnp.vdot(u, jnp.matmul(dmats[f], v, precision=_HI)))
    return sigma, dsigma


def _side(mats: jax.Array) -> jax.Array:
    """Arrange (…, in, out) matrices as (…, m, n) with m ≥ n (Gram on the smaller side)."""
    return mats if mats.shape[-2] >= mats.shape[-1] else jnp.swapaxes(mats, -1, -2)


@guarantee("exact")
def exact_spectral_norm(
    kernel: jax.Array, input_shape: tuple[int, int], *, strides: int | tuple[int, int] = 1
) -> jax.Array:
    r"""Exact ℓ2 operator norm of the circular convolution (flax ``padding="CIRCULAR"``).

    ‖conv‖₂ = max_{u,v} σ₁(K̂(u, v)) (Sedghi et al., ICLR 2019), computed from the largest
    eigenvalue of the Gram matrix on the smaller channel side, per frequency of the half
    spectrum. Strides must divide the input size (then the polyphase kernel makes it exact);
    a kernel larger than the input wraps around (taps alias), as in the layer.

    Guarantee: ``exact`` up to rounding (relative error of order γ_k·‖K̂‖_F²/σ₁², k the channel
    count; use :func:`gram_bound` with ``padding="CIRCULAR"`` for a rounding-safe upper bound).
    Gradient: Re(u₁ᴴ ∂K̂ v₁) at the maximizing frequency.

    Args:
      kernel: HWIO ``(kh, kw, in, out)``.
      input_shape: (H, W), static.
      strides: an int or a pair; must divide (H, W).
    """
    kernel, hw, st, _ = _resolve(kernel, input_shape, strides, "CIRCULAR")
    kpoly, n_poly = _circular_setup(kernel, hw, st, "CIRCULAR")
    s = pow2_scale(kpoly)
    mats = _side(frequency_matrices(kpoly / s, n_poly))
    return s * _max_sigma(mats)


# --------------------------------------------------------------------------------------------
# Upper bound.
# --------------------------------------------------------------------------------------------


@guarantee("upper")
def gram_bound(
    kernel: jax.Array,
    input_shape: tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
    num_iters: int = 6,
) -> jax.Array:
    r"""Upper bound on the ℓ2 operator norm of the convolution layer, for any padding and stride.

    Gram iteration (Delattre et al., ICML 2023) batched over the frequency matrices K̂(u, v) of a
    circular convolution, max over frequencies:

    - ``"CIRCULAR"``: the layer itself. A stride that does not divide the input keeps outputs
      0, s, 2s, … of the stride-1 circular conv, a submatrix of it, so the stride-1 bound is used.
    - zero padding (``"SAME"``, ``"VALID"``, explicit): the layer is a submatrix of the circular
      conv on N ≥ n + min(k−1, max(lo, hi)) samples per axis (rounded up to a multiple of the
      stride), so that circular norm bounds it. No correction factor; tight as n grows.

    Rounding is covered: the DFT error (direct summation, 2γ_{kh+kw+4}‖Σ|k|‖_F) is added, the
    Gram iteration carries its a-posteriori margin, and entries flushed to zero by XLA are
    covered by an additive slack. Guarantee: ``upper``.

    Args:
      kernel: HWIO ``(kh, kw, in, out)``.
      input_shape: (H, W), static.
      strides: an int or a pair.
      padding: flax padding.
      num_iters: Gram steps (static); 6 is within ~1% of the circular norm on typical kernels.
    """
    kernel, hw, st, pads = _resolve(kernel, input_shape, strides, padding)
    num_iters = _checks.num_iters(num_iters, "num_iters")
    s = pow2_scale(kernel)
    ks = kernel / s
    kh, kw, cin, cout = kernel.shape
    slack = flush_slack(kernel, s, kh * kw * math.sqrt(cin * cout))
    circ_st = st
    if pads == "CIRCULAR" and (hw[0] % st[0] or hw[1] % st[1]):
        circ_st = (1, 1)  # rows 0, s, 2s, … of the stride-1 circular conv: a submatrix.
    kpoly, n_poly = _circular_setup(ks, hw, circ_st, pads)
    per_freq = gram_iteration(_side(frequency_matrices(kpoly, n_poly)), num_iters)
    bound = jnp.max(per_freq) + _dft_error(kpoly)
    d_in = hw[0] * hw[1] * cin
    if num_iters >= 1 and d_in <= DENSE_LIMIT:
        bound = jnp.minimum(bound, _dense_gram_bound(ks, hw, st, pads, num_iters))
    return s * (bound + slack)


DENSE_LIMIT = 1024
"""Input dimension H·W·in up to which :func:`gram_bound` also runs Gram iteration on the
materialized operator (O(d³) per step) and keeps the smaller of the two upper bounds: on small
inputs the zero-padded norm lies measurably below the circular one (≈5% at 8×8)."""


def _dense_gram_bound(ks: jax.Array, hw, st, pads, num_iters: int) -> jax.Array:
    r"""Gram-iteration upper bound on ‖A‖₂ from the materialized B = AAᵀ of the true layer.

    Row i of B is Aᵀ(A eᵢ): A eᵢ is exact (each output reads one non-zero input sample, up to
    circular aliasing), and each entry of Aᵀ(·) sums at most kh·kw·out products, so
    ‖fl(B) − B‖₂ ≤ γ_{kh·kw·(out+1)}·‖A‖_F² (Higham §3.5, counting only non-zero terms).
    Then ‖A‖² = ‖B‖ ≤ gram(fl(B), T−1) + γ·tr(fl(B))(1 + γ), and gram(B, T−1) is the Schatten
    2^{T+1} norm of A squared, the same order as T steps on A.
    """
    kh, kw, cin, cout = ks.shape
    d_in = hw[0] * hw[1] * cin
    eye = jnp.eye(d_in, dtype=ks.dtype).reshape(d_in, *hw, cin)
    fwd = partial(_apply, ks, strides=st, pads=pads)
    y = fwd(eye)
    (b,) = jax.linear_transpose(fwd, jax.ShapeDtypeStruct(eye.shape, ks.dtype))(y)
    b = b.reshape(d_in, d_in)
    g = gamma(kh * kw * (cout + 1), ks.dtype)
    trace = jnp.trace(b) * (1.0 + g)
    gram_b = gram_iteration(b, num_iters - 1)
    return jnp.sqrt(gram_b + g * trace)


# --------------------------------------------------------------------------------------------
# Estimate.
# --------------------------------------------------------------------------------------------


@guarantee("estimate")
def power_iteration(
    kernel: jax.Array,
    input_shape: tuple[int, int],
    u: jax.Array | None = None,
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
    num_iters: int = 50,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Estimate of the layer's ℓ2 norm by power iteration on the real operator AᵀA.

    A is the layer itself (``lax.conv_general_dilated`` with its strides and padding), Aᵀ its
    linear transpose, so every stride and padding is the true layer. v ← AᵀAv/‖AᵀAv‖ and
    σ̂ = ‖Av‖ ≤ σ₁: the estimate approaches the norm **from below**; it is never a certificate.
    Pass the returned vector back as ``u`` to warm-start. The gradient holds v fixed, giving
    u₁v₁ᵀ at convergence (Miyato et al., ICLR 2018; Ryu et al., ICML 2019 for convolutions).

    Args:
      kernel: HWIO ``(kh, kw, in, out)``.
      input_shape: (H, W), static.
      u: previous unit vector of shape (H, W, in), or ``None`` with ``key``.
      strides, padding: as the layer.
      num_iters: steps (static).
      key: PRNG key for a random start.
    Returns:
      ``(estimate, v)`` with v of shape (H, W, in).
    """
    kernel, hw, st, pads = _resolve(kernel, input_shape, strides, padding)
    num_iters = _checks.num_iters(num_iters, "num_iters")
    shape = (*hw, kernel.shape[2])
    v0 = init_vector(shape, kernel.dtype, u, key)
    s = pow2_scale(kernel)
    ks = lax.stop_gradient(kernel / s)

    def op(k, v):
        return _apply(k, v[None], st, pads)[0]

    fwd = partial(op, ks)
    transpose = jax.linear_transpose(fwd, jax.ShapeDtypeStruct(shape, kernel.dtype))
    v = power_iteration_op(fwd, lambda y: transpose(y)[0], v0, num_iters)
    sigma = s * jnp.sqrt(jnp.sum(op(kernel / s, v) ** 2))
    return sigma, v


# --------------------------------------------------------------------------------------------
# Induced ℓ∞ and ℓ1 norms.
# --------------------------------------------------------------------------------------------


@guarantee("upper")
def norm_inf(
    kernel: jax.Array,
    input_shape: tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
) -> jax.Array:
    r"""Induced ℓ∞→ℓ∞ norm of the layer: the largest absolute row sum of its matrix.

    Computed through the layer itself: the row sums of |A| are the layer with kernel |k| applied to
    the all-ones input, so every padding and stride (including border rows that see fewer taps)
    is exact. Where a circular kernel is larger than the input, aliased taps add inside one entry
    and |Σ| ≤ Σ|·| makes it an upper bound. Guarantee: ``upper`` (``exact`` unless circular
    aliasing; relative rounding error ≤ γ of the tap count, covered by a (1 + 2γ) factor).
    """
    kernel, hw, st, pads = _resolve(kernel, input_shape, strides, padding)
    s = pow2_scale(kernel)
    ones = jnp.ones((1, *hw, kernel.shape[2]), kernel.dtype)
    rows = _apply(jnp.abs(kernel / s), ones, st, pads)
    terms = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    return s * jnp.max(rows) * (1.0 + 2.0 * gamma(terms, kernel.dtype))


@guarantee("upper")
def norm_1(
    kernel: jax.Array,
    input_shape: tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
) -> jax.Array:
    r"""Induced ℓ1→ℓ1 norm of the layer: the largest absolute column sum of its matrix.

    Column sums of |A| are |A|ᵀ1, the transpose of the layer with kernel |k| applied to the all-ones
    output. Same guarantee as :func:`norm_inf` (exact unless circular aliasing; upper always).
    """
    kernel, hw, st, pads = _resolve(kernel, input_shape, strides, padding)
    s = pow2_scale(kernel)
    shape = (1, *hw, kernel.shape[2])
    fwd = partial(_apply, jnp.abs(kernel / s), strides=st, pads=pads)
    out = jax.eval_shape(fwd, jax.ShapeDtypeStruct(shape, kernel.dtype))
    (cols,) = jax.linear_transpose(fwd, jax.ShapeDtypeStruct(shape, kernel.dtype))(
        jnp.ones(out.shape, kernel.dtype)
    )
    terms = kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
    return s * jnp.max(cols) * (1.0 + 2.0 * gamma(terms, kernel.dtype))
