r"""Operator norms of matrices: exact, Gram-iteration upper bound, power-iteration estimate, ℓ1/ℓ∞.

Layout follows ``flax.nnx.Linear``: a weight ``w`` of shape ``(in, out)`` is the map
``x ↦ x @ w`` on row vectors. The spectral norm is the same for ``w`` and ``wᵀ``; the induced
ℓ∞ and ℓ1 norms are not, and :func:`norm_inf` / :func:`norm_1` are those of the map ``x ↦ x @ w``.

Every bound scales its input by an exact power of two before working and undoes the scaling at
the end, with integer operations on the bits (:mod:`liplax._scaling`), so subnormal (1e-40) and
near-overflow (3e38) matrices are handled in float32 although XLA flushes subnormals: a result
is never a wrong small number. NaN entries give NaN, infinite ones inf, a norm beyond the
dtype's range inf, and a non-zero norm below the smallest normal number is reported as that
number.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax._scaling import cover_lost, scale, unscale
from liplax._scaling import pow2 as _pow2
from liplax.guarantee import gamma, guarantee, unit_roundoff

_HI = lax.Precision.HIGHEST


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Matrix product at full precision (TPUs default to bfloat16 passes otherwise)."""
    return jnp.matmul(a, b, precision=_HI)


def pow2_scale(x: jax.Array) -> jax.Array:
    """A power of two ``s`` (no gradient) with max|x/s| in [1, 2); 1 for a zero array.

    Dividing by a power of two is exact in binary floating point, so the scaling costs no
    rounding; operator norms are 1-homogeneous, so ‖x‖ = s·‖x/s‖. ``s`` is clipped to
    [2^{3−e_max}, 2^{e_max−3}] so that both s and 1/s are normal (XLA divides by multiplying
    with the reciprocal, and flushes subnormals): max|x/s| < 8 near overflow, and subnormal x
    stay out of reach (they are flushed anyway). The bound operators use
    :func:`liplax._scaling.scale` instead, which has neither limit.
    """
    sc = scale(lax.stop_gradient(x))
    e_max = int(jnp.finfo(x.dtype).maxexp) - 1
    k = jnp.clip(sc.k, 3 - e_max, e_max - 3)
    return lax.stop_gradient(jnp.where(jnp.any(x != 0), _pow2(k, x.dtype), jnp.ones((), x.dtype)))


# --------------------------------------------------------------------------------------------
# Exact: the largest singular value.
# --------------------------------------------------------------------------------------------


@jax.custom_jvp
def _sigma_max(w: jax.Array) -> jax.Array:
    return jnp.linalg.svd(w, compute_uv=False)[..., 0]


@_sigma_max.defjvp
def _sigma_max_jvp(primals, tangents):
    (w,), (dw,) = primals, tangents
    u, s, vh = jnp.linalg.svd(w, full_matrices=False)
    u1, v1 = u[..., :, 0], vh[..., 0, :]
    # dσ₁ = u₁ᵀ dW v₁ (a subgradient when σ₁ is repeated).
    return s[..., 0], jnp.einsum("...i,...ij,...j->...", u1, dw, v1, precision=_HI)


@guarantee("exact")
def spectral_norm(w: jax.Array) -> jax.Array:
    r"""Exact spectral norm ‖w‖₂ = σ₁(w) by singular value decomposition.

    Guarantee: ``exact``, up to the rounding of a backward-stable SVD (relative error a small
    multiple of min(m, n)·u; use :func:`gram_bound` when a rounding-safe upper bound is needed).
    Gradient: ∂σ₁/∂w = u₁v₁ᵀ (Golub & Van Loan, *Matrix Computations*, §8.6).

    Args:
      w: a matrix of shape ``(in, out)``.
    Returns:
      A scalar in ``w``'s compute dtype.
    """
    w = _checks.matrix(w, "w")
    sc = scale(w)
    # Entries lost to the scaling (< tiny after it) move σ₁ by ≤ √(mn)·tiny: covered, so a
    # cancellation to ~0 never hides a non-zero truth.
    return unscale(cover_lost(_sigma_max(sc.x), sc.lost, math.sqrt(w.size)), sc)


# --------------------------------------------------------------------------------------------
# Upper bound: Gram iteration with rescaling and an a-posteriori rounding margin.
# --------------------------------------------------------------------------------------------


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


@guarantee("upper")
def gram_bound(w: jax.Array, *, num_iters: int = 6) -> jax.Array:
    r"""Upper bound on ‖w‖₂ by rescaled Gram iteration: (Σᵢ σᵢ^{2^{T+1}})^{2^{-(T+1)}} ≥ σ₁.

    The bound is non-increasing in ``num_iters`` and converges super-linearly to σ₁; the Gram
    matrix is formed on the smaller side. A rounding margin derived a posteriori (see
    :func:`gram_iteration`) keeps the float32 result above the float64 truth.

    Guarantee: ``upper``. Reference: Delattre et al., ICML 2023.

    Args:
      w: a matrix ``(in, out)``.
      num_iters: number of Gram steps T (static); 6 gives a bound within ~1% on typical weights.
    Returns:
      A scalar ≥ ‖w‖₂.
    """
    w = _checks.matrix(w, "w")
    num_iters = _checks.num_iters(num_iters, "num_iters")
    sc = scale(w)
    g = sc.x if w.shape[0] >= w.shape[1] else sc.x.T
    bound = cover_lost(gram_iteration(g, num_iters), sc.lost, math.sqrt(w.shape[0] * w.shape[1]))
    return unscale(bound, sc)


