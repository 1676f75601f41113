r"""Operator norms of matrices on bare arrays: one line each over liplax.norms.

Layout follows ``flax.nnx.Linear``: a weight ``w`` of shape ``(in, out)`` is the map
``x ↦ x @ w`` on row vectors (:class:`~liplax.norms.operator.DenseOperator`). The spectral norm
is the same for ``w`` and ``wᵀ``; the induced ℓ∞ and ℓ1 norms are not, and :func:`norm_inf` /
:func:`norm_1` are those of the map ``x ↦ x @ w``.

Every function returns a :class:`~liplax.guarantee.Bound` (use ``.value`` for the array) whose
kind is that of the routine: ``spectral_norm`` and ``norm_inf``/``norm_1`` ``exact``,
``gram_bound`` ``upper``, ``power_iteration`` ``estimate``. The mathematics, rounding and
references are in the routines' docstrings (:mod:`liplax.norms`).
"""

from __future__ import annotations

import jax

from liplax import norms
from liplax.guarantee import Bound
from liplax.norms.operator import DenseOperator


def spectral_norm(w: jax.Array) -> Bound:
    """Exact ‖w‖₂ = σ₁(w) by SVD (:func:`liplax.norms.spectral_norm`); ``exact``."""
    return norms.spectral_norm(DenseOperator(w))


def gram_bound(w: jax.Array, *, num_iters: int = 6) -> Bound:
    """Upper bound on ‖w‖₂ by rescaled Gram iteration (:func:`liplax.norms.gram_bound`)."""
    return norms.gram_bound(DenseOperator(w), num_iters=num_iters)


def power_iteration(
    w: jax.Array, u: jax.Array | None = None, *, num_iters: int = 20, key: jax.Array | None = None
) -> tuple[Bound, jax.Array]:
    """(estimate of ‖w‖₂, vector) by warm power iteration (:func:`liplax.norms.power_iteration`);
    ``u`` of shape ``(in,)`` or ``key``."""
    return norms.power_iteration(DenseOperator(w), u, num_iters=num_iters, key=key)


def norm_inf(w: jax.Array) -> Bound:
    """Induced ℓ∞ norm of x ↦ x @ w, max_j Σ_i |w_ij| (:func:`liplax.norms.norm_inf`); exact."""
    return norms.norm_inf(DenseOperator(w))


def norm_1(w: jax.Array) -> Bound:
    """Induced ℓ1 norm of x ↦ x @ w, max_i Σ_j |w_ij| (:func:`liplax.norms.norm_1`); exact."""
    return norms.norm_1(DenseOperator(w))
