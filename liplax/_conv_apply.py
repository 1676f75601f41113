"""The convolution layer's primitives shared by :mod:`liplax.conv` and :mod:`liplax.conv_induced`:
argument resolution and the layer itself (``lax.conv_general_dilated``, NHWC/HWIO, flax's
circular padding). Public names are re-exported from :mod:`liplax.conv`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks

_HI = lax.Precision.HIGHEST
_DIMS = ("NHWC", "HWIO", "NHWC")


def _resolve(kernel, input_shape, strides, padding):
    """Validate and normalize the arguments shared by every operator."""
    kernel = _checks.kernel(kernel)
    hw = _checks.input_shape(input_shape)
    st = _checks.strides(strides)
    pads = _checks.padding(padding, hw, kernel.shape[:2], st)
    return kernel, hw, st, pads


def _circular_pads(kernel_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """flax's circular padding: (k−1)//2 before and k//2 after, wrapped."""
    return tuple(((k - 1) // 2, k // 2) for k in kernel_hw)


def _apply(kernel: jax.Array, x: jax.Array, strides, pads) -> jax.Array:
    """The convolution on a batch ``x`` (N, H, W, C) with resolved strides and padding."""
    if pads == "CIRCULAR":
        cp = _circular_pads(kernel.shape[:2])
        x = jnp.pad(x, ((0, 0), cp[0], cp[1], (0, 0)), mode="wrap")
        pads = ((0, 0), (0, 0))
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads, dimension_numbers=_DIMS, precision=_HI
    )
