r"""The derivative of the Gram bound in closed form, without differentiating through the steps.

Derivation (``docs/design.md §norms``). Let A ∈ ℂ^{m×n} (m ≥ n; a real matrix is the case
Im A = 0), T Gram steps, q = 2^{T+1}. Before its rounding margin the Gram bound is the Schatten
norm r(A) = ‖A‖_{S_q} = (tr (AᴴA)^{q/2})^{1/q} (Delattre et al., ICML 2023). For A ≠ 0, with the
real inner product ⟨X, Y⟩ = Re tr(XᴴY) on ℂ^{m×n} = ℝ^{m×n} × ℝ^{m×n}:

    d(r^q) = (q/2)·tr((AᴴA)^{q/2−1}·d(AᴴA)) = q·Re tr(P·Aᴴ·dA),   P = (AᴴA)^{q/2−1},

(P is Hermitian and tr(P·dAᴴ·A) is the conjugate of tr(P·Aᴴ·dA)), so ∇r = A·P / r^{q−1}:
∂r/∂Re A = Re ∇r and ∂r/∂Im A = Im ∇r. Now q/2 − 1 = 2^T − 1 = Σ_{t=1}^{T} 2^{t−1}, and the
iterates the forward pass computes are X_1 = AᴴA/a_0², X_{t+1} = X_t²/a_t² (a_t their Frobenius
norms), i.e. X_t = (AᴴA)^{2^{t−1}}/c_t with c_t > 0. Powers of one Hermitian matrix commute, so
P = (c_1⋯c_T)·X_1X_2⋯X_T: the gradient is A·X_1⋯X_T up to a positive scalar. The scalar follows
from Euler's identity for the 1-homogeneous r, ⟨∇r, A⟩ = r: for any H = λ·A·X_1⋯X_T, λ > 0,

    ∇r = r·H / ⟨H, A⟩,   ⟨H, A⟩ = λ·(c_1⋯c_T)·tr((AᴴA)^{2^T}) > 0.

So the derivative needs X_1⋯X_T (T − 1 products, each normalized by its Frobenius norm so that
nothing underflows) and H = A·X_1⋯X_T: T products, where reverse-mode differentiation through
the steps costs 2T (each step's product has two adjoints). The rules are ``jax.custom_jvp``
(forward and reverse mode; the tangent ⟨∇v, dA⟩ is linear, JAX transposes it): when
differentiated, :func:`gram_values` keeps the iterates of its forward pass and forms the
gradient at once (the residual is the gradient, one matrix each); :func:`conv_gram_max`
recomputes the iterates of its one maximizing matrix. The rounding margin of
:func:`~liplax.norms.gram_core.gram_finish` is a constant for the gradient (as before, a
``stop_gradient``), so the gradient of a value v = r̂·margin is v·H/⟨H, A⟩ = margin·∇r evaluated
at the recomputed iterates (r̂ the computed Schatten norm): the derivative of the exact Schatten
norm, where autodiff through the steps gives the derivative of its floating-point evaluation;
both agree to rounding. At A = 0 the gradient is 0 (a subgradient: r is a norm), at a NaN
matrix NaN.

For a convolution the bound is max_f v_f over the frequency matrices K̂_f (:func:`conv_gram_max`,
most of them screened out after fewer steps: :mod:`liplax.norms.gram_screen`): its gradient is
that of v_{f*} at the index f* the screen returns (the first maximizer among the frequencies it
finished, in decreasing order of their earlier bounds), an element of the Clarke
subdifferential conv{∇v_f : v_f maximal}; it equals ``jax.grad`` of ``jnp.max`` (which splits
exact ties evenly) whenever the maximum is attained once. The derivative recomputes that one
frequency matrix and its Gram steps only, and maps the gradient back to the kernel through the
twiddles of that frequency (K̂_f is linear in k).
"""

from __future__ import annotations

import contextlib
from functools import partial

import jax
import jax.numpy as jnp

from liplax.norms.dft import frequency_pair, twiddles
from liplax.norms.gram_core import (
    GramState,
    _frob,
    _mm,
    _normalized_gram,
    _safe,
    gram_finish,
    gram_start,
    gram_steps_kept,
)
from liplax.norms.gram_core import gram_steps as _steps
from liplax.norms.gram_screen import screened_max

Pair = tuple  # (re,) for real matrices, (re, im) for complex ones


def _values(pair: Pair, num_iters: int) -> jax.Array:
    """The Gram bound with its margin per matrix (exactly :func:`gram_finish` after T steps)."""
    return gram_finish(_steps(_start(pair), num_iters), pair[0].shape[-2])


def _start(pair: Pair) -> GramState:
    return gram_start(pair[0], pair[1] if len(pair) == 2 else None)


def _cmul(a: tuple, b: tuple) -> tuple:
    """(re, im) of the product of two complex matrices given as pairs (``None``: real)."""
    (ar, ai), (br, bi) = a, b
    re = _mm(ar, br)
    if ai is not None and bi is not None:
        re = re - _mm(ai, bi)
    im = None
    if ai is not None:
        im = _mm(ai, br)
    if bi is not None:
        im = _mm(ar, bi) if im is None else im + _mm(ar, bi)
    return re, im


