r"""Containers that compose bounds: ``Sequential`` (a product) and ``Residual`` (1 + Lip(g)).

Lip(f_L ∘ … ∘ f_1) ≤ Π_l Lip(f_l), and Lip(x ↦ x + g(x)) ≤ 1 + Lip(g) (triangle inequality).
Both are ``upper`` when every factor is ``exact`` or ``upper`` and ``estimate`` otherwise
(DESIGN.md §3). Shapes are propagated layer by layer (``input_shape`` per example, no batch
axis); a mismatch raises ``ValueError`` naming the container, the layer's index and type.

The helpers :func:`bound_of`, :func:`output_shape_of` and :func:`log_bound_of` also accept plain
``nnx.Linear``/``nnx.Conv``/``nnx.Sequential`` (what :func:`liplax.nn.to_plain` produces).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from liplax.guarantee import Bound, compose, compose_kind, product_margin, unit_roundoff
from liplax.nn._base import LipschitzModule, check_p, shape_tuple
from liplax.nn.plain import (
    check_plain,
    is_plain,
    plain_bound,
    plain_output_shape,
    unmodelled_subclass,
)


def _name(layer) -> str:
    return getattr(layer, "__name__", None) or type(layer).__name__


def _children(module) -> list | None:
    """The layers of a sequential container (liplax, or exactly ``nnx.Sequential``), else None.

    A subclass of ``nnx.Sequential`` may change how the layers are chained (its ``__call__``):
    it is not composed as a product (see :func:`_check_layer`)."""
    if isinstance(module, Sequential) or type(module) is nnx.Sequential:
        return list(module.layers)
    return None


def _check_layer(layer, where: str) -> None:
    """Raise ``TypeError`` for a layer that cannot be bounded (``ValueError`` for a plain flax
    layer with an option that changes its map and is not modelled)."""
    duck = hasattr(layer, "lipschitz_bound") and hasattr(layer, "output_shape")
    if is_plain(layer):
        try:
            check_plain(layer)
        except ValueError as e:
            raise ValueError(f"{where} ({_name(layer)}): {e}") from e
        return
    sup = unmodelled_subclass(layer)
    if sup is None and isinstance(layer, nnx.Sequential) and type(layer) is not nnx.Sequential:
        sup = "nnx.Sequential"
    if sup is not None and not duck:
        raise TypeError(
            f"{where} ({_name(layer)}) is a subclass of {sup}, which liplax bounds only as exactly "
            f"{sup}: a subclass may change the map (e.g. nnx.LoRALinear adds a low-rank update "
            "to the kernel); use the flax class itself, a liplax layer, or register an adapter "
            "(liplax.nn.plain.register_plain_layer)"
        )
    ok = isinstance(layer, Sequential | Residual) or _children(layer) is not None
    ok = ok or is_plain(layer) or duck
    if not ok:
        raise TypeError(
            f"{where} ({_name(layer)}) has no lipschitz_bound/output_shape: use liplax.nn layers "
            "(or nnx.Linear, nnx.Conv, nnx.relu, nnx.Sequential of those)"
        )


def output_shape_of(layer, input_shape) -> tuple[int, ...]:
    """Per-example output shape of any supported layer or container."""
    kids = _children(layer)
    if kids is not None:
        shape = shape_tuple(input_shape, _name(layer))
        for i, child in enumerate(kids):
            shape = _in_context(_name(layer), i, child, output_shape_of, shape)
        return shape
    if is_plain(layer):
        return plain_output_shape(layer, input_shape)
    _check_layer(layer, "layer")
    return layer.output_shape(input_shape)


def bound_of(layer, input_shape, *, p=2, fast: bool = False) -> Bound:
    """Certified (``fast=False``) or penalty (``fast=True``) ℓp constant of any supported layer."""
    kids = _children(layer)
    if kids is not None:
        shape = shape_tuple(input_shape, _name(layer))
        bounds = []
        for i, child in enumerate(kids):
            b = _in_context(_name(layer), i, child, bound_of, shape, p=p, fast=fast)
            shape = _in_context(_name(layer), i, child, output_shape_of, shape)
            bounds.append(b)
        return compose(bounds)
    if is_plain(layer):
        return plain_bound(layer, input_shape, p=p)
    if isinstance(layer, Residual):
        return layer._bound(input_shape, p=p, fast=fast)
    _check_layer(layer, "layer")
    if fast:
        return layer.lipschitz_estimate(input_shape, p=p)
    return layer.lipschitz_bound(input_shape, p=p)


def log_bound_of(layer, input_shape, *, p=2, fast: bool = False) -> tuple[jax.Array, str]:
    """(Σ log of the factors, kind): the log of :func:`bound_of`, summed without overflow."""
    kids = _children(layer)
    if kids is not None:
        shape = shape_tuple(input_shape, _name(layer))
        total, kinds, size = jnp.asarray(0.0), [], jnp.asarray(0.0)
        for i, child in enumerate(kids):
            lv, kind = _in_context(_name(layer), i, child, log_bound_of, shape, p=p, fast=fast)
            shape = _in_context(_name(layer), i, child, output_shape_of, shape)
            total, kinds, size = total + lv, kinds + [kind], size + jnp.abs(lv)
        if len(kinds) > 1 and not fast:  # certificates only; one factor is kept as is
            total = _log_round_up(total, size, kinds)
        return total, compose_kind(kinds)
    if isinstance(layer, Residual):
        layer._check_shape(input_shape)
        lv, kind = log_bound_of(layer.inner, input_shape, p=p, fast=fast)
        out = jax.nn.softplus(lv)  # log(1 + e^lv)
        if not fast:
            out = _log_round_up(out, jnp.abs(out), [kind])
        return out, _residual_kind(kind)
    b = bound_of(layer, input_shape, p=p, fast=fast)
    return jnp.log(b.value), b.kind


def _log_round_up(total: jax.Array, size: jax.Array, kinds: list[str]) -> jax.Array:
    """Σ_l log Lip_l rounded up as :func:`~liplax.guarantee.compose` rounds the product up.

    + log(1 + product_margin) covers the factors; each computed log is within 2u·|log_l| and
    each of the L additions within u·Σ|log_l|, so + (L + 3)·u·(Σ|log_l| + 1) covers the log
    arithmetic (the final additions included). Unchanged for an estimate."""
    if compose_kind(kinds) == "estimate":
        return total
    dtype = jnp.result_type(total)
    u = unit_roundoff(dtype)
    margin = math.log1p(product_margin(kinds, dtype))
    return total + margin + (len(kinds) + 3) * u * (size + 1.0)


def _in_context(container: str, i: int, child, fn, shape, **kw):
    """Call ``fn(child, shape, **kw)``, prefixing a ValueError with the layer's place."""
    try:
        return fn(child, shape, **kw)
    except ValueError as e:
        raise ValueError(f"{container} layer {i} ({_name(child)}): {e}") from e


