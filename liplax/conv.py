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

K̂ is computed by direct summation over the taps (not an FFT), as two real matrix products: its
rounding error is at most √2(γ_{kh·kw+1} + 2^{-47})·Σ_{p,q}|k[p,q,i,o]| per entry, which the upper
bounds add in full. Only one frequency of each conjugate pair is formed.

Every operator works on the kernel scaled by an exact power of two computed on its bits
(:mod:`liplax._scaling`): subnormal and near-overflow kernels are handled, NaN taps give NaN,
infinite ones inf, a norm beyond the dtype's range inf. The circular reformulation (polyphase
kernel, frequency matrices) lives in :mod:`liplax.conv_dft`, the induced ℓ∞/ℓ1 norms in
:mod:`liplax.conv_induced`; both are re-exported here.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax._conv_apply import _DIMS, _HI, _apply, _circular_pads, _resolve  # noqa: F401
from liplax._scaling import cover_lost, scale, unscale
from liplax.conv_dft import (  # noqa: F401
    _TWIDDLE_ERR,
    _circular_setup,
    _dft_error,
    _twiddles,
    circular_size,
    frequency_matrices,
    frequency_pair,
    polyphase_kernel,
    unique_frequencies,
)
from liplax.conv_induced import alias_kernel, norm_1, norm_inf  # noqa: F401
from liplax.guarantee import gamma, guarantee
from liplax.linalg import (
    GramState,
    gram_finish,
    gram_iteration,
    gram_start,
    gram_steps,
    init_vector,
    power_iteration_op,
)

# --------------------------------------------------------------------------------------------
# The layer itself.
# --------------------------------------------------------------------------------------------


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
# Exact.
# --------------------------------------------------------------------------------------------


SCREEN = ((4, 32), (2, 2))
"""Screening stages of :func:`exact_spectral_norm`: (further Gram steps, frequencies kept)."""

_CHUNK = 8
"""Frequencies per SVD batch in the certification sweep of :func:`_top_sigma`."""


def _sigma1(re: jax.Array, im: jax.Array) -> jax.Array:
    """σ₁ of each complex matrix re + i·im in a small batch (B, m, n), one SVD at a time
    (``lax.map``): jaxlib's batched CPU SVD costs far more than B single ones."""
    return lax.map(lambda p: jnp.linalg.svd(lax.complex(*p), compute_uv=False)[0], (re, im))


