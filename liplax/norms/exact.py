r"""Exact spectral norms: the SVD of a matrix, and the circular convolution through its DFT.

- :class:`~liplax.norms.operator.DenseOperator`: σ₁(w) by singular value decomposition.
- :class:`~liplax.norms.operator.ConvOperator` with ``padding="CIRCULAR"`` and strides dividing
  the input: max over frequencies of σ₁(K̂(u, v)) (Sedghi, Gupta, Long, *The Singular Values of
  Convolutional Layers*, ICLR 2019), the frequencies screened by rounding-safe Gram bounds.
  A zero-padded convolution has no such closed form: it is refused (use
  :func:`liplax.norms.gram.gram_bound` for an upper bound). ``docs/design.md §norms``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from liplax.guarantee import guarantee
from liplax.norms.dft import circular_setup, frequency_pair
from liplax.norms.gram_core import GramState, gram_finish, gram_start, gram_steps
from liplax.norms.gram_screen import sweep
from liplax.norms.induced import alias_kernel
from liplax.norms.operator import HI, ConvOperator, LinearOperator
from liplax.norms.scaling import cover_lost, scale, unscale


def top_singular_value(w: jax.Array) -> jax.Array:
    """σ₁ of a (batch of) matrices, from the SVD **with** singular vectors.

    jaxlib's CPU SVD without vectors (``compute_uv=False``) returns σ₁ up to ~80u below the
    float64 truth when the top singular values cluster (measured on near-orthogonal matrices,
    5×3 to 200×100, real and complex; a Björck layer's weight is one), outside the 64u that an
    ``exact`` value may be low (:data:`liplax.guarantee.EXACT_ULPS`). With vectors (LAPACK's
    divide and conquer) the same matrices stay within 12u, for about twice the time of the SVD.
    tests/test_svd_accuracy.py holds it to half the margin."""
    return jnp.linalg.svd(w, full_matrices=False)[1][..., 0]


@jax.custom_jvp
def sigma_max(w: jax.Array) -> jax.Array:
    """σ₁ of a (batch of) matrices by SVD (:func:`top_singular_value`), with the gradient u₁v₁ᵀ.

    Golub & Van Loan, *Matrix Computations*, §8.6; a subgradient when σ₁ is repeated."""
    return top_singular_value(w)


@sigma_max.defjvp
def _sigma_max_jvp(primals, tangents):
    (w,), (dw,) = primals, tangents
    u, s, vh = jnp.linalg.svd(w, full_matrices=False)
    u1, v1 = u[..., :, 0], vh[..., 0, :]
    # dσ₁ = u₁ᵀ dW v₁ (a subgradient when σ₁ is repeated).
    return s[..., 0], jnp.einsum("...i,...ij,...j->...", u1, dw, v1, precision=HI)


SCREEN = ((4, 32), (2, 2))
"""Screening stages of :func:`exact_spectral_norm`: (further Gram steps, frequencies kept)."""

_CHUNK = 8
"""Frequencies per SVD batch in the certification sweep of :func:`_top_sigma`."""


def _sigma1(re: jax.Array, im: jax.Array) -> jax.Array:
    """σ₁ of each complex matrix re + i·im in a small batch (B, m, n), one SVD at a time
    (``lax.map``): jaxlib's batched CPU SVD costs far more than B single ones."""
    return lax.map(lambda p: top_singular_value(lax.complex(*p)), (re, im))


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
    return sweep(order, ub_sorted, n_chunks, _CHUNK, best, best_f,
                 lambda ids: _sigma1(re[ids], im[ids]))


@jax.custom_jvp
def max_sigma(re: jax.Array, im: jax.Array) -> jax.Array:
    """max over a batch of matrices re + i·im (F, m, n) of σ₁ (see :func:`_top_sigma`)."""
    return _top_sigma(re, im)[0]


@max_sigma.defjvp
def _max_sigma_jvp(primals, tangents):
    (re, im), (dre, dim) = primals, tangents
    sigma, f = _top_sigma(re, im)
    u, _, vh = jnp.linalg.svd(lax.complex(re[f], im[f]), full_matrices=False)
    u1, v1 = u[:, 0], jnp.conj(vh[0])
    # dσ₁ = Re(u₁ᴴ dM v₁) at the frequency attaining the maximum (a subgradient at ties).
    dm = lax.complex(dre[f], dim[f])
    dsigma = jnp.real(jnp.vdot(u1, jnp.matmul(dm, v1, precision=HI)))
    return sigma, dsigma


@guarantee(dense="exact", conv="exact")
def spectral_norm(op: LinearOperator) -> jax.Array:
    r"""Exact ℓ2 operator norm σ₁(A).

    Dense: SVD of w. Convolution: ‖conv‖₂ = max_{u,v} σ₁(K̂(u, v)) over the half spectrum of
    the circular layer (Sedghi et al., ICLR 2019); the frequencies that can attain the maximum
    are screened by rounding-safe Gram upper bounds and get an SVD (all of them when screening
    cannot decide), so the result is the SVD maximum. Strides must divide the input size (the
    polyphase kernel then makes it exact); a kernel larger than the input wraps around (taps
    alias), as in the layer.

    Guarantee: ``exact``, up to the rounding of a backward-stable SVD (relative error a small
    multiple of min(m, n)·u; :func:`~liplax.norms.gram.gram_bound` gives a rounding-safe upper
    bound). Gradient: u₁v₁ᵀ (dense), Re(u₁ᴴ ∂K̂ v₁) at the maximizing frequency (convolution).

    Raises:
      ValueError: for a zero-padded convolution (no exact norm; use ``gram_bound``), or a
        circular one whose strides do not divide the input.
    """
    sc = scale(op.array)
    if not isinstance(op, ConvOperator):
        # Entries lost to the scaling (< tiny after it) move σ₁ by ≤ √(mn)·tiny: covered, so a
        # cancellation to ~0 never hides a non-zero truth.
        return unscale(cover_lost(sigma_max(sc.x), sc.lost, math.sqrt(op.w.size)), sc)
    if not op.circular:
        raise ValueError(
            f"op must be a circular convolution (padding='CIRCULAR') for an exact norm, got "
            f"padding {op.pads}: a zero-padded layer has no exact closed form; use "
            "liplax.norms.gram_bound for an upper bound"
        )
    hw = op.input_hw
    kh, kw, cin, cout = op.kernel.shape
    ks = sc.x
    if kh > hw[0] or kw > hw[1]:
        # Taps p and p + n act on one sample: add them first (compensated, exact for two taps;
        # the operator changes by a cyclic shift of the input), so that taps which cancel do
        # not leave the DFT's rounding, which is relative to the taps, as the result.
        ks, _ = alias_kernel(ks, hw)
    kpoly, n_poly = circular_setup(ks, hw, op.strides, "CIRCULAR")
    if kpoly.shape[:2] == (1, 1):
        n_poly = (1, 1)  # a 1×1 kernel has the same matrix at every frequency.
    sigma = cover_lost(max_sigma(*frequency_pair(kpoly, n_poly)), sc.lost,
                       kh * kw * math.sqrt(cin * cout))  # taps lost to the scaling
    return unscale(sigma, sc)
