"""``ScaledIdentity``: x ↦ scale·x, the worked example of "Adding a layer" in CONTRIBUTING.md.

The Jacobian is scale·I at every x, whose induced ℓp norm is |scale| for every p and every input
shape: the Lipschitz constant is |scale|, ``exact`` (docs/design.md §layer contract). The layer
declares its output shape and its bound; the template of :class:`~liplax.nn.LipschitzModule`
checks p and the shape, and the registration line makes the contract test
(``tests/test_layer_contract.py``) check it against its float64 Jacobian.
"""

from __future__ import annotations

import jax

from liplax._checks import finite_number
from liplax.guarantee import Bound
from liplax.nn._base import LipschitzModule, const_bound
from liplax.nn.registry import register_layer


@register_layer(example=lambda rngs: (ScaledIdentity(-1.5), (2, 3)))
class ScaledIdentity(LipschitzModule):
    """x ↦ scale·x for a fixed finite number ``scale``: Lipschitz constant |scale| in every ℓp."""

    def __init__(self, scale: float):
        self.scale = finite_number(scale, "scale", "ScaledIdentity")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale * x

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape  # the per-example shape, already checked by the template

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        return const_bound(abs(self.scale), "exact")  # ‖scale·I‖_p = |scale|