# --------------------------------------------------------------------------------------------
# Estimate: power iteration with warm state.
# --------------------------------------------------------------------------------------------


def normalize(v: jax.Array) -> jax.Array:
    """v/‖v‖₂ (over all axes), leaving a zero vector at zero."""
    nrm = jnp.sqrt(jnp.sum(v * v))
    return v / jnp.where(nrm > 0, nrm, jnp.ones_like(nrm))


def init_vector(shape: tuple[int, ...], dtype, u: jax.Array | None, key: jax.Array | None,
                name: str = "u") -> jax.Array:
    """The starting vector of a power iteration: ``u`` if given, else a normal draw from ``key``."""
    if u is None:
        if key is None:
            raise ValueError(
                f"power_iteration needs a starting vector {name} or a PRNG key (key=...), "
                "got neither"
            )
        return normalize(jax.random.normal(key, shape, dtype))
    u = _checks.float_array(u, name)
    if u.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the input space), got {u.shape}")
    return u.astype(dtype)


def power_iteration_op(apply, apply_t, v0: jax.Array, num_iters: int) -> jax.Array:
    """The unit vector after ``num_iters`` steps v ← AᵀAv/‖AᵀAv‖ (no gradient flows through it)."""

    def body(_, v):
        return normalize(apply_t(apply(v)))

    return lax.stop_gradient(lax.fori_loop(0, num_iters, body, normalize(v0)))


@guarantee("estimate")
def power_iteration(
    w: jax.Array,
    u: jax.Array | None = None,
    *,
    num_iters: int = 20,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Estimate of ‖w‖₂ by power iteration on wᵀw, with warm state.

    v ← A ᵀAv/‖AᵀAv‖ for A: x ↦ x @ w, then σ̂ = ‖Av‖. Since σ̂ = ‖Av‖ ≤ σ₁ for a unit v, the
    estimate approaches σ₁ **from below**: it is an ``estimate``, never a certificate.
    Pass the returned vector back as ``u`` to warm-start (one step per training step suffices
    when the weights move slowly; Miyato et al., *Spectral Normalization for GANs*, ICLR 2018).

    Gradient: the vector is held fixed (stop-gradient), so ∂σ̂/∂w = v (Av/σ̂)ᵀ = v₁u₁ᵀ at
    convergence, the gradient of σ₁; no backpropagation through the loop.

    Args:
      w: a matrix ``(in, out)``.
      u: the previous unit vector in the input space, shape ``(in,)``; or ``None`` with ``key``.
      num_iters: number of steps (static).
      key: PRNG key for a random start when ``u`` is ``None``.
    Returns:
      ``(estimate, v)``: the estimate (scalar) and the unit vector to warm-start from.
    """
    w = _checks.matrix(w, "w")
    num_iters = _checks.num_iters(num_iters, "num_iters")
    v0 = init_vector((w.shape[0],), w.dtype, u, key)
    sc = scale(w)
    ws = lax.stop_gradient(sc.x)
    v = power_iteration_op(lambda x: _mm(x, ws), lambda y: _mm(ws, y), v0, num_iters)
    return unscale(jnp.linalg.norm(_mm(v, sc.x)), sc), v


# --------------------------------------------------------------------------------------------
# Exact induced ℓ∞ and ℓ1 norms.
# --------------------------------------------------------------------------------------------


@guarantee("exact")
def norm_inf(w: jax.Array) -> jax.Array:
    r"""Induced ℓ∞ norm of x ↦ x @ w: max_j Σ_i |w_ij| (max abs column sum of the (in, out) array).

    Guarantee: ``exact`` (a sum of in non-negative terms: relative rounding error ≤ γ_in).
    Reference: Horn & Johnson, *Matrix Analysis*, §5.6.5.
    """
    w = _checks.matrix(w, "w")
    sc = scale(w)
    return unscale(cover_lost(jnp.max(jnp.sum(jnp.abs(sc.x), axis=0)), sc.lost, w.shape[0]), sc)


@guarantee("exact")
def norm_1(w: jax.Array) -> jax.Array:
    r"""Induced ℓ1 norm of x ↦ x @ w: max_i Σ_j |w_ij| (max abs row sum of the (in, out) array).

    Guarantee: ``exact`` (relative rounding error ≤ γ_out). Reference: Horn & Johnson, §5.6.4.
    """
    w = _checks.matrix(w, "w")
    sc = scale(w)
    return unscale(cover_lost(jnp.max(jnp.sum(jnp.abs(sc.x), axis=1)), sc.lost, w.shape[1]), sc)
