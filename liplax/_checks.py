"""Trace-time argument checks: the one validation vocabulary of liplax.

Each check raises ``TypeError``/``ValueError`` naming the argument, the value received and what
was expected (prefixed by ``where``, the function or layer that was called, when given). They look
only at static information (shapes, dtypes, Python values), so they run once at trace time and
cost nothing inside ``jit``. Used by the norm operators, the layers (:mod:`liplax.nn`), the model
walk, the verifiers and the training code alike (docs/design.md §validation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]
PADDING_STRINGS = ("CIRCULAR", "SAME", "VALID")


def float_array(x, name: str) -> jnp.ndarray:
    """``x`` as a real floating array in its compute dtype (bfloat16/float16 → float32).

    Integer, boolean and complex inputs are refused: a silent cast would hide a caller's bug.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        x = np.asarray(x)
        dtype = x.dtype
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be a real floating array, got complex dtype {dtype}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a real floating array (float32/float64, or bfloat16/float16 computed "
            f"in float32), got dtype {dtype}"
        )
    x = jnp.asarray(x)
    if x.dtype in (jnp.bfloat16, jnp.float16):
        x = x.astype(jnp.float32)
    return x


def matrix(w, name: str = "w") -> jnp.ndarray:
    """Check that ``w`` is a rank-2 real floating array with no empty side."""
    w = float_array(w, name)
    if w.ndim != 2:
        raise ValueError(f"{name} must be a matrix of rank 2 (in, out), got shape {w.shape}")
    if 0 in w.shape:
        raise ValueError(f"{name} must have no empty dimension, got shape {w.shape}")
    return w


def kernel(k, name: str = "kernel") -> jnp.ndarray:
    """Check that ``k`` is a rank-4 HWIO convolution kernel with no empty dimension."""
    k = float_array(k, name)
    if k.ndim != 4:
        raise ValueError(
            f"{name} must have rank 4 in HWIO layout (kh, kw, in, out), got shape {k.shape}"
        )
    if 0 in k.shape:
        raise ValueError(f"{name} must have no empty dimension, got shape {k.shape}")
    return k


def _at(where: str | None) -> str:
    return f"{where}: " if where else ""


def positive_int(v, name: str, where: str | None = None) -> int:
    """``v`` as a Python int ≥ 1 (bools refused); ``ValueError`` naming ``name`` otherwise."""
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or int(v) < 1:
        raise ValueError(f"{_at(where)}{name} must be a positive int, got {v!r}")
    return int(v)


def pair(v, name: str, where: str | None = None) -> tuple[int, int]:
    """An int or a pair of positive ints, as a pair (window, stride, kernel and input sizes)."""
    if isinstance(v, Sequence) and not isinstance(v, str):
        if len(v) != 2:
            raise ValueError(f"{_at(where)}{name} must be an int or a pair of ints, got {v!r}")
        return (positive_int(v[0], f"{name}[0]", where), positive_int(v[1], f"{name}[1]", where))
    v = positive_int(v, name, where)
    return (v, v)


def finite_number(v, name: str, where: str | None = None) -> float:
    """``v`` as a Python float, for a finite Python (or NumPy) real number; bools refused."""
    if (isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating)
            or not math.isfinite(v)):
        raise ValueError(f"{_at(where)}{name} must be a finite Python number, got {v!r}")
    return float(v)


P_VALUES: tuple[float, ...] = (1, 2, math.inf)


def check_p(p, where: str) -> float:
    """Normalize ``p`` to 1, 2 or ``math.inf`` (``"inf"``, ``"infinity"``, ``"∞"`` accepted);
    ``ValueError`` naming ``where`` otherwise. The one spelling of the p-check."""
    if isinstance(p, str) and p.lower() in ("inf", "infinity", "∞"):
        return math.inf
    if isinstance(p, bool) or not isinstance(p, int | float):
        raise ValueError(f"{where}: p must be 1, 2 or inf, got {p!r}")
    if p in (1, 2) or p == math.inf:
        return math.inf if p == math.inf else int(p)
    raise ValueError(f"{where}: p must be 1, 2 or inf, got {p!r}")


def shape_tuple(input_shape, where: str, name: str = "input_shape") -> tuple[int, ...]:
    """``input_shape`` (one example, no batch axis; an int means ``(int,)``) as a non-empty tuple
    of positive Python ints."""
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    msg = (f"{where}: {name} must be a tuple of positive ints (one example, no batch axis), "
           f"got {input_shape!r}")
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise ValueError(msg)
    out = []
    for v in input_shape:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(msg)
        out.append(int(v))
    if not out:
        raise ValueError(f"{where}: {name} must not be empty, got {input_shape!r}")
    return tuple(out)


