r"""Bounds of plain flax layers (``nnx.Linear``, ``nnx.Conv``, ``nnx.relu``): what ``to_plain``
exports, so that a plain model's trivial bound can be checked against the liplax model's.

Same certified operators as the liplax layers: exact SVD / ℓ1 / ℓ∞ norms for ``nnx.Linear``
(x ↦ x W), :func:`liplax.nn.conv.conv_bound` for ``nnx.Conv`` (x ↦ (k ⊙ mask) ⋆ x, 2-D).

A plain layer is bounded only when liplax models **every** option that changes its map:

- types are matched exactly (``type(layer) is nnx.Linear``): a subclass such as
  ``nnx.LoRALinear`` adds to the kernel (x W + x A B) and is refused, unless an adapter is
  registered for it with :func:`register_plain_layer`;
- ``nnx.Conv``: ``mask`` is applied to the kernel before bounding (as flax does); ``strides``
  and padding ``"SAME"``/``"VALID"``/``"CIRCULAR"``/explicit ints are bounded on the actual
  operator; ``kernel_dilation``/``input_dilation`` ≠ 1, ``feature_group_count`` ≠ 1,
  ``"REFLECT"``/``"CAUSAL"``/``"SAME_LOWER"`` padding and 1-D/3-D kernels are refused;
- both: a custom ``dot_general``/``conv_general_dilated`` or ``promote_dtype`` function can
  compute anything and is refused unless it is flax's default (compared by identity);
- ``dtype`` (compute dtype) and ``preferred_element_type``: accepted when None or a float dtype
  of at least float32 into which the kernel converts exactly; a narrower one (``bfloat16``,
  ``float16``) rounds the kernel, the inputs or the outputs to a few bits, which changes the
  map by far more than the float32 rounding liplax's layers share, and is refused;
- ``use_bias``, ``precision``, ``param_dtype``, initializers and metadata do not change the
  Lipschitz constant of the real-arithmetic map (as for the liplax layers, the bound is that of
  the map with the stored kernel; the backend's rounding of the forward pass is not modelled).

Refusals are ``ValueError`` (an option) or ``TypeError`` (a type) naming the option or type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes
from jax import lax

from liplax import conv as conv_ops
from liplax._checks import check_p, pair, shape_tuple
from liplax.guarantee import Bound
from liplax.nn._base import const_bound
from liplax.nn.conv import conv_bound
from liplax.nn.dense import dense_output_shape, matrix_bound

#: plain elementwise functions (compared by identity; ``nnx.relu is jax.nn.relu``) with their
#: (p-independent) exact Lipschitz constant.
PLAIN_FUNCTIONS = {jax.nn.relu: 1.0}

#: paddings of ``nnx.Conv`` that are bounded (as flax spells them; ``"CIRCULAR"`` is upper case
#: in flax, which passes any other spelling to ``lax``).
_CONV_PADDINGS = ("SAME", "VALID", "same", "valid", "CIRCULAR")


class PlainAdapter(NamedTuple):
    """How to bound a plain layer type: ``output_shape(layer, input_shape)``,
    ``bound(layer, input_shape, p)`` (p already normalized) and ``check(layer)`` (raises on an
    option that is not modelled)."""

    output_shape: Callable
    bound: Callable
    check: Callable


_ADAPTERS: dict[type, PlainAdapter] = {}


def register_plain_layer(cls: type, adapter: PlainAdapter) -> None:
    """Bound layers of exactly type ``cls`` with ``adapter`` (its ``bound`` must be a certified
    bound of the map ``cls.__call__`` computes, every option included)."""
    if not isinstance(cls, type) or not isinstance(adapter, PlainAdapter):
        raise TypeError("register_plain_layer(cls, adapter): cls must be a type and adapter a "
                        f"PlainAdapter, got {cls!r}, {type(adapter).__name__}")
    _ADAPTERS[cls] = adapter


def _is_function(layer) -> bool:
    try:
        return layer in PLAIN_FUNCTIONS
    except TypeError:  # unhashable: not one of the functions
        return False


def is_plain(layer) -> bool:
    """A bounded plain layer: exactly a registered type (``nnx.Linear``, ``nnx.Conv``) or one of
    :data:`PLAIN_FUNCTIONS`. Subclasses are not plain layers (see the module docstring)."""
    return type(layer) in _ADAPTERS or _is_function(layer)


def unmodelled_subclass(layer) -> str | None:
    """The registered flax type ``layer`` is a subclass of (its extra behaviour unmodelled)."""
    if type(layer) in _ADAPTERS:
        return None
    for cls in _ADAPTERS:
        if isinstance(layer, cls):
            return f"nnx.{cls.__name__}"
    return None


def check_plain(layer) -> None:
    """Raise ``ValueError`` if a plain layer has an option that changes its map and is not
    modelled (nothing for a plain function)."""
    if type(layer) in _ADAPTERS:
        _ADAPTERS[type(layer)].check(layer)


# --------------------------------------------------------------------------------------------
# Options shared by nnx.Linear and nnx.Conv.
# --------------------------------------------------------------------------------------------


def _float_dtype_ok(dtype, kernel_dtype) -> bool:
    """None, or a float dtype ≥ float32 into which ``kernel_dtype`` converts exactly."""
    if dtype is None:
        return True
    try:
        d = jnp.dtype(dtype)
    except TypeError:
        return False
    return (
        jnp.issubdtype(d, jnp.floating)
        and jnp.finfo(d).bits >= 32
        and jnp.promote_types(d, kernel_dtype) == d
    )


def _dtype_name(v) -> str:
    try:
        return jnp.dtype(v).name
    except TypeError:
        return repr(v)


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _check_common(layer, name: str, fn_attr: str, default_fn) -> jax.Array:
    """The options both layer types share; returns the kernel (real float, as stored)."""
    k = layer.kernel[...]
    if not jnp.issubdtype(k.dtype, jnp.floating):
        raise ValueError(f"{name}: kernel must be a real floating array, got dtype {k.dtype}")
    fn = getattr(layer, fn_attr, default_fn)
    if fn is not default_fn:
        raise ValueError(
            f"{name}: a custom {fn_attr} ({_fn_name(fn)}) can compute any map; only flax's "
            f"default lax.{default_fn.__name__} is bounded"
        )
    fn = getattr(layer, "promote_dtype", nnx_dtypes.promote_dtype)
    if fn is not nnx_dtypes.promote_dtype:
        raise ValueError(
            f"{name}: a custom promote_dtype ({_fn_name(fn)}) can change the kernel and the "
            "inputs; only flax's default is bounded"
        )
    for attr in ("dtype", "preferred_element_type"):
        v = getattr(layer, attr, None)
        if not _float_dtype_ok(v, k.dtype):
            raise ValueError(
                f"{name}: {attr}={_dtype_name(v)} rounds the kernel, inputs or outputs below "
                f"the kernel's {k.dtype} (a different map); use None or a float dtype of at "
                "least float32 that holds the kernel exactly"
            )
    return k


def _bound_dtype(k: jax.Array) -> jax.Array:
    """The kernel in a dtype of at least float32 (exact), so a bfloat16 kernel is bounded in
    float32 arithmetic."""
    return k.astype(jnp.promote_types(k.dtype, jnp.float32))


# --------------------------------------------------------------------------------------------
# nnx.Linear: x ↦ x W (+ b).
# --------------------------------------------------------------------------------------------


def _linear_kernel(layer: nnx.Linear) -> jax.Array:
    k = _check_common(layer, "nnx.Linear", "dot_general", lax.dot_general)
    if k.ndim != 2:
        raise ValueError(f"nnx.Linear: only (in, out) kernels are supported, got shape {k.shape}")
    return k


def _linear_shape(layer: nnx.Linear, input_shape) -> tuple[int, ...]:
    k = _linear_kernel(layer)
    return dense_output_shape(input_shape, k.shape[0], k.shape[1], "nnx.Linear")


def _linear_bound(layer: nnx.Linear, input_shape, p: float) -> Bound:
    _linear_shape(layer, input_shape)
    return matrix_bound(_bound_dtype(_linear_kernel(layer)), p)


# --------------------------------------------------------------------------------------------
# nnx.Conv: x ↦ (k ⊙ mask) ⋆ x (+ b).
# --------------------------------------------------------------------------------------------


def _is_one(v, name: str) -> bool:
    """Whether a dilation option is 1 (None, 1 or all-ones), as flax broadcasts it."""
    if v is None:
        return True
    if isinstance(v, int) and not isinstance(v, bool):
        return v == 1
    try:
        return all(isinstance(e, int) and not isinstance(e, bool) and e == 1 for e in v)
    except TypeError as e:
        raise ValueError(f"nnx.Conv: {name} must be an int or a sequence of ints, got {v!r}") from e


def _conv_config(layer: nnx.Conv) -> tuple[jax.Array, tuple[int, int], object]:
    """(kernel ⊙ mask, strides, padding) of a 2-D ``nnx.Conv`` whose options are all modelled."""
    k = _check_common(layer, "nnx.Conv", "conv_general_dilated", lax.conv_general_dilated)
    if k.ndim != 4:
        raise ValueError(
            f"nnx.Conv: only 2-D convolutions are supported (kernel_size of length 2), got kernel "
            f"shape {k.shape} (kernel_size={layer.kernel_size!r})"
        )
    for attr in ("kernel_dilation", "input_dilation"):
        v = getattr(layer, attr, 1)
        if not _is_one(v, attr):
            raise ValueError(f"nnx.Conv: {attr} must be 1 to be bounded, got {v!r}")
    if layer.feature_group_count != 1:
        raise ValueError(
            "nnx.Conv: feature_group_count must be 1 to be bounded, got "
            f"{layer.feature_group_count}"
        )
    strides = pair(1 if layer.strides is None else layer.strides, "strides", "nnx.Conv")
    padding = layer.padding
    if isinstance(padding, str):
        if padding not in _CONV_PADDINGS:
            raise ValueError(
                f"nnx.Conv: padding={padding!r} is not bounded; use one of {_CONV_PADDINGS} or "
                "explicit ints ('REFLECT' duplicates border pixels, 'CAUSAL' is 1-D)"
            )
        padding = padding.upper()
    mask = getattr(layer, "mask", None)
    if mask is not None:
        mask = jnp.asarray(mask[...] if isinstance(mask, nnx.Variable) else mask)
        if mask.shape != k.shape:
            raise ValueError(
                f"nnx.Conv: mask must have the kernel's shape {k.shape}, got {mask.shape}"
            )
        if not (jnp.issubdtype(mask.dtype, jnp.floating) or jnp.issubdtype(mask.dtype, jnp.integer)
                or mask.dtype == jnp.bool_):
            raise ValueError(f"nnx.Conv: mask must be a real array, got dtype {mask.dtype}")
        k = k * mask  # what nnx.Conv applies (kernel *= mask)
    return k, strides, padding


def _conv_shape(layer: nnx.Conv, input_shape) -> tuple[int, ...]:
    k, strides, padding = _conv_config(layer)
    shape = shape_tuple(input_shape, "nnx.Conv")
    if len(shape) != 3 or shape[-1] != k.shape[2]:
        raise ValueError(
            f"nnx.Conv: input_shape must be (H, W, {k.shape[2]}) for one example, got {shape}"
        )
    h, w = conv_ops.output_shape(k.shape, shape[:2], strides=strides, padding=padding)
    return (int(h), int(w), k.shape[3])


def _conv_bound(layer: nnx.Conv, input_shape, p: float) -> Bound:
    _conv_shape(layer, input_shape)
    k, strides, padding = _conv_config(layer)
    hw = tuple(input_shape[:2])
    return conv_bound(_bound_dtype(k), hw, p, strides=strides, padding=padding)


register_plain_layer(nnx.Linear, PlainAdapter(_linear_shape, _linear_bound, _linear_kernel))
register_plain_layer(nnx.Conv, PlainAdapter(_conv_shape, _conv_bound, _conv_config))


# --------------------------------------------------------------------------------------------
# Entry points.
# --------------------------------------------------------------------------------------------


def _refuse(layer) -> None:
    sup = unmodelled_subclass(layer)
    if sup is not None:
        raise TypeError(
            f"cannot bound {type(layer).__name__}: a subclass of {sup} may change the map (e.g. "
            f"a low-rank update of the kernel) and only exactly {sup} is bounded; register an "
            "adapter with liplax.nn.plain.register_plain_layer"
        )
    raise TypeError(f"cannot bound layer {layer!r}: not a liplax layer nor a supported flax layer")


def plain_output_shape(layer, input_shape) -> tuple[int, ...]:
    """Per-example output shape of a plain layer (see :func:`is_plain`)."""
    if type(layer) in _ADAPTERS:
        return _ADAPTERS[type(layer)].output_shape(layer, input_shape)
    if _is_function(layer):
        return shape_tuple(input_shape, getattr(layer, "__name__", type(layer).__name__))
    _refuse(layer)


def plain_bound(layer, input_shape, *, p=2) -> Bound:
    """Certified ℓp constant of a plain flax layer (see the module docstring)."""
    if type(layer) in _ADAPTERS:
        p = check_p(p, f"nnx.{type(layer).__name__}")
        return _ADAPTERS[type(layer)].bound(layer, input_shape, p)
    if _is_function(layer):
        check_p(p, getattr(layer, "__name__", "function"))
        return const_bound(PLAIN_FUNCTIONS[layer], "exact")
    _refuse(layer)


__all__ = [
    "PLAIN_FUNCTIONS",
    "PlainAdapter",
    "check_plain",
    "is_plain",
    "plain_bound",
    "plain_output_shape",
    "register_plain_layer",
    "unmodelled_subclass",
]
