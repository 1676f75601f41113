r"""Containers that compose bounds: ``Sequential`` (a product) and ``Residual`` (1 + Lip(g)).

Lip(f_L ∘ … ∘ f_1) ≤ Π_l Lip(f_l), and Lip(x ↦ x + g(x)) ≤ 1 + Lip(g) (triangle inequality).
Both are ``upper`` when every factor is ``exact`` or ``upper`` and ``estimate`` otherwise
(docs/design.md §composition). Their bounds and shapes are folds of the one model walk
(:mod:`liplax.nn.walk`); a shape mismatch raises ``ValueError`` naming the container, the
layer's index and type.

:func:`bound_of`, :func:`output_shape_of` and :func:`log_bound_of` (from :mod:`liplax.nn.walk`)
also accept plain ``nnx.Linear``/``nnx.Conv``/``nnx.Sequential`` (what
:func:`liplax.nn.to_plain` produces).
"""

from __future__ import annotations

import jax
from flax import nnx

from liplax.guarantee import Bound
from liplax.nn._base import LipschitzModule
from liplax.nn.registry import register_layer
from liplax.nn.walk import bound_of, check_layer, layer_name, log_bound_of, output_shape_of


def _example_sequential(rngs: nnx.Rngs):
    from liplax.nn.activations import MaxMin
    from liplax.nn.dense import Dense

    return Sequential(Dense(3, 4, rngs=rngs), MaxMin(), Dense(4, 2, rngs=rngs)), (3,)


def _example_residual(rngs: nnx.Rngs):
    from liplax.nn.dense import Dense

    return Residual(Dense(3, 3, rngs=rngs)), (3,)


class Container(LipschitzModule):
    """What both containers declare: their shape and bounds are folds of the model walk."""

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return output_shape_of(self, shape)

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """Π_l of the certified factors, 1 + Lip(g) for a residual (``upper`` if all are
        certified)."""
        return bound_of(self, shape, p=p)

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        """The same with the layers' fast (penalty) values; moves power-iteration state in
        training mode."""
        return bound_of(self, shape, p=p, fast=True)


@register_layer(example=_example_sequential)
class Sequential(Container):
    """Apply layers in order; the bound is the product of the layers' bounds.

    Args:
      *layers: liplax layers or containers (or plain ``nnx.Linear``/``nnx.Conv``/``nnx.relu``).
    """

    container = "sequential"

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            check_layer(layer, f"Sequential layer {i}")
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x


@register_layer(example=_example_residual)
class Residual(Container):
    """x ↦ x + g(x); bound 1 + Lip(g). ``g`` must keep the per-example shape."""

    container = "residual"

    def __init__(self, inner):
        check_layer(inner, "Residual inner")
        self.inner = inner

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.inner(x)
        if y.shape != x.shape:
            raise ValueError(
                f"Residual: inner layer ({layer_name(self.inner)}) maps shape {tuple(x.shape)} to "
                f"{tuple(y.shape)}; a residual branch must keep the shape"
            )
        return x + y


__all__ = ["Residual", "Sequential", "bound_of", "log_bound_of", "output_shape_of"]
