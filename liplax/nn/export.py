"""``to_plain``: export a liplax model to plain flax modules with the normalization folded in.

Every dense layer becomes an ``nnx.Linear`` and every convolution an ``nnx.Conv`` whose kernel is
the layer's effective weight (W/σ̂, bjorck(W), diag(d)W, the ℓ1-projected W, …) evaluated from
the current parameters and state, without moving any state; ``SinusoidalDense`` becomes
``nnx.Sequential(nnx.Linear, CosSin())``; ``Sequential`` becomes ``nnx.Sequential``; ``Residual``
keeps its wrapper around the exported branch; parameter-free layers are cloned. The plain model
computes the same function as the liplax model in inference mode (``model.eval()``).
Call it outside ``jit``.
"""

from __future__ import annotations

import jax
from flax import nnx

from liplax.nn._base import LipschitzModule
from liplax.nn.activations import CosSin
from liplax.nn.containers import Residual, Sequential
from liplax.nn.conv import ConvBase
from liplax.nn.dense import DenseBase
from liplax.nn.plain import is_plain
from liplax.nn.sinusoidal import SinusoidalDense

_effective = nnx.jit(lambda layer: layer.effective_kernel())


def _given(value: jax.Array):
    """An initializer that returns ``value`` (no random draw to compile)."""

    def init(key, shape, dtype):
        return value.reshape(shape).astype(dtype)

    return init


def _linear(kernel: jax.Array, bias: jax.Array | None) -> nnx.Linear:
    return nnx.Linear(
        kernel.shape[0],
        kernel.shape[1],
        use_bias=bias is not None,
        param_dtype=kernel.dtype,
        kernel_init=_given(kernel),
        bias_init=_given(kernel[0] if bias is None else bias),
        rngs=nnx.Rngs(0),
    )


def _conv(layer: ConvBase) -> nnx.Conv:
    kernel = _effective(layer)
    bias = kernel[0, 0, 0] if layer.bias is None else layer.bias[...]
    return nnx.Conv(
        layer.in_features,
        layer.out_features,
        kernel_size=layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        use_bias=layer.bias is not None,
        param_dtype=kernel.dtype,
        kernel_init=_given(kernel),
        bias_init=_given(bias),
        rngs=nnx.Rngs(0),
    )


def to_plain(model):
    """A plain-flax copy of ``model`` (``nnx.Linear``/``nnx.Conv``/``nnx.Sequential``).

    Raises ``TypeError`` for a module it does not know.
    """
    if isinstance(model, Sequential) or type(model) is nnx.Sequential:  # not a subclass
        return nnx.Sequential(*[to_plain(layer) for layer in model.layers])
    if isinstance(model, Residual):
        return Residual(to_plain(model.inner))
    if isinstance(model, SinusoidalDense):
        return nnx.Sequential(_linear(_effective(model), None), CosSin())
    if isinstance(model, DenseBase):
        bias = None if model.bias is None else model.bias[...]
        return _linear(_effective(model), bias)
    if isinstance(model, ConvBase):
        return _conv(model)
    if is_plain(model) and not isinstance(model, nnx.Module):  # a plain function
        return model
    if is_plain(model) or isinstance(model, LipschitzModule):
        return nnx.clone(model)
    raise TypeError(f"to_plain: cannot export {type(model).__name__}")
