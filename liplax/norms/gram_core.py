r"""Rescaled Gram iteration in steps: the iterates, their norms and the a-posteriori margin.

The primitives of :mod:`liplax.norms.gram` (whose :func:`~liplax.norms.gram.gram_iteration`
docstring gives the mathematics and the rounding analysis): :func:`gram_start`,
:func:`gram_steps`, :func:`gram_finish`, for callers that screen many matrices (the exact
circular norm, :mod:`liplax.norms.exact`) and for the Gram bound and its gradient
(:mod:`liplax.norms.gram_vjp`). Delattre, Barthélemy, Araujo, Allauzen, ICML 2023;
``docs/design.md §norms``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax.guarantee import gamma, unit_roundoff
from liplax.norms.operator import HI


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Matrix product at full precision (TPUs default to bfloat16 passes otherwise)."""
    return jnp.matmul(a, b, precision=HI)


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
    return _run_steps(state, steps, keep=False)[0]


def gram_steps_kept(state: GramState, steps: int) -> tuple[GramState, tuple]:
    """:func:`gram_steps` (the same operations) that also returns the iterates X_1, …, X_steps
    after each step as a pair of stacks (steps, ..., n, n) (imaginary part ``None`` if real):
    the residuals of the Gram bound's gradient (:mod:`liplax.norms.gram_vjp`)."""
    return _run_steps(state, steps, keep=True)


def _run_steps(state: GramState, steps: int, keep: bool):
    steps = _checks.num_iters(steps, "steps")
    if steps == 0:
        return state, None
    (re, im), a = _normalized_gram(state.re, state.im)
    # The first step may change the shape (k, n) → (n, n); later steps share one fori_loop.
    logs = jnp.zeros((steps,) + a.shape, a.dtype).at[0].set(jnp.log(_safe(a)))
    kept = None
    if keep:
        kept = tuple(None if x is None else jnp.zeros((steps,) + x.shape, x.dtype).at[0].set(x)
                     for x in (re, im))

    def body(t, carry):
        re, im, logs, kept = carry
        (re, im), a = _normalized_gram(re, im)
        if kept is not None:
            kept = tuple(None if k is None else k.at[t].set(x)
                         for k, x in zip(kept, (re, im), strict=True))
        return re, im, logs.at[t].set(jnp.log(_safe(a))), kept

    re, im, logs, kept = lax.fori_loop(1, steps, body, (re, im, logs, kept))
    return GramState(re, im, jnp.concatenate([state.logs, logs], axis=0)), kept


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
