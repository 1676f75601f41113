"""Bounds of plain flax layers (``nnx.Linear``, ``nnx.Conv``, ``nnx.relu``): what ``to_plain``
exports, so that a plain model's trivial bound can be checked against the liplax model's.

Same certified operators as the liplax layers: exact SVD / ℓ1 / ℓ∞ norms for ``nnx.Linear``,
:func:`liplax.nn.conv.conv_bound` for ``nnx.Conv`` (2-D, no dilation, one feature group).
"""

from __future__ import annotations

import jax
from flax import nnx

from liplax import conv as conv_ops
from liplax.guarantee import Bound
from liplax.nn._base import check_p, const_bound, pair, shape_tuple
from liplax.nn.conv import conv_bound
from liplax.nn.dense import dense_output_shape, matrix_bound

#: plain elementwise functions with their (p-independent) exact Lipschitz constant.
PLAIN_FUNCTIONS = {jax.nn.relu: 1.0}


def is_plain(layer) -> bool:
    return isinstance(layer, nnx.Linear | nnx.Conv) or layer in PLAIN_FUNCTIONS


def _linear_kernel(layer: nnx.Linear) -> jax.Array:
    k = layer.kernel[...]
    if k.ndim != 2:
        raise ValueError(f"nnx.Linear: only (in, out) kernels are supported, got shape {k.shape}")
    return k


def _conv_config(layer: nnx.Conv) -> tuple[jax.Array, tuple[int, int], object]:
    k = layer.kernel[...]
    if k.ndim != 4:
        raise ValueError(f"nnx.Conv: only 2-D convolutions are supported, got kernel {k.shape}")
    for attr in ("kernel_dilation", "input_dilation"):
        v = getattr(layer, attr, 1)
        if v not in (None, 1) and tuple(pair(v, "nnx.Conv", attr)) != (1, 1):
            raise ValueError(f"nnx.Conv: {attr} must be 1 to be bounded, got {v!r}")
    if layer.feature_group_count != 1:
        raise ValueError(
            "nnx.Conv: feature_group_count must be 1 to be bounded, got "
            f"{layer.feature_group_count}"
        )
    strides = pair(1 if layer.strides is None else layer.strides, "nnx.Conv", "strides")
    padding = layer.padding.upper() if isinstance(layer.padding, str) else layer.padding
    return k, strides, padding


def plain_output_shape(layer, input_shape) -> tuple[int, ...]:
    if isinstance(layer, nnx.Linear):
        k = _linear_kernel(layer)
        return dense_output_shape(input_shape, k.shape[0], k.shape[1], "nnx.Linear")
    if isinstance(layer, nnx.Conv):
        k, strides, padding = _conv_config(layer)
        shape = shape_tuple(input_shape, "nnx.Conv")
        if len(shape) != 3 or shape[-1] != k.shape[2]:
            raise ValueError(
                f"nnx.Conv: input_shape must be (H, W, {k.shape[2]}) for one example, got {shape}"
            )
        h, w = conv_ops.output_shape(k.shape, shape[:2], strides=strides, padding=padding)
        return (int(h), int(w), k.shape[3])
    return shape_tuple(input_shape, getattr(layer, "__name__", type(layer).__name__))


def plain_bound(layer, input_shape, *, p=2) -> Bound:
    """Certified ℓp constant of a plain flax layer (see the module docstring)."""
    if isinstance(layer, nnx.Linear):
        p = check_p(p, "nnx.Linear")
        plain_output_shape(layer, input_shape)
        return matrix_bound(_linear_kernel(layer), p)
    if isinstance(layer, nnx.Conv):
        p = check_p(p, "nnx.Conv")
        plain_output_shape(layer, input_shape)
        k, strides, padding = _conv_config(layer)
        hw = tuple(input_shape[:2])
        return conv_bound(k, hw, p, strides=strides, padding=padding)
    if layer in PLAIN_FUNCTIONS:
        check_p(p, getattr(layer, "__name__", "function"))
        return const_bound(PLAIN_FUNCTIONS[layer], "exact")
    raise TypeError(f"cannot bound layer {layer!r}: not a liplax layer nor a supported flax layer")


__all__ = ["PLAIN_FUNCTIONS", "is_plain", "plain_bound", "plain_output_shape"]
