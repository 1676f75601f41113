"""Plain flax modules built from given weights: what the layers' ``to_plain`` hooks return.

``nnx.Linear``/``nnx.Conv`` whose kernel (and bias) are given arrays (initializers that return
them; no random draw to compile), and :func:`effective_kernel`, a layer's applied weight
evaluated under ``nnx.jit`` without moving any state. Call these outside ``jit``.
"""

from __future__ import annotations

import jax
from flax import nnx

effective_kernel = nnx.jit(lambda layer: layer.effective_kernel())


def _given(value: jax.Array):
    """An initializer that returns ``value``."""

    def init(key, shape, dtype):
        return value.reshape(shape).astype(dtype)

    return init


def plain_linear(kernel: jax.Array, bias: jax.Array | None) -> nnx.Linear:
    """``nnx.Linear`` computing x ↦ x @ kernel (+ bias)."""
    return nnx.Linear(
        kernel.shape[0],
        kernel.shape[1],
        use_bias=bias is not None,
        param_dtype=kernel.dtype,
        kernel_init=_given(kernel),
        bias_init=_given(kernel[0] if bias is None else bias),
        rngs=nnx.Rngs(0),
    )


def plain_conv(kernel: jax.Array, bias: jax.Array | None, *, strides, padding) -> nnx.Conv:
    """``nnx.Conv`` computing x ↦ kernel ⋆ x (+ bias) (HWIO kernel, NHWC inputs)."""
    return nnx.Conv(
        kernel.shape[2],
        kernel.shape[3],
        kernel_size=kernel.shape[:2],
        strides=strides,
        padding=padding,
        use_bias=bias is not None,
        param_dtype=kernel.dtype,
        kernel_init=_given(kernel),
        bias_init=_given(kernel[0, 0, 0] if bias is None else bias),
        rngs=nnx.Rngs(0),
    )


__all__ = ["effective_kernel", "plain_conv", "plain_linear"]
