r"""The layer registry: a layer class becomes known to liplax by one ``@register_layer`` line.

Registration records, for **exactly** the decorated class (a subclass is not registered by its
parent's entry, since it may change the map or the estimate):

- ``example(rngs) -> (layer, input_shape)``: a small instance, which the contract test
  (``tests/test_layer_contract.py``) checks against the float64 Jacobian of the layer for every
  p it supports, and for its shape, jit/vmap, ``eval()`` and ``to_plain`` behaviour;
- ``power``: whether :mod:`liplax.grouped` may batch the layer's warm power step with those of
  same-shape layers: ``"estimate"`` (the step is the layer's ℓ2 penalty value,
  ``lipschitz_estimate``), ``"forward"`` (the step is the training-mode normalization of its
  forward pass) or ``None``. A layer with a power role implements the hooks ``power_key`` and
  ``power_step`` of :class:`~liplax.nn.LipschitzModule`;
- export: :func:`liplax.nn.to_plain` calls the layer's ``to_plain()`` hook for registered classes
  and clones anything else (the same module computes the same function).

Plain flax layers are not registered here: :func:`liplax.nn.plain.register_plain_layer` binds an
adapter to an exact flax type (docs/design.md §layer contract).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

PowerRole = Literal["estimate", "forward"]


class LayerEntry(NamedTuple):
    """What registration knows about one layer class (see the module docstring)."""

    cls: type
    example: Callable
    power: PowerRole | None


_LAYERS: dict[type, LayerEntry] = {}


def register_layer(*, example: Callable, power: PowerRole | None = None) -> Callable[[type], type]:
    """Class decorator: register a liplax layer class (exactly that class).

    Args:
      example: ``example(rngs: nnx.Rngs) -> (layer, input_shape)``, a small instance and the
        per-example input shape it is checked on.
      power: ``"estimate"``, ``"forward"`` or None (see the module docstring).
    """
    if not callable(example):
        raise TypeError(f"register_layer: example must be callable, got {example!r}")
    if power not in (None, "estimate", "forward"):
        raise ValueError(
            f"register_layer: power must be None, 'estimate' or 'forward', got {power!r}"
        )

    def register(cls: type) -> type:
        if not isinstance(cls, type):
            raise TypeError(f"register_layer: decorates a class, got {cls!r}")
        _LAYERS[cls] = LayerEntry(cls, example, power)
        return cls

    return register


def entry(layer) -> LayerEntry | None:
    """The registration of ``type(layer)`` (exact type), or None."""
    return _LAYERS.get(type(layer))


def registered() -> tuple[LayerEntry, ...]:
    """All registered layer classes, in registration order."""
    return tuple(_LAYERS.values())


__all__ = ["LayerEntry", "PowerRole", "entry", "register_layer", "registered"]