def check_features(x: jax.Array, expected: int, where: str, axis_name: str = "in_features"):
    """Raise ``ValueError`` if the last axis of ``x`` is not ``expected`` (a trace-time check)."""
    if x.ndim < 1 or x.shape[-1] != expected:
        raise ValueError(
            f"{where}: input of shape {tuple(x.shape)} has {x.shape[-1] if x.ndim else 0} "
            f"features on its last axis, expected {axis_name}={expected}"
        )


def input_shape(shape, name: str = "input_shape") -> tuple[int, int]:
    """Check that ``shape`` is (H, W), two positive Python ints."""
    if not isinstance(shape, Sequence) or isinstance(shape, str) or len(shape) != 2:
        raise ValueError(f"{name} must be a pair (H, W) of positive ints, got {shape!r}")
    return (positive_int(shape[0], f"{name}[0]"), positive_int(shape[1], f"{name}[1]"))


def strides(s, name: str = "strides") -> tuple[int, int]:
    """Normalize ``strides`` (an int or a pair of ints, all ≥ 1) to a pair."""
    return pair(s, name)


def num_iters(n, name: str = "num_iters", minimum: int = 0) -> int:
    """Check a static iteration count."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or int(n) < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {n!r}")
    return int(n)


def padding(
    pad: Padding,
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride_hw: tuple[int, int],
    name: str = "padding",
) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """Resolve flax's padding vocabulary to ``"CIRCULAR"`` or explicit ((lo, hi), (lo, hi)).

    ``"SAME"`` follows ``lax.padtype_to_pads`` (what ``nnx.Conv`` does). Explicit padding may be
    an int (all sides), a pair of ints (per axis, both sides) or a pair of (lo, hi) pairs.
    Negative padding is refused, and so is ``"VALID"`` (or any padding) that leaves no output.
    """
    if isinstance(pad, str):
        p = pad.upper()
        if p not in PADDING_STRINGS:
            raise ValueError(
                f"{name} must be one of {PADDING_STRINGS} or explicit ((lo, hi), (lo, hi)) ints, "
                f"got {pad!r}"
            )
        if p == "CIRCULAR":
            return "CIRCULAR"
        pads = tuple(
            tuple(int(v) for v in lh)
            for lh in lax.padtype_to_pads(input_hw, kernel_hw, stride_hw, p)
        )
    elif isinstance(pad, int | np.integer) and not isinstance(pad, bool):
        pads = ((int(pad), int(pad)), (int(pad), int(pad)))
    elif isinstance(pad, Sequence) and len(pad) == 2:
        out = []
        for i, item in enumerate(pad):
            if isinstance(item, int | np.integer) and not isinstance(item, bool):
                out.append((int(item), int(item)))
            elif (
                isinstance(item, Sequence)
                and len(item) == 2
                and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in item)
            ):
                out.append((int(item[0]), int(item[1])))
            else:
                raise ValueError(
                    f"{name}[{i}] must be an int or a (lo, hi) pair of ints, got {item!r}"
                )
        pads = tuple(out)
    else:
        raise ValueError(
            f"{name} must be one of {PADDING_STRINGS}, an int, or ((lo, hi), (lo, hi)) ints, "
            f"got {pad!r}"
        )
    for axis, (lo, hi) in enumerate(pads):
        if lo < 0 or hi < 0:
            raise ValueError(f"{name} must be non-negative, got {pads} (axis {axis})")
    for axis in range(2):
        n, k = input_hw[axis], kernel_hw[axis]
        lo, hi = pads[axis]
        if n + lo + hi < k:
            what = "VALID padding" if (lo, hi) == (0, 0) else f"padding {pads}"
            raise ValueError(
                f"{what} needs input_shape ≥ kernel size on every axis: axis {axis} has input "
                f"{n} + padding {lo + hi} < kernel {k}"
            )
    return pads


# ----------------------------------------------------------------------------- values
# Checks of concrete values (labels, radii, scalars, sizes) shared by the certificates, the
# losses and the data pipeline. A traced value has no value yet: these checks skip it.


def concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array when it has a value now, ``None`` while it is being traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def finite(x, name: str) -> None:
    """Refuse a concrete ``x`` holding nan or ±inf (a traced one passes)."""
    v = concrete(x)
    if v is not None and not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got non-finite values (nan/inf) in {name}")


def real_scalar(value, name: str, *, positive: bool = False):
    """A finite real scalar ≥ 0 (> 0 if ``positive``), returned as given; a traced one passes."""
    v = concrete(value)
    if v is None:
        return value
    if v.shape != () or not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise ValueError(f"{name} must be a real scalar, got {value!r}")
    x = float(v)
    if not np.isfinite(x) or x < 0 or (positive and x == 0):
        expected = "> 0" if positive else "≥ 0"
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}")
    return value
