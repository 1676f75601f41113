r"""The one model walk: every consumer of a model's layer tree goes through :func:`fold`.

A model is a tree: **sequential containers** (``liplax.nn.Sequential``, or exactly
``nnx.Sequential``) apply their children in order, a **residual** (``liplax.nn.Residual``) is
x ↦ x + g(x), and everything else is a **leaf** layer (a liplax layer, a supported plain flax
layer or function, or a duck-typed layer with ``lipschitz_bound``/``output_shape``).
:func:`fold` visits it once, in forward order, carrying a value forward (a per-example shape for
the bounds, an array for the forward pass) and combining the leaves' values with
``chain`` (sequential) and ``residual``. The trivial bound and its log (:func:`bound_of`,
:func:`log_bound_of`), the shapes (:func:`output_shape_of`), the layer tables and sweeps
(:func:`top_level`), the grouped power steps (:func:`leaves`, :func:`forward`) and
:func:`liplax.nn.to_plain` are all folds.

Bounds (docs/design.md §composition): Lip(f_L ∘ … ∘ f_1) ≤ Π_l Lip(f_l) and
Lip(x ↦ x + g(x)) ≤ 1 + Lip(g) (triangle inequality); ``upper`` when every factor is ``exact``
or ``upper``, ``estimate`` otherwise. A ``ValueError`` raised inside a container is prefixed
with the layer's place (``"Sequential layer 2 (Dense): …"``, ``"Residual inner (Dense): …"``).

A subclass of ``nnx.Sequential`` may chain its layers differently (its ``__call__``): it is not
walked into, and refused as a leaf (:func:`check_layer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from liplax._checks import shape_tuple
from liplax.guarantee import Bound, compose, compose_kind, product_margin, unit_roundoff
from liplax.nn.plain import (
    check_plain,
    is_plain,
    plain_bound,
    plain_output_shape,
    unmodelled_subclass,
)

Path = tuple


class Node(NamedTuple):
    """A layer of the tree: its ``path`` (child indices, ``"inner"`` for a residual's branch),
    the ``layer`` and its per-example ``input_shape`` (None when walked without shapes)."""

    path: Path
    layer: Any
    input_shape: tuple[int, ...] | None


def layer_name(layer) -> str:
    """The name used in messages and tables: a function's ``__name__`` or the class name."""
    return getattr(layer, "__name__", None) or type(layer).__name__


def children(module) -> list | None:
    """The layers of a sequential container (liplax, or exactly ``nnx.Sequential``), else None."""
    if getattr(type(module), "container", None) == "sequential" or type(module) is nnx.Sequential:
        return list(module.layers)
    return None


def is_residual(module) -> bool:
    return getattr(type(module), "container", None) == "residual"


def check_layer(layer, where: str) -> None:
    """Raise ``TypeError`` for a layer that cannot be bounded (``ValueError`` for a plain flax
    layer with an option that changes its map and is not modelled)."""
    duck = hasattr(layer, "lipschitz_bound") and hasattr(layer, "output_shape")
    if is_plain(layer):
        try:
            check_plain(layer)
        except ValueError as e:
            raise ValueError(f"{where} ({layer_name(layer)}): {e}") from e
        return
    sup = unmodelled_subclass(layer)
    if sup is None and isinstance(layer, nnx.Sequential) and type(layer) is not nnx.Sequential:
        sup = "nnx.Sequential"
    if sup is not None and not duck:
        raise TypeError(
            f"{where} ({layer_name(layer)}) is a subclass of {sup}, which liplax bounds only as "
            f"exactly {sup}: a subclass may change the map (e.g. nnx.LoRALinear adds a low-rank "
            "update to the kernel); use the flax class itself, a liplax layer, or register an "
            "adapter (liplax.nn.plain.register_plain_layer)"
        )
    if not (children(layer) is not None or is_residual(layer) or duck):
        raise TypeError(
            f"{where} ({layer_name(layer)}) has no lipschitz_bound/output_shape: use liplax.nn "
            "layers (or nnx.Linear, nnx.Conv, nnx.relu, nnx.Sequential of those)"
        )


def _in_context(where: str, fn: Callable, *args, **kw):
    try:
        return fn(*args, **kw)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def fold(model, x, leaf: Callable, *, chain: Callable = lambda values: None,
         residual: Callable | None = None, check: bool = True, path: Path = ()):
    """Visit ``model`` in forward order; returns (value, carry out).

    ``leaf(layer, x, path) -> (value, x_out)`` for a leaf layer (checked by :func:`check_layer`
    first unless ``check=False`` or it is a plain flax layer, which its adapter checks); a
    sequential container threads x through its children and gives ``chain([values])``; a
    residual folds its branch to (v, y) and gives
    ``residual(v, x, y, module) -> (value, x_out)`` (default: the carry must be unchanged).
    """
    kw = dict(chain=chain, residual=residual, check=check)
    kids = children(model)
    if kids is not None:
        values = []
        for i, child in enumerate(kids):
            where = f"{layer_name(model)} layer {i} ({layer_name(child)})"
            v, x = _in_context(where, fold, child, x, leaf, path=(*path, i), **kw)
            values.append(v)
        return chain(values), x
    if is_residual(model):
        where = f"Residual inner ({layer_name(model.inner)})"
        v, y = _in_context(where, fold, model.inner, x, leaf, path=(*path, "inner"), **kw)
        return (residual or _keep_shape)(v, x, y, model)
    if check and not is_plain(model):  # a plain layer's adapter refuses with its own name
        check_layer(model, "layer")
    return leaf(model, x, path)


def _keep_shape(value, x, y, module):
    if y != x:
        raise ValueError(
            f"Residual: inner layer ({layer_name(module.inner)}) maps input_shape {x} to {y}; "
            "a residual branch must keep the shape"
        )
    return value, x


def fold_shapes(model, input_shape, leaf: Callable, **kw):
    """:func:`fold` with the per-example shape as the carry, normalized at a container (a leaf
    checks its own shape, with its own name in the message)."""
    if children(model) is not None or is_residual(model):
        input_shape = shape_tuple(input_shape, layer_name(model))
    return fold(model, input_shape, leaf, **kw)


def leaf_output_shape(layer, input_shape) -> tuple[int, ...]:
    """Per-example output shape of a leaf layer (plain flax layers through their adapter)."""
    if is_plain(layer):
        return plain_output_shape(layer, input_shape)
    return layer.output_shape(input_shape)


def output_shape_of(layer, input_shape) -> tuple[int, ...]:
    """Per-example output shape of any supported layer or container."""
    return fold_shapes(layer, input_shape, lambda m, s, _: (None, leaf_output_shape(m, s)))[1]


def leaves(model, input_shape=None) -> list[Node]:
    """The leaf layers in forward order, with their input shapes when ``input_shape`` is given
    (each checked as for a bound); without shapes nothing is checked."""
    found: list[Node] = []

    def visit(layer, shape, path):
        found.append(Node(path, layer, shape))
        return None, None if shape is None else leaf_output_shape(layer, shape)

    if input_shape is None:
        fold(model, None, visit, check=False)
    else:
        fold_shapes(model, input_shape, visit)
    return found


def top_level(model, input_shape=None) -> list[Node]:
    """The children of a sequential model (or the model itself), with their input shapes when
    ``input_shape`` is given: the rows of a per-layer table."""
    kids = children(model)
    if kids is None:
        return [Node((), model, input_shape)]
    out, shape = [], None if input_shape is None else shape_tuple(input_shape, layer_name(model))
    for i, child in enumerate(kids):
        out.append(Node((i,), child, shape))
        if shape is not None:
            where = f"{layer_name(model)} layer {i} ({layer_name(child)})"
            shape = _in_context(where, output_shape_of, child, shape)
    return out


def residual_kind(kind: str) -> str:
    return "estimate" if kind == "estimate" else "upper"


def leaf_bound(layer, input_shape, *, p=2, fast: bool = False) -> Bound:
    """The certified (``fast=False``) or penalty (``fast=True``) ℓp value of a leaf layer."""
    if is_plain(layer):
        return plain_bound(layer, input_shape, p=p)
    if fast:
        return layer.lipschitz_estimate(input_shape, p=p)
    return layer.lipschitz_bound(input_shape, p=p)


def bound_of(layer, input_shape, *, p=2, fast: bool = False) -> Bound:
    """Certified (``fast=False``) or penalty (``fast=True``) ℓp constant of any supported layer:
    the product of the factors (:func:`liplax.guarantee.compose`, rounded up), 1 + Lip(g) for a
    residual (rounded up unless an estimate)."""

    def leaf(m, shape, _):
        return leaf_bound(m, shape, p=p, fast=fast), leaf_output_shape(m, shape)

    def residual(b, x, y, module):
        _keep_shape(None, x, y, module)
        value = 1.0 + b.value
        if b.kind != "estimate":  # the inner value's rounding and the addition's, rounded up
            value = value * (1.0 + product_margin([b.kind], jnp.result_type(value)))
        return Bound(value, residual_kind(b.kind)), x

    return fold_shapes(layer, input_shape, leaf, chain=compose, residual=residual)[0]


def log_bound_of(layer, input_shape, *, p=2, fast: bool = False,
                 leaf_log: Callable | None = None) -> tuple[jax.Array, str]:
    """(Σ log of the factors, kind): the log of :func:`bound_of`, summed without overflow.

    ``leaf_log(layer, shape) -> (log value, kind)`` replaces the leaves' own values (the grouped
    power steps use it); certificates (``fast=False``) are rounded up at every sum."""

    def leaf(m, shape, _):
        if leaf_log is not None:
            lv, kind = leaf_log(m, shape)
        else:
            b = leaf_bound(m, shape, p=p, fast=fast)
            lv, kind = jnp.log(b.value), b.kind
        return (lv, kind), leaf_output_shape(m, shape)

    def chain(values):
        total, size = jnp.asarray(0.0), jnp.asarray(0.0)
        for lv, _ in values:
            total, size = total + lv, size + jnp.abs(lv)
        kinds = [kind for _, kind in values]
        if len(kinds) > 1 and not fast:  # certificates only; one factor is kept as is
            total = _log_round_up(total, size, kinds)
        return total, compose_kind(kinds)

    def residual(v, x, y, module):
        _keep_shape(None, x, y, module)
        lv, kind = v
        out = jax.nn.softplus(lv)  # log(1 + e^lv)
        if not fast:
            out = _log_round_up(out, jnp.abs(out), [kind])
        return (out, residual_kind(kind)), x

    return fold_shapes(layer, input_shape, leaf, chain=chain, residual=residual)[0]


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


def forward(model, x: jax.Array, apply_leaf: Callable) -> jax.Array:
    """``model(x)`` with every leaf applied as ``apply_leaf(layer, x)`` (containers as their
    ``__call__``: in order, and x + g(x) for a residual)."""

    def residual(_, x, y, module):
        if y.shape != x.shape:
            raise ValueError(
                f"Residual: inner layer ({layer_name(module.inner)}) maps shape "
                f"{tuple(x.shape)} to {tuple(y.shape)}; a residual branch must keep the shape"
            )
        return None, x + y

    leaf = lambda m, x, _: (None, apply_leaf(m, x))  # noqa: E731
    return fold(model, x, leaf, residual=residual, check=False)[1]


__all__ = [
    "Node",
    "bound_of",
    "check_layer",
    "children",
    "fold",
    "fold_shapes",
    "forward",
    "is_residual",
    "layer_name",
    "leaf_bound",
    "leaf_output_shape",
    "leaves",
    "log_bound_of",
    "output_shape_of",
    "residual_kind",
    "top_level",
]
