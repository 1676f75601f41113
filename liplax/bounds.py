r"""The trivial bound of a network and its training penalty (docs/design.md §composition).

L(f_L ∘ … ∘ f_1) ≤ Π_l Lip(f_l). :func:`trivial_bound` multiplies the layers' certified
bounds (``upper`` only if every factor is ``exact``/``upper``); :func:`log_trivial_bound` sums
their logs (no overflow in deep networks); :func:`trivial_bound_penalty` is the differentiable
regularizer, usable inside ``nnx.jit``/``nnx.value_and_grad``:

- ``kind="log"``: Σ_l log Lip_l, the scale-free form (a rescaling of one layer by c and of the
  next by 1/c leaves it unchanged, as it leaves the network unchanged);
- ``kind="product"``: Π_l Lip_l;
- ``kind="hinge"``: max(Π_l Lip_l − target, 0), zero once the bound is below ``target``.

With ``fast=True`` (default) the ℓ2 factors of free-weight layers are warm power iterations
(one step per call, state moved in training mode only; Miyato et al., ICLR 2018): cheap, but
estimates. The certificate (:func:`trivial_bound`) always comes from sound bounds. With
``grouped=True`` the power steps of same-shape layers run as one vmapped step per group
(:func:`liplax.grouped.grouped_log_bound`): the same value, state updates and gradient. For a linear
network min over factorizations of Π‖W_l‖ is ‖W_L⋯W_1‖: the looseness of the trivial bound is a
parameterization pathology that the penalty removes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from liplax._checks import check_p
from liplax.grouped import grouped_log_bound
from liplax.guarantee import Bound
from liplax.nn.export import to_plain
from liplax.nn.walk import bound_of, layer_name, log_bound_of, top_level

PENALTY_KINDS = ("log", "product", "hinge")


def static_shape(input_shape) -> tuple:
    """``input_shape`` as a hashable tuple for a static jit argument (an int means ``(int,)``;
    anything else is passed on unchanged to be refused by name)."""
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        return (input_shape,)
    try:
        return tuple(input_shape)
    except TypeError:
        return input_shape  # bound_of raises the ValueError that names it


@functools.partial(nnx.jit, static_argnums=(1, 2))
def _bound_jit(model, input_shape, p) -> Bound:
    return bound_of(model, input_shape, p=p)


@functools.partial(nnx.jit, static_argnums=(1, 2))
def _log_bound_jit(model, input_shape, p) -> Bound:
    value, kind = log_bound_of(model, input_shape, p=p)
    return Bound(value, kind)


def trivial_bound(model, input_shape: Sequence[int], *, p=2) -> Bound:
    """Π over the model's layers of their certified ℓp bounds on the propagated shapes.

    Args:
      model: a liplax layer or container (or a plain ``nnx.Sequential`` of supported layers).
      input_shape: one example's shape without the batch axis.
      p: 1, 2 or ``inf``.
    Returns:
      ``Bound``: ``upper`` if every factor is ``exact`` or ``upper`` (a single factor keeps its
      kind), ``estimate`` otherwise.

    Computed under ``nnx.jit`` (shape and p static): one compilation per model structure, then
    fast; nothing moves (certified bounds use no power-iteration state). Differentiable.
    """
    check_p(p, "trivial_bound")
    return _bound_jit(model, static_shape(input_shape), p)


def log_trivial_bound(model, input_shape: Sequence[int], *, p=2) -> Bound:
    """log of :func:`trivial_bound` as Σ_l log Lip_l; the ``Bound``'s value is the natural log."""
    check_p(p, "log_trivial_bound")
    return _log_bound_jit(model, static_shape(input_shape), p)


def trivial_bound_penalty(
    model,
    input_shape: Sequence[int],
    *,
    p=2,
    kind: str = "log",
    target: float | None = None,
    fast: bool = True,
    grouped: bool = False,
) -> jax.Array:
    """Differentiable trivial-bound penalty (see the module docstring); a scalar.

    Args:
      model, input_shape, p: as for :func:`trivial_bound`.
      kind: ``"log"``, ``"product"`` or ``"hinge"``.
      target: the hinge's threshold (required, > 0, for ``"hinge"``; refused otherwise).
      fast: use the layers' fast values (warm power iteration for ℓ2, moving the state in
        training mode) instead of the certified bounds.
      grouped: with ``fast=True``, run the power steps of layers with the same kernel shape
        (and, for convolutions, input size, stride and padding) as one ``jax.vmap``-ed step per
        group (:func:`liplax.grouped.grouped_log_bound`); same value, state updates and
        gradient as ``grouped=False``, fewer operations per training step.
    """
    check_p(p, "trivial_bound_penalty")
    if kind not in PENALTY_KINDS:
        raise ValueError(
            f"trivial_bound_penalty: kind must be one of {PENALTY_KINDS}, got {kind!r}"
        )
    if kind == "hinge":
        if target is None or isinstance(target, bool) or not float(target) > 0:
            raise ValueError(
                f"trivial_bound_penalty: kind='hinge' needs a target > 0, got target={target!r}"
            )
    elif target is not None:
        raise ValueError(
            f"trivial_bound_penalty: target is only used by kind='hinge', got target={target!r} "
            f"with kind={kind!r}"
        )
    if grouped and not fast:
        raise ValueError(
            "trivial_bound_penalty: grouped=True groups the power steps of the fast path and "
            f"needs fast=True, got fast={fast!r}"
        )
    if grouped:
        log_value, _ = grouped_log_bound(model, input_shape, p=p)
    else:
        log_value, _ = log_bound_of(model, input_shape, p=p, fast=fast)
    if kind == "log":
        return log_value
    if kind == "product":
        return jnp.exp(log_value)
    return jnp.maximum(jnp.exp(log_value) - target, 0.0)


def top_level_bounds(model, input_shape, p) -> list[Bound]:
    """The certified bound of each top-level layer (:func:`liplax.nn.walk.top_level`), in
    order: the rows of :func:`layer_bounds` and of ``liplax.sweep.model_sweep``."""
    return [bound_of(node.layer, node.input_shape, p=p) for node in top_level(model, input_shape)]


_layer_bounds_jit = nnx.jit(top_level_bounds, static_argnums=(1, 2))


def layer_bounds(model, input_shape: Sequence[int], *, p=2) -> list[tuple[str, Bound]]:
    """The certified bound of each top-level layer of a sequential model, for reports."""
    check_p(p, "layer_bounds")
    names = [layer_name(node.layer) for node in top_level(model)]
    return list(zip(names, _layer_bounds_jit(model, static_shape(input_shape), p), strict=True))


__all__ = [
    "PENALTY_KINDS",
    "grouped_log_bound",
    "layer_bounds",
    "log_trivial_bound",
    "static_shape",
    "to_plain",
    "top_level_bounds",
    "trivial_bound",
    "trivial_bound_penalty",
]