def _gradient(pair: Pair, values: jax.Array, iterates: list) -> Pair:
    """v·H/⟨H, A⟩ per matrix, H = A·X_1⋯X_T: the gradient of the values v w.r.t. (Re A, Im A)
    (module docstring). The product of the iterates is normalized after each step."""
    a = (pair[0], pair[1] if len(pair) == 2 else None)
    p = None
    for x in iterates:
        if p is not None:
            x = _cmul(p, x)
            norm = _safe(_frob(*x))[..., None, None]
            x = tuple(None if c is None else c / norm for c in x)
        p = x
    h = a if p is None else _cmul(a, p)
    inner = jnp.sum(h[0] * a[0], axis=(-2, -1))
    if a[1] is not None:
        inner = inner + jnp.sum(h[1] * a[1], axis=(-2, -1))
    coef = (values / _safe(inner))[..., None, None]  # A = 0: v = 0 and H = 0
    return tuple(coef * c for c in h[: len(pair)])


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def gram_values(pair: Pair, num_iters: int) -> jax.Array:
    """Per-matrix Gram bound (margin included) of a batch (..., m, n) given as (re,) or
    (re, im), with the closed-form derivative of the module docstring (when differentiated, the
    forward pass keeps its T iterates and forms the gradient from them: T more products, where
    reverse mode through the steps costs 2T; the residual is the gradient, one matrix each)."""
    return _values(pair, num_iters)


@gram_values.defjvp
def _values_jvp(num_iters, primals, tangents):
    (pair,), (dpair,) = primals, tangents
    state, kept = gram_steps_kept(_start(pair), num_iters)
    v = gram_finish(state, pair[0].shape[-2])
    iterates = [] if kept is None else [
        tuple(None if k is None else k[t] for k in kept) for t in range(num_iters)]
    grad = _gradient(pair, v, iterates)
    dv = sum(jnp.sum(g * d, axis=(-2, -1)) for g, d in zip(grad, dpair, strict=True))
    return v, dv


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def conv_gram_max(kernel: jax.Array, n_hw: tuple[int, int], num_iters: int) -> jax.Array:
    """max over the frequency matrices K̂_f of a stride-1 circular ``kernel`` on ``n_hw``
    (:func:`~liplax.norms.dft.frequency_pair`) of :func:`gram_values`. Its derivative is that of
    the first maximizing frequency f* only, computed from it alone (module docstring): K̂_{f*}
    is rebuilt and its T Gram steps recomputed (nothing of size F is kept), then T products,
    and the gradient goes back to the kernel through the twiddles of f*:
    ∂/∂k[p, q] = cos θ_{f*,pq}·∂/∂Re K̂ + sin θ_{f*,pq}·∂/∂Im K̂."""
    return screened_max(*frequency_pair(kernel, n_hw), num_iters)[0]


@conv_gram_max.defjvp
def _max_jvp(n_hw, num_iters, primals, tangents):
    (kernel,), (dkernel,) = primals, tangents
    value, f = screened_max(*frequency_pair(kernel, n_hw), num_iters)
    grad = _kernel_gradient(kernel, n_hw, num_iters, f, value)
    return value, jnp.sum(grad * dkernel)


def _kernel_gradient(kernel, n_hw, num_iters, f, v):
    """∂v_f/∂kernel for the frequency index f whose value is v (see :func:`conv_gram_max`)."""
    kh, kw, cin, cout = kernel.shape
    k = kernel if cin >= cout else jnp.swapaxes(kernel, 2, 3)
    m, n = k.shape[2:]
    k = k.reshape(kh * kw, m * n)
    cos, sin = (c[f] for c in twiddles((kh, kw), n_hw, kernel.dtype))  # (kh·kw,) each
    one = tuple(_mm(c[None], k).reshape(m, n) for c in (cos, sin))  # K̂_f as in the forward
    x, iterates = one, []
    for _ in range(num_iters):  # static: T is small, one matrix
        x, _ = _normalized_gram(*x)
        iterates.append(x)
    g_re, g_im = _gradient(one, v, iterates)
    dk = cos[:, None] * g_re.reshape(1, m * n) + sin[:, None] * g_im.reshape(1, m * n)
    dk = dk.reshape(kh, kw, m, n)
    return dk if cin >= cout else jnp.swapaxes(dk, 2, 3)


@contextlib.contextmanager
def reverse_mode_reference():
    """Within it, :func:`liplax.norms.gram.gram_bound` and ``gram_iteration`` (traced anew) are
    the implementation before the closed-form gradient: the same value, differentiated by JAX
    through every Gram step. For tests and ``benchmarks/conv_norms.py`` only. One difference:
    the maximum over frequencies is taken as v[argmax v], so that at exact ties (sparse kernels)
    reverse mode picks the same maximizer as :func:`conv_gram_max` (``jnp.max`` splits evenly)."""
    from liplax.norms import gram

    def first_max(kernel, n_hw, num_iters):
        v = _values(frequency_pair(kernel, n_hw), num_iters)
        return v[jnp.argmax(jax.lax.stop_gradient(v))]

    saved = gram.conv_gram_max, gram.gram_values
    gram.conv_gram_max, gram.gram_values = first_max, _values
    try:
        yield
    finally:
        gram.conv_gram_max, gram.gram_values = saved
