"""What every liplax layer shares: the ``p`` vocabulary, shape conventions and the NNX state type.

Conventions of :mod:`liplax.nn`:

- ``input_shape`` is the shape of **one example, without the batch axis**: ``(in_features,)``
  (or ``(..., in_features)``) for dense layers, ``(H, W, C)`` for convolutions and pooling. A layer
  needs the spatial size because the norm of a convolution depends on it.
- ``p`` is one of ``1``, ``2`` or ``inf`` (``float("inf")``, ``jnp.inf``, ``"inf"``): the layer is
  bounded as a map from (ℝ^n, ‖·‖_p) to (ℝ^m, ‖·‖_p), the input and output flattened per example.
- ``lipschitz_bound`` is the certificate path (``exact``/``upper`` where possible); it never moves
  any state. ``lipschitz_estimate`` is the fast, differentiable path used by the training penalty
  (warm power iteration for ℓ2, one step per call, in training mode only); it may be an
  ``estimate``.
- Training mode versus inference mode follows NNX: a module attribute ``deterministic`` that
  ``model.eval()`` sets to ``True`` and ``model.train()`` to ``False`` (also ``nnx.view(model,
  deterministic=...)``). In inference mode no power-iteration state moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liplax.guarantee import Bound

P_VALUES: tuple[float, ...] = (1, 2, math.inf)


class PowerIterState(nnx.Variable):
    """Warm-start vector(s) of a power iteration: state, not a parameter (never differentiated).

    Created in ``__init__`` from an explicit ``rngs``; updated in training mode only.
    """


def check_p(p, layer: str) -> float:
    """Normalize ``p`` to 1, 2 or ``math.inf``; raise ``ValueError`` naming ``layer`` otherwise."""
    if isinstance(p, str) and p.lower() in ("inf", "infinity", "∞"):
        return math.inf
    if isinstance(p, bool) or not isinstance(p, int | float):
        raise ValueError(f"{layer}: p must be 1, 2 or inf, got {p!r}")
    if p in (1, 2) or p == math.inf:
        return math.inf if p == math.inf else int(p)
    raise ValueError(f"{layer}: p must be 1, 2 or inf, got {p!r}")


def shape_tuple(input_shape, layer: str, name: str = "input_shape") -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints (per example, no batch axis)."""
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise ValueError(
            f"{layer}: {name} must be a tuple of positive ints (one example, no batch axis), "
            f"got {input_shape!r}"
        )
    out = []
    for v in input_shape:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(
                f"{layer}: {name} must be a tuple of positive ints (one example, no batch axis), "
                f"got {input_shape!r}"
            )
        out.append(int(v))
    if not out:
        raise ValueError(f"{layer}: {name} must not be empty, got {input_shape!r}")
    return tuple(out)


def const_bound(value: float, kind: str) -> Bound:
    """A Bound holding a Python constant (float32, or float64 when x64 is enabled).

    An ``upper`` constant is rounded upward to the array dtype, so it stays an upper bound.
    """
    dtype = np.dtype(jnp.result_type(float))
    v = dtype.type(value)
    if kind == "upper" and float(v) < value:
        v = np.nextafter(v, dtype.type(np.inf))
    return Bound(jnp.asarray(v, dtype=dtype), kind)


def positive_int(v, layer: str, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {v!r}")
    return int(v)


def pair(v, layer: str, name: str) -> tuple[int, int]:
    """An int or a pair of positive ints, as a pair."""
    if isinstance(v, Sequence) and not isinstance(v, str):
        if len(v) != 2:
            raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {v!r}")
        return (positive_int(v[0], layer, f"{name}[0]"), positive_int(v[1], layer, f"{name}[1]"))
    v = positive_int(v, layer, name)
    return (v, v)


class LipschitzModule(nnx.Module):
    """Base of liplax layers: ``output_shape``, ``lipschitz_bound`` and ``lipschitz_estimate``.

    Subclasses implement :meth:`output_shape` and :meth:`lipschitz_bound`; layers whose ℓ2
    certificate is expensive override :meth:`lipschitz_estimate` with a warm power iteration.
    """

    deterministic: bool = False

    @property
    def layer_name(self) -> str:
        return type(self).__name__

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` freezes power-iteration state."""
        if deterministic is not None:
            self.deterministic = deterministic

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-example output shape for a per-example ``input_shape``; ValueError on mismatch."""
        raise NotImplementedError

    def lipschitz_bound(self, input_shape: Sequence[int], *, p=2) -> Bound:
        """Lipschitz constant of the layer in ℓp on ``input_shape`` (certified where possible)."""
        raise NotImplementedError

    def lipschitz_estimate(self, input_shape: Sequence[int], *, p=2) -> Bound:
        """Fast differentiable Lipschitz value for the training penalty (default: the bound)."""
        return self.lipschitz_bound(input_shape, p=p)

    def _p(self, p) -> float:
        return check_p(p, f"{self.layer_name}.lipschitz_bound")


def check_features(x: jax.Array, expected: int, layer: str, axis_name: str = "in_features"):
    """Raise ``ValueError`` if the last axis of ``x`` is not ``expected`` (a trace-time check)."""
    if x.ndim < 1 or x.shape[-1] != expected:
        raise ValueError(
            f"{layer}: input of shape {tuple(x.shape)} has {x.shape[-1] if x.ndim else 0} "
            f"features on its last axis, expected {axis_name}={expected}"
        )
