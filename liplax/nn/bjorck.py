r"""Björck orthonormalization and ``BjorckDense``, a dense layer with an orthonormal weight.

Björck & Bowie (1971), as used for Lipschitz networks by Anil, Lucas, Grosse (ICML 2019). With
P = AᵀA (Gram on the smaller side),

- order 1: A ← A (3/2·I − 1/2·P)               (A ← (1+β)A − βAAᵀA with β = 1/2),
- order 2: A ← A (15/8·I − 5/4·P + 3/8·P²).

Each singular value follows s ← s(3 − s²)/2 (order 1), which converges to 1 for 0 < s < √3,
so A is first scaled to σ₁ ≤ 1 by a certified bound: the Gram-iteration upper bound of
:func:`liplax.linalg.gram_bound` (never below σ₁, so the iteration cannot diverge). The result
is orthonormal up to the convergence of the iteration; :meth:`BjorckDense.lipschitz_bound`
certifies the weight actually applied (exact SVD), not the ideal value 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from liplax import linalg
from liplax._checks import positive_int
from liplax.nn.dense import DenseBase
from liplax.nn.registry import register_layer

_HI = lax.Precision.HIGHEST
COEFFS = {1: (1.5, -0.5), 2: (15.0 / 8.0, -5.0 / 4.0, 3.0 / 8.0)}


def _bjorck_step(a: jax.Array, order: int) -> jax.Array:
    """One step on a tall matrix (m ≥ n): A ← A·Σ_k c_k Pᵏ with P = AᵀA."""
    c = COEFFS[order]
    p = jnp.matmul(a.T, a, precision=_HI)
    eye = jnp.eye(p.shape[0], dtype=a.dtype)
    poly = c[0] * eye + c[1] * p
    if order == 2:
        poly = poly + c[2] * jnp.matmul(p, p, precision=_HI)
    return jnp.matmul(a, poly, precision=_HI)


def bjorck(
    w: jax.Array,
    *,
    order: int = 1,
    num_iters: int = 15,
    stop_gradient: bool = False,
    scale_iters: int = 3,
) -> jax.Array:
    r"""Björck orthonormalization of ``w`` (any shape (m, n)), after scaling it to σ₁ ≤ 1.

    Args:
      w: a matrix ``(in, out)``.
      order: 1 or 2 (coefficients in the module docstring).
      num_iters: number of steps (static, a ``lax.fori_loop``).
      stop_gradient: if True, only the last step is differentiated: the first ``num_iters − 1``
        run under ``lax.stop_gradient`` and the gradient passes straight from their result to
        the scaled weight (same forward value, a backward pass of one step instead of
        ``num_iters``; an approximation of the full gradient, exact in the limit where the
        earlier steps are the identity).
      scale_iters: Gram-iteration steps of the initial scaling bound.
    Returns:
      A matrix of ``w``'s shape whose singular values approach 1.
    """
    if order not in COEFFS:
        raise ValueError(f"bjorck: order must be 1 or 2, got {order!r}")
    num_iters = positive_int(num_iters, "num_iters", "bjorck")
    transpose = w.shape[0] < w.shape[1]
    a = w.T if transpose else w
    a = a / linalg.gram_bound(a, num_iters=scale_iters).value

    def body(_, a):
        return _bjorck_step(a, order)

    if stop_gradient:
        # Value: the (num_iters − 1)-th iterate; gradient: straight to the scaled weight.
        a_sg = lax.stop_gradient(lax.fori_loop(0, num_iters - 1, body, a))
        a = _bjorck_step(a_sg + (a - lax.stop_gradient(a)), order)
    else:
        a = lax.fori_loop(0, num_iters, body, a)
    return a.T if transpose else a


def _example(rngs):
    return BjorckDense(3, 4, use_bias=True, rngs=rngs), (3,)


@register_layer(example=_example)
class BjorckDense(DenseBase):
    """x ↦ x·bjorck(W) (+ b): an orthonormalized dense layer (1-Lipschitz in ℓ2 at convergence).

    Args:
      order: 1 or 2; num_iters: Björck steps per call; stop_gradient: see :func:`bjorck`.
      Other arguments as for :class:`~liplax.nn.Dense`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        order: int = 1,
        num_iters: int = 15,
        stop_gradient: bool = False,
        **kw,
    ):
        super().__init__(in_features, out_features, **kw)
        if order not in COEFFS:
            raise ValueError(f"BjorckDense: order must be 1 or 2, got {order!r}")
        self.order = order
        self.num_iters = positive_int(num_iters, "num_iters", "BjorckDense")
        self.stop_gradient = bool(stop_gradient)

    def effective_kernel(self) -> jax.Array:
        return bjorck(
            self.kernel[...],
            order=self.order,
            num_iters=self.num_iters,
            stop_gradient=self.stop_gradient,
        )