def _residual_kind(kind: str) -> str:
    return "estimate" if kind == "estimate" else "upper"


class Sequential(LipschitzModule):
    """Apply layers in order; the bound is the product of the layers' bounds.

    Args:
      *layers: liplax layers or containers (or plain ``nnx.Linear``/``nnx.Conv``/``nnx.relu``).
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            _check_layer(layer, f"Sequential layer {i}")
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return output_shape_of(self, input_shape)

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        """Π_l Lip(layer_l) of the certified layer bounds (``upper`` if all are certified)."""
        check_p(p, "Sequential.lipschitz_bound")
        return bound_of(self, input_shape, p=p)

    def lipschitz_estimate(self, input_shape, *, p=2) -> Bound:
        """Π_l of the layers' fast (penalty) values; moves power-iteration state in training."""
        check_p(p, "Sequential.lipschitz_estimate")
        return bound_of(self, input_shape, p=p, fast=True)


class Residual(LipschitzModule):
    """x ↦ x + g(x); bound 1 + Lip(g). ``g`` must keep the per-example shape."""

    def __init__(self, inner):
        _check_layer(inner, "Residual inner")
        self.inner = inner

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.inner(x)
        if y.shape != x.shape:
            raise ValueError(
                f"Residual: inner layer ({_name(self.inner)}) maps shape {tuple(x.shape)} to "
                f"{tuple(y.shape)}; a residual branch must keep the shape"
            )
        return x + y

    def _check_shape(self, input_shape) -> tuple[int, ...]:
        shape = shape_tuple(input_shape, "Residual")
        try:
            out = output_shape_of(self.inner, shape)
        except ValueError as e:
            raise ValueError(f"Residual inner ({_name(self.inner)}): {e}") from e
        if out != shape:
            raise ValueError(
                f"Residual: inner layer ({_name(self.inner)}) maps input_shape {shape} to {out}; "
                "a residual branch must keep the shape"
            )
        return shape

    def output_shape(self, input_shape) -> tuple[int, ...]:
        return self._check_shape(input_shape)

    def _bound(self, input_shape, *, p=2, fast: bool = False) -> Bound:
        check_p(p, "Residual.lipschitz_bound")
        shape = self._check_shape(input_shape)
        b = bound_of(self.inner, shape, p=p, fast=fast)
        value = 1.0 + b.value
        if b.kind != "estimate":  # the inner value's rounding and the addition's, rounded up
            value = value * (1.0 + product_margin([b.kind], jnp.result_type(value)))
        return Bound(value, _residual_kind(b.kind))

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        """1 + Lip(g) (``upper`` when g's bound is certified)."""
        return self._bound(input_shape, p=p)

    def lipschitz_estimate(self, input_shape, *, p=2) -> Bound:
        return self._bound(input_shape, p=p, fast=True)
