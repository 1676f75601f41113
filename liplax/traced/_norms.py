"""The one place where the traced bound calls liplax's operator-norm routines.

Everything the rules need from :mod:`liplax.linalg` / :mod:`liplax.conv` goes through these two
functions (the same calls the plain-layer adapters of :mod:`liplax.nn.plain` make, so a chain of
``nnx.Linear``/``nnx.Conv`` gets exactly the layer-based factors). Only ``exact`` and
``upper`` kinds come back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liplax.guarantee import Bound
from liplax.nn.conv import conv_bound
from liplax.nn.dense import matrix_bound


def _at_least_f32(w: jax.Array) -> jax.Array:
    return w.astype(jnp.promote_types(w.dtype, jnp.float32))


def block_matrix_norm(w: jax.Array, p: float) -> Bound:
    """max_b ‖x ↦ x @ w[b]‖_p for a stack ``w`` of shape (B, in, out): exact SVD for p = 2,
    exact ℓ1/ℓ∞ induced norms (the norm of a block-diagonal map is its largest block's)."""
    w = _at_least_f32(w)
    if w.shape[0] == 1:
        return matrix_bound(w[0], p)
    first = matrix_bound(w[0], p)
    values = jax.vmap(lambda m: matrix_bound(m, p).value)(w)
    return Bound(jnp.max(values), first.kind)


def conv2d_norm(kernel: jax.Array, hw: tuple[int, int], p: float, *, strides, padding) -> Bound:
    """ℓp norm of the 2-D NHWC/HWIO convolution with ``kernel`` on an (H, W) input
    (:func:`liplax.nn.conv.conv_bound`: Gram/exact for p = 2, exact induced norms for 1, ∞)."""
    return conv_bound(_at_least_f32(kernel), tuple(hw), p, strides=tuple(strides), padding=padding)
