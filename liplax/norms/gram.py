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
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax.guarantee import gamma, guarantee, unit_roundoff
from liplax.norms.dft import circular_setup, dft_error, frequency_pair
from liplax.norms.operator import HI, ConvOperator, DenseOperator, LinearOperator
from liplax.norms.scaling import cover_lost, scale, unscale


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Matrix product at full precision (TPUs default to bfloat16 passes otherwise)."""
    return jnp.matmul(a, b, precision=HI)


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
    if jnp.iscomplexobj(g):
        pair = (jnp.real(g), jnp.imag(g))
    else:
        pair = (g, None)
    return gram_finish(gram_steps(gram_start(*pair), num_iters), m)


class GramState(NamedTuple):
    """Gram iteration after t steps: the current iterate as a (re, im) pair (im is ``None`` for
    real matrices), shape (..., r, n), and the logs ``(t, ...)`` of the norms divided out so far.
    Index a batch of matrices with ``GramState(re[i], im[i], logs[:, i])``."""

    re: jax.Array
    im: jax.Array | None
    logs: jax.Array


def gram_start(re: jax.Array, im: jax.Array | None = None) -> GramState:
    """The state before the first step: G₀ = re + i·im (``im=None``: a real matrix), m ≥ n."""
    logs = jnp.zeros((0,) + re.shape[:-2], re.dtype)
    return GramState(re, im, logs)


def _frob(re: jax.Array, im: jax.Array | None) -> jax.Array:
    ss = jnp.sum(re * re, axis=(-2, -1))
    if im is not None:
        ss = ss + jnp.sum(im * im, axis=(-2, -1))
    pos = ss != 0  # NaN and inf propagate: a non-finite matrix never gets a finite bound
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)


def _safe(a: jax.Array) -> jax.Array:
    """``a`` with zeros replaced by one (NaN and inf kept, so they reach the bound)."""
    return jnp.where(a == 0, jnp.ones_like(a), a)


def _normalized_gram(re: jax.Array, im: jax.Array | None):
    """((G/a)ᴴ(G/a) as a pair, a = ‖G‖_F) for G = re + i·im of shape (..., k, n).

    The products use G itself (entries of order one: callers pass scaled or normalized
    matrices) and the division by a² comes last, fused with the combination of the products.
    A complex product costs two real ones, with Y = R + I and M = RᵀI:
    Re GᴴG = RᵀR + IᵀI = YᵀY − (M + Mᵀ) and Im GᴴG = RᵀI − IᵀR = M − Mᵀ.
    """
    ss = jnp.sum(re * re, axis=(-2, -1))
    if im is not None:
        ss = ss + jnp.sum(im * im, axis=(-2, -1))
    pos = ss != 0  # NaN and inf propagate: a non-finite matrix never gets a finite bound
    a = jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)
    d = _safe(ss)[..., None, None]
    if im is None:
        return (_mm(jnp.swapaxes(re, -1, -2), re) / d, None), a
    y = re + im
    s = _mm(jnp.swapaxes(y, -1, -2), y)
    mm = _mm(jnp.swapaxes(re, -1, -2), im)
    mm_t = jnp.swapaxes(mm, -1, -2)
    return ((s - (mm + mm_t)) / d, (mm - mm_t) / d), a


def gram_steps(state: GramState, steps: int) -> GramState:
    r"""``steps`` more steps G ← (G/a)ᴴ(G/a) of rescaled Gram iteration (static count).

    Complex matrices travel as real (re, im) pairs: XLA's CPU complex matmul is far slower than
    real ones. With G = R + iI and Y = R + I, a step costs two real products:
    Re = YᵀY − (M + Mᵀ), Im = M − Mᵀ, M = RᵀI, then a division of both by a² = ‖G‖_F².
    Rounding (Higham §3.5: |fl(XZ) − XZ| ≤ γ_k|X||Z|, and ‖|X||Z|‖_F ≤ ‖X‖_F‖Z‖_F): the computed
    Y differs from R + I by u|R + I|, so fl(YᵀY) errs by ≤ γ_{k+2}‖R + I‖_F² ≤ 2γ_{k+2}‖G‖_F²;
    M + Mᵀ by ≤ 2γ_k‖R‖_F‖I‖_F ≤ γ_k‖G‖_F²; the three additions by ≤ 4u(1 + γ_{k+2})‖G‖_F². So
    the real part errs by ≤ 3γ_{k+4}‖G‖_F², the imaginary part by ≤ γ_{k+1}‖G‖_F², the whole
    by ≤ √10·γ_{k+4}‖G‖_F² in spectral norm (≤ Frobenius), and the division adds u per entry,
    ≤ u(1 + √10·γ_{k+4})‖G‖_F². Relative to σ₁(G)² = ‖G‖_F²/R_t, the loss of a step is at most
    √10·γ_{k+6}·R_t, the constant :func:`gram_finish` uses (γ_{k+2}·R_t for real matrices:
    γ_k from the product, u from the division).
    """
    steps = _checks.num_iters(steps, "steps")
    if steps == 0:
        return state
    (re, im), a = _normalized_gram(state.re, state.im)
    # The first step may change the shape (k, n) → (n, n); later steps share one fori_loop.
    logs = jnp.zeros((steps,) + a.shape, a.dtype).at[0].set(jnp.log(_safe(a)))

    def body(t, carry):
        re, im, logs = carry
        (re, im), a = _normalized_gram(re, im)
        return re, im, logs.at[t].set(jnp.log(_safe(a)))

    re, im, logs = lax.fori_loop(1, steps, body, (re, im, logs))
    return GramState(re, im, jnp.concatenate([state.logs, logs], axis=0))


def gram_finish(state: GramState, m: int) -> jax.Array:
    """The upper bound Π_t a_t^{2^{-t}}·‖G_T‖_F^{2^{-T}} on σ₁ of the starting matrices (rows
    ``m``), times the rounding margin of :func:`gram_iteration`. Shape: the batch."""
    n = state.re.shape[-1]
    num_iters = state.logs.shape[0]
    real_dtype = state.re.dtype
    final = _frob(state.re, state.im)
    logs = jnp.concatenate([state.logs, jnp.log(_safe(final))[None]], axis=0)
    weights = jnp.asarray([2.0**-t for t in range(num_iters + 1)], real_dtype)
    log_bound = jnp.tensordot(weights, logs, axes=(0, 0))
    # A zero input stays zero; a non-zero one cannot reach zero: ‖(G/a)ᴴ(G/a)‖_F ≥ 1/n.
    nonzero = final != 0  # NaN (from a NaN or inf entry) gives NaN
    bound = jnp.where(nonzero, jnp.exp(jnp.where(nonzero, log_bound, 0.0)), 0.0)
    is_complex = state.im is not None
    margin = lax.stop_gradient(_gram_margin(logs, num_iters, m, n, real_dtype, is_complex))
    return bound * margin


def _gram_margin(logs, num_iters: int, m: int, n: int, dtype, is_complex: bool) -> jax.Array:
    """Multiplicative rounding margin of :func:`gram_iteration` (see its docstring)."""
    u = unit_roundoff(dtype)
    # ℓ_t = log‖G_t‖_F of the unnormalized iterates: ℓ_0 = log a_0, ℓ_{t+1} = 2ℓ_t + log a_{t+1}.
    ells = []
    ell = logs[0]
    ells.append(ell)
    for t in range(1, num_iters + 1):
        ell = 2.0 * ell + logs[t]
        ells.append(ell)
    ell_T = ells[-1]
    log_n = math.log(n)
    log_margin = jnp.zeros_like(logs[0])
    for t in range(num_iters):
        # log R_t ≤ 2ℓ_t − 2^{t+1-T}ℓ_T + 2^{t-T}·log n, clipped to [0, log n].
        log_r = 2.0 * ells[t] - 2.0 ** (t + 1 - num_iters) * ell_T + 2.0 ** (t - num_iters) * log_n
        r_t = jnp.exp(jnp.clip(log_r, 0.0, log_n))
        k = m if t == 0 else n
        # Complex products: two real products per step (see gram_steps).
        g = math.sqrt(10.0) * gamma(k + 6, dtype) if is_complex else gamma(k + 2, dtype)
        loss = jnp.minimum(g * r_t, 1.0)  # a loss of 1 means no guarantee: margin → inf.
        log_margin = log_margin - 2.0 ** -(t + 1) * jnp.log1p(-loss)
    # Final Frobenius norm: sum of N squares, relative error ≤ γ_{N+1}; raised to 2^{-T}.
    n_entries = (m * n) if num_iters == 0 else n * n
    log_margin = log_margin - 2.0**-num_iters * math.log1p(-min(0.5, (n_entries + 1) * u))
    # log/exp and the weighted sum: absolute error ≤ 4(T+3)u·Σ 2^{-t}|log a_t| in the exponent.
    weights = jnp.asarray([2.0**-t for t in range(num_iters + 1)], logs.dtype)
    abs_exponent = jnp.tensordot(weights, jnp.abs(logs), axes=(0, 0))
    log_margin = log_margin + 4.0 * (num_iters + 3) * u * (abs_exponent + 1.0)
    return jnp.exp(log_margin) * (1.0 + 8.0 * u)


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

    Args:
      op: the operator.
      num_iters: Gram steps T (static); 6 gives a bound within ~1% on typical weights.
    """
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
    re, im = frequency_pair(kpoly, n_poly)
    per_freq = gram_finish(gram_steps(gram_start(re, im), num_iters), re.shape[1])
    bound = jnp.max(per_freq) + dft_error(kpoly)
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
