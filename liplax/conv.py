r"""Operator norms of 2-D convolution layers on bare kernels, each one line over liplax.norms.

Conventions follow ``flax.nnx.Conv``: kernels are HWIO ``(kh, kw, in, out)``, inputs NHWC, the
layer is a cross-correlation, and ``padding`` is ``"CIRCULAR"`` (flax wraps (k−1)//2 before and
k//2 after), ``"SAME"``, ``"VALID"`` or explicit ((lo, hi), (lo, hi)) ints. ``input_shape`` is
(H, W). Each function builds a :class:`~liplax.norms.operator.ConvOperator` (arguments checked
and resolved there, once) and calls a norm routine of :mod:`liplax.norms`, whose docstrings give
the mathematics, the rounding and the references.

Every norm function returns a :class:`~liplax.guarantee.Bound` (use ``.value`` for the array):
``exact_spectral_norm`` ``exact`` (circular padding), ``gram_bound`` ``upper`` (any padding and
stride), ``power_iteration`` ``estimate``, ``norm_inf``/``norm_1`` ``upper`` (exact sums rounded
up).
"""

from __future__ import annotations

import jax

from liplax import _checks, norms
from liplax.guarantee import Bound
from liplax.norms.operator import ConvOperator, conv_output_hw

Strides = int | tuple[int, int]


def apply(kernel: jax.Array, x: jax.Array, *, strides: Strides = 1,
          padding: _checks.Padding = "SAME") -> jax.Array:
    """The layer x ↦ k ⋆ x exactly as ``nnx.Conv`` (no bias) computes it, for x of shape
    ``(N, H, W, in)`` or a single image ``(H, W, in)`` (the output keeps the batch axis if any)."""
    x = _checks.float_array(x, "x")
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be NHWC (rank 4) or HWC (rank 3), got shape {x.shape}")
    return ConvOperator(kernel, x.shape[-3:-1], strides, padding).apply(x)


def output_shape(kernel_shape: tuple[int, ...], input_shape: tuple[int, int], *,
                 strides: Strides = 1, padding: _checks.Padding = "SAME") -> tuple[int, int]:
    """Spatial output shape (H', W') of the layer."""
    if len(kernel_shape) != 4:
        raise ValueError(f"kernel_shape must be HWIO of length 4, got {kernel_shape}")
    hw = _checks.input_shape(input_shape)
    st = _checks.strides(strides)
    pads = _checks.padding(padding, hw, tuple(kernel_shape[:2]), st)
    return conv_output_hw(tuple(kernel_shape[:2]), hw, st, pads)


def exact_spectral_norm(kernel: jax.Array, input_shape: tuple[int, int], *,
                        strides: Strides = 1) -> Bound:
    """Exact ℓ2 norm of the circular layer (flax ``padding="CIRCULAR"``; strides must divide
    the input): :func:`liplax.norms.spectral_norm`; ``exact``."""
    return norms.spectral_norm(ConvOperator(kernel, input_shape, strides, "CIRCULAR"))


def gram_bound(kernel: jax.Array, input_shape: tuple[int, int], *, strides: Strides = 1,
               padding: _checks.Padding = "SAME", num_iters: int = 6) -> Bound:
    """Upper bound on the layer's ℓ2 norm for any padding and stride, by Gram iteration over its
    frequency matrices (:func:`liplax.norms.gram_bound`); ``upper``."""
    return norms.gram_bound(ConvOperator(kernel, input_shape, strides, padding),
                            num_iters=num_iters)


def power_iteration(kernel: jax.Array, input_shape: tuple[int, int], u: jax.Array | None = None,
                    *, strides: Strides = 1, padding: _checks.Padding = "SAME",
                    num_iters: int = 50, key: jax.Array | None = None) -> tuple[Bound, jax.Array]:
    """(estimate of the layer's ℓ2 norm, vector of shape (H, W, in)) by warm power iteration on
    the real operator (:func:`liplax.norms.power_iteration`); ``estimate``."""
    return norms.power_iteration(ConvOperator(kernel, input_shape, strides, padding), u,
                                 num_iters=num_iters, key=key)


def norm_inf(kernel: jax.Array, input_shape: tuple[int, int], *, strides: Strides = 1,
             padding: _checks.Padding = "SAME") -> Bound:
    """Induced ℓ∞→ℓ∞ norm of the layer (:func:`liplax.norms.norm_inf`); ``upper``."""
    return norms.norm_inf(ConvOperator(kernel, input_shape, strides, padding))


def norm_1(kernel: jax.Array, input_shape: tuple[int, int], *, strides: Strides = 1,
           padding: _checks.Padding = "SAME") -> Bound:
    """Induced ℓ1→ℓ1 norm of the layer (:func:`liplax.norms.norm_1`); ``upper``."""
    return norms.norm_1(ConvOperator(kernel, input_shape, strides, padding))