def _top_sigma(re: jax.Array, im: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""(max_f σ₁(M_f), argmax f) over a batch M = re + i·im of shape (F, m, n), m ≥ n.

    Rescaled Gram iteration gives a rounding-safe upper bound ub_f ≥ σ₁(M_f) per frequency at the
    cost of batched real matrix products. Each stage of :data:`SCREEN` runs a few more steps on
    the frequencies still kept (continuing, not restarting, their iteration) and keeps those
    with the largest bounds; the survivors get an SVD. Every frequency keeps the smallest bound
    it was given. Then, in decreasing order of these bounds, chunks of frequencies get an SVD
    until no remaining bound exceeds the best value found (usually no chunk at all). The result
    is the maximum over all frequencies, exactly what a full SVD sweep returns, while SVDs
    (jaxlib's CPU complex kernels are slow, and batched ones scale badly) run on a handful of
    matrices. The loop is a ``lax.while_loop``, so under ``vmap`` it runs only as many chunks as
    the hardest element needs.
    """
    num_f, m = re.shape[0], re.shape[1]
    if num_f <= SCREEN[-1][1]:
        sig = _sigma1(re, im)
        return jnp.max(sig), jnp.argmax(sig)
    real = re.dtype
    ub = jnp.full((num_f,), jnp.inf, real)
    idx = jnp.arange(num_f)
    state = gram_start(re, im)
    for steps, keep in SCREEN:
        state = gram_steps(state, steps)
        bound = gram_finish(state, m)
        ub = ub.at[idx].min(bound)
        if idx.shape[0] > keep:
            top = lax.top_k(bound, keep)[1]
            idx = idx[top]
            state = GramState(state.re[top], state.im[top], state.logs[:, top])
    sig = _sigma1(re[idx], im[idx])
    best, best_f = jnp.max(sig), idx[jnp.argmax(sig)]
    ub = ub.at[idx].set(-1.0)  # known exactly now.

    # Certification sweep: every frequency whose bound exceeds `best` gets an SVD.
    n_chunks = -(-num_f // _CHUNK)
    pad = n_chunks * _CHUNK - num_f
    order = jnp.argsort(-ub)
    ub_sorted = jnp.concatenate([ub[order], jnp.full((pad,), -1.0, real)])
    order = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)])

    def cond(c):
        j, best, _ = c
        return (j < n_chunks) & (ub_sorted[jnp.minimum(j, n_chunks - 1) * _CHUNK] > best)

    def body(c):
        j, best, best_f = c
        ids = lax.dynamic_slice(order, (j * _CHUNK,), (_CHUNK,))
        sig = _sigma1(re[ids], im[ids])
        better = jnp.max(sig) > best
        return (
            j + 1,
            jnp.where(better, jnp.max(sig), best),
            jnp.where(better, ids[jnp.argmax(sig)], best_f),
        )

    _, best, best_f = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), best, best_f))
    return best, best_f


@jax.custom_jvp
def _max_sigma(re: jax.Array, im: jax.Array) -> jax.Array:
    """max over a batch of matrices re + i·im (F, m, n) of σ₁ (see :func:`_top_sigma`)."""
    return _top_sigma(re, im)[0]


@_max_sigma.defjvp
def _max_sigma_jvp(primals, tangents):
    (re, im), (dre, dim) = primals, tangents
    sigma, f = _top_sigma(re, im)
    u, _, vh = jnp.linalg.svd(lax.complex(re[f], im[f]), full_matrices=False)
    u1, v1 = u[:, 0], jnp.conj(vh[0])
    # dσ₁ = Re(u₁ᴴ dM v₁) at the frequency attaining the maximum (a subgradient at ties).
    dm = lax.complex(dre[f], dim[f])
    dsigma = jnp.real(jnp.vdot(u1, jnp.matmul(dm, v1, precision=_HI)))
    return sigma, dsigma


@guarantee("exact")
def exact_spectral_norm(
    kernel: jax.Array, input_shape: tuple[int, int], *, strides: int | tuple[int, int] = 1
) -> jax.Array:
    r"""Exact ℓ2 operator norm of the circular convolution (flax ``padding="CIRCULAR"``).

    ‖conv‖₂ = max_{u,v} σ₁(K̂(u, v)) (Sedghi et al., ICLR 2019) over the half spectrum; the
    frequencies that can attain the maximum are screened by rounding-safe Gram upper bounds and
    get an SVD (all of them when screening cannot decide), so the result is the SVD maximum.
    Strides must divide the input size (then the polyphase kernel makes it exact); a kernel
    larger than the input wraps around (taps alias), as in the layer.

    Guarantee: ``exact`` up to the rounding of a backward-stable SVD (use :func:`gram_bound` with
    ``padding="CIRCULAR"`` for a rounding-safe upper bound).
    Gradient: Re(u₁ᴴ ∂K̂ v₁) at the maximizing frequency.

    Args:
      kernel: HWIO ``(kh, kw, in, out)``.
      input_shape: (H, W), static.
      strides: an int or a pair; must divide (H, W).
    """
    kernel, hw, st, _ = _resolve(kernel, input_shape, strides, "CIRCULAR")
    kh, kw, cin, cout = kernel.shape
    sc = scale(kernel)
    ks = sc.x
    if kh > hw[0] or kw > hw[1]:
        # Taps p and p + n act on one sample: add them first (compensated, exact for two taps;
        # the operator changes by a cyclic shift of the input), so that taps which cancel do
        # not leave the DFT's rounding, which is relative to the taps, as the result.
        ks, _ = alias_kernel(ks, hw)
    kpoly, n_poly = _circular_setup(ks, hw, st, "CIRCULAR")
    if kpoly.shape[:2] == (1, 1):
        n_poly = (1, 1)  # a 1×1 kernel has the same matrix at every frequency.
    sigma = cover_lost(_max_sigma(*frequency_pair(kpoly, n_poly)), sc.lost,
                       kh * kw * math.sqrt(cin * cout))  # taps lost to the scaling
    return unscale(sigma, sc)


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
    Gram iteration carries its a-posteriori margin, and taps too small to survive the exact
    power-of-two scaling (below tiny relative to the largest) are covered by an additive slack
    kh·kw·√(in·out)·tiny (:func:`liplax._scaling.cover_lost`). Guarantee: ``upper``.

    Args:
      kernel: HWIO ``(kh, kw, in, out)``.
      input_shape: (H, W), static.
      strides: an int or a pair.
      padding: flax padding.
      num_iters: Gram steps (static); 6 is within ~1% of the circular norm on typical kernels.
    """
    kernel, hw, st, pads = _resolve(kernel, input_shape, strides, padding)
    num_iters = _checks.num_iters(num_iters, "num_iters")
    sc = scale(kernel)
    ks = sc.x
    kh, kw, cin, cout = kernel.shape
    circ_st = st
    if pads == "CIRCULAR" and (hw[0] % st[0] or hw[1] % st[1]):
        circ_st = (1, 1)  # rows 0, s, 2s, … of the stride-1 circular conv: a submatrix.
    kpoly, n_poly = _circular_setup(ks, hw, circ_st, pads)
    re, im = frequency_pair(kpoly, n_poly)
    per_freq = gram_finish(gram_steps(gram_start(re, im), num_iters), re.shape[1])
    bound = jnp.max(per_freq) + _dft_error(kpoly)
    d_in = hw[0] * hw[1] * cin
    # The dense path needs A·eᵢ computed exactly: true for zero padding; circular padding gains
    # nothing from it except for a stride that does not divide (and taps must not alias).
    dense_ok = pads != "CIRCULAR" or (circ_st != st and kh <= hw[0] and kw <= hw[1])
    if num_iters >= 1 and d_in <= DENSE_LIMIT and dense_ok:
        bound = jnp.minimum(bound, _dense_gram_bound(ks, hw, st, pads, num_iters))
    return unscale(cover_lost(bound, sc.lost, kh * kw * math.sqrt(cin * cout)), sc)


DENSE_LIMIT = 1024
"""Input dimension H·W·in up to which :func:`gram_bound` also runs Gram iteration on the
materialized operator (O(d³) per step) and keeps the smaller of the two upper bounds: on small
inputs the zero-padded norm lies measurably below the circular one (≈5% at 8×8). Used for zero
padding, and for circular padding with a stride that does not divide the input."""


def _dense_gram_bound(ks: jax.Array, hw, st, pads, num_iters: int) -> jax.Array:
    r"""Gram-iteration upper bound on ‖A‖₂ from the materialized B = AAᵀ of the true layer.

    Row i of B is Aᵀ(A eᵢ): A eᵢ is exact (each output reads one non-zero input sample: the
    caller never uses this with aliased circular taps), and each entry of Aᵀ(·) sums at most
    kh·kw·out products, so
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
    sq = gram_b + g * trace
    # sqrt with a finite gradient at a zero kernel (where sq = 0, d sqrt would be inf·0 = NaN)
    pos = sq != 0  # NaN propagates
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


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
    sc = scale(kernel)
    ks = lax.stop_gradient(sc.x)

    def op(k, v):
        return _apply(k, v[None], st, pads)[0]

    fwd = partial(op, ks)
    transpose = jax.linear_transpose(fwd, jax.ShapeDtypeStruct(shape, kernel.dtype))
    v = power_iteration_op(fwd, lambda y: transpose(y)[0], v0, num_iters)
    return unscale(jnp.sqrt(jnp.sum(op(sc.x, v) ** 2)), sc), v
