r"""Gram iteration: rounding-safe upper bounds on the spectral norm of matrices and convolutions.

With G₀ = A and G_{t+1} = G_tᴴG_t, ‖G_T‖_F^{2^{-T}} ≥ σ₁(A), non-increasing in T and converging
super-linearly (Delattre, Barthélemy, Araujo, Allauzen, *Efficient Bound of Lipschitz Constant
for Convolutional Layers by Gram Iteration*, ICML 2023). Here: the rescaled iteration with an
a-posteriori rounding margin (:func:`gram_iteration`, in steps :func:`gram_start`,
:func:`gram_steps`, :func:`gram_finish` for callers that screen many matrices), and
:func:`gram_bound` of a :class:`~liplax.norms.operator.DenseOperator` or a
:class:`~liplax.norms.operator.ConvOperator` (any padding and stride, through the frequency
matrices of :mod:`liplax.norms.dft`). ``docs/design.md §norms``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from liplax import _checks
from liplax.guarantee import gamma, guarantee
from liplax.norms.dft import circular_setup, dft_error
from liplax.norms.gram_core import GramState, gram_finish, gram_start, gram_steps
from liplax.norms.gram_vjp import conv_gram_max, gram_values
from liplax.norms.operator import ConvOperator, DenseOperator, LinearOperator
from liplax.norms.scaling import cover_lost, scale, unscale

__all__ = ["DENSE_LIMIT", "GramState", "gram_bound", "gram_finish", "gram_iteration",
           "gram_start", "gram_steps"]


def gram_iteration(g: jax.Array, num_iters: int) -> jax.Array:
    r"""Rescaled Gram iteration on a batch of matrices ``g`` of shape ``(..., m, n)``, m ≥ n.

    With G₀ = g and G_{t+1} = G_tᴴG_t, the singular values of G_t are σᵢ^{2^t}, so
    ‖G_T‖_F^{2^{-T}} = (Σᵢ σᵢ^{2^{T+1}})^{2^{-(T+1)}} ≥ σ₁ (Delattre, Barthélemy, Araujo, Allauzen,
    *Efficient Bound of Lipschitz Constant for Convolutional Layers by Gram Iteration*, ICML 2023).
    Each step divides G_t by a_t = ‖G_t‖_F and records log a_t, so nothing overflows:
    log bound = Σ_{t=0}^{T} 2^{-t} log a_t. The steps are :func:`gram_steps` and the bound with
    its rounding margin :func:`gram_finish`; callers that screen many matrices can stop after a
    few steps, keep some of them and continue.

    Rounding: the computed normalized product differs from (G/a)ᴴ(G/a) by at most
    g_k‖G/a‖_F² in spectral norm, k the inner dimension: g_k = γ_{k+2} for real matrices (Higham,
    *Accuracy and Stability*, §3.5; the product, then the division) and √10·γ_{k+6} for complex
    ones (see :func:`gram_steps`). By Weyl σ₁ shrinks by at most a factor (1 − g_kR_t) per step,
    R_t = ‖G_t‖_F²/σ₁(G_t)² ≤ n. R_t is bounded a posteriori from the recorded norms:
    σ₁(G_t) ≥ (‖G_T‖_F/√n)^{2^{t-T}}. The returned bound is multiplied by
    Π_t (1 − g_{k_t}R_t)^{-2^{-(t+1)}} and by a factor covering the final Frobenius norm and the
    log/exp arithmetic, so it is never below σ₁ of the matrices that were passed in.

    Gradient: margin × ∇‖g‖_{S_q}, q = 2^{T+1}, in closed form (:mod:`liplax.norms.gram_vjp`:
    T recomputed steps and T products, not reverse mode through the steps).

    Args:
      g: ``(..., m, n)`` real or complex, m ≥ n, already scaled to entries of order one.
      num_iters: T ≥ 0, static.
    Returns:
      The upper bound per batch element, shape ``(...)``, real.
    """
    num_iters = _checks.num_iters(num_iters, "num_iters")
    m, n = g.shape[-2:]
    if m < n:
        raise ValueError(f"gram_iteration needs m ≥ n (Gram on the smaller side), got {g.shape}")
    pair = (jnp.real(g), jnp.imag(g)) if jnp.iscomplexobj(g) else (g,)
    return gram_values(pair, num_iters)


@guarantee(dense="upper", conv="upper")
def gram_bound(op: LinearOperator, *, num_iters: int = 6) -> jax.Array:
    r"""Upper bound on ‖A‖₂ by rescaled Gram iteration: (Σᵢ σᵢ^{2^{T+1}})^{2^{-(T+1)}} ≥ σ₁.

    - :class:`DenseOperator`: the Gram matrix is formed on the smaller side of w.
    - :class:`ConvOperator`: Gram iteration batched over the frequency matrices K̂(u, v) of a
      circular convolution, max over frequencies. ``"CIRCULAR"``: the layer itself (a stride
      that does not divide the input keeps outputs 0, s, 2s, … of the stride-1 circular conv, a
      submatrix of it, so the stride-1 bound is used). Zero padding (``"SAME"``, ``"VALID"``,
      explicit): the layer is a submatrix of the circular conv on N ≥ n + min(k−1, max(lo, hi))
      samples per axis (rounded up to a multiple of the stride), so that circular norm bounds
      it; on inputs up to :data:`DENSE_LIMIT` the Gram iteration on the materialized AAᵀ is
      also run and the smaller of the two upper bounds kept.

    Rounding is covered: the a-posteriori margin of :func:`gram_iteration`, the DFT error
    (direct summation, :func:`~liplax.norms.dft.dft_error`) for convolutions, and entries too
    small to survive the exact power-of-two scaling (:func:`~liplax.norms.scaling.cover_lost`).

    Guarantee: ``upper`` (never below σ₁, rounding included). Reference: Delattre et al., ICML
    2023; Sedghi et al., ICLR 2019 for the convolution's frequency matrices.

    Gradient: that of the returned value, with every margin (rounding margin, DFT error, lost
    entries) held constant: margin × ∇‖·‖_{S_q} (q = 2^{T+1}) of the Gram matrix, or of the
    maximizing frequency matrix K̂_{f*} (the first one attaining the maximum: a subgradient at
    exact ties) mapped back to the kernel, or of the materialized bound where that one is the
    smaller (``jnp.minimum``), in closed form (:mod:`liplax.norms.gram_vjp`): the backward pass
    costs T Gram steps and T products of one matrix, not reverse mode through every step. A
    non-finite ``op.array`` gets a NaN gradient (its value is NaN or inf).

    Args:
      op: the operator.
      num_iters: Gram steps T (static); 6 gives a bound within ~1% on typical weights.
    """
    return _nan_gradient_if_nonfinite(_gram_bound(op, num_iters), op.array)


@jax.custom_jvp
def _nan_gradient_if_nonfinite(value: jax.Array, x: jax.Array) -> jax.Array:
    """``value``; its derivative in ``x`` is NaN where ``x`` has a non-finite entry (the norm
    routines zero such entries before computing, which would otherwise give a zero gradient)."""
    return value


@_nan_gradient_if_nonfinite.defjvp
def _nan_gradient_jvp(primals, tangents):
    (value, x), (dvalue, dx) = primals, tangents
    poison = jnp.where(jnp.all(jnp.isfinite(x)), 0.0, jnp.nan).astype(value.dtype)
    return value, dvalue + poison * jnp.sum(dx)


def _gram_bound(op: LinearOperator, num_iters: int) -> jax.Array:
    num_iters = _checks.num_iters(num_iters, "num_iters")
    sc = scale(op.array)
    if isinstance(op, DenseOperator):
        w = op.w
        g = sc.x if w.shape[0] >= w.shape[1] else sc.x.T
        bound = gram_iteration(g, num_iters)
        return unscale(cover_lost(bound, sc.lost, math.sqrt(w.shape[0] * w.shape[1])), sc)
    return _conv_gram_bound(op, sc, num_iters)


def _conv_gram_bound(op: ConvOperator, sc, num_iters: int) -> jax.Array:
    """:func:`gram_bound` of a convolution, on the scaled kernel ``sc.x``."""
    ks, hw, st, pads = sc.x, op.input_hw, op.strides, op.pads
    kh, kw, cin, cout = ks.shape
    circ_st = st
    if pads == "CIRCULAR" and (hw[0] % st[0] or hw[1] % st[1]):
        circ_st = (1, 1)  # rows 0, s, 2s, … of the stride-1 circular conv: a submatrix.
    kpoly, n_poly = circular_setup(ks, hw, circ_st, pads)
    bound = conv_gram_max(kpoly, n_poly, num_iters) + dft_error(kpoly)
    d_in = hw[0] * hw[1] * cin
    # The dense path needs A·eᵢ computed exactly: true for zero padding; circular padding gains
    # nothing from it except for a stride that does not divide (and taps must not alias).
    dense_ok = pads != "CIRCULAR" or (circ_st != st and kh <= hw[0] and kw <= hw[1])
    if num_iters >= 1 and d_in <= DENSE_LIMIT and dense_ok:
        bound = jnp.minimum(bound, _dense_gram_bound(op.replace(ks), num_iters))
    return unscale(cover_lost(bound, sc.lost, kh * kw * math.sqrt(cin * cout)), sc)


DENSE_LIMIT = 1024
"""Input dimension H·W·in up to which :func:`gram_bound` also runs Gram iteration on the
materialized operator (O(d³) per step) and keeps the smaller of the two upper bounds: on small
inputs the zero-padded norm lies measurably below the circular one (≈5% at 8×8). Used for zero
padding, and for circular padding with a stride that does not divide the input."""


def _dense_gram_bound(op: ConvOperator, num_iters: int) -> jax.Array:
    r"""Gram-iteration upper bound on ‖A‖₂ from the materialized B = AAᵀ of the true layer.

    Row i of B is Aᵀ(A eᵢ): A eᵢ is exact (each output reads one non-zero input sample: the
    caller never uses this with aliased circular taps), and each entry of Aᵀ(·) sums at most
    kh·kw·out products, so
    ‖fl(B) − B‖₂ ≤ γ_{kh·kw·(out+1)}·‖A‖_F² (Higham §3.5, counting only non-zero terms).
    Then ‖A‖² = ‖B‖ ≤ gram(fl(B), T−1) + γ·tr(fl(B))(1 + γ), and gram(B, T−1) is the Schatten
    2^{T+1} norm of A squared, the same order as T steps on A.
    """
    kh, kw, cin, cout = op.kernel.shape
    d_in = math.prod(op.in_shape)
    eye = jnp.eye(d_in, dtype=op.dtype).reshape(d_in, *op.in_shape)
    b = op.transpose(op.apply(eye)).reshape(d_in, d_in)
    g = gamma(kh * kw * (cout + 1), op.dtype)
    trace = jnp.trace(b) * (1.0 + g)
    gram_b = gram_iteration(b, num_iters - 1)
    sq = gram_b + g * trace
    # sqrt with a finite gradient at a zero kernel (where sq = 0, d sqrt would be inf·0 = NaN)
    pos = sq != 0  # NaN propagates
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
