r"""Shape and scale layers with known constants: ``Flatten``, ``AvgPool``, ``MaxPool``, ``Scale``.

Pooling uses ``"VALID"`` windows on NHWC inputs. With window (kh, kw) and strides (sh, sw),
each input pixel lies in at most c = ⌈kh/sh⌉·⌈kw/sw⌉ windows (per channel). Constants:

- ``AvgPool``: each output is a mean, so ℓ∞ → 1 (exact). ℓ1: column sums ≤ c/(kh·kw).
  ℓ2 ≤ √(‖A‖₁‖A‖∞) = √(c/(kh·kw)) (Schur / Riesz–Thorin). Without overlap (s ≥ k) the rows
  have disjoint supports: exactly 1/(kh·kw) (ℓ1) and 1/√(kh·kw) (ℓ2).
- ``MaxPool``: the Jacobian selects one input per window: ℓ∞ → 1 (exact), ℓ1 ≤ c, ℓ2 ≤ √c;
  without overlap exactly 1 in every p.
- ``Scale(a)``: |a| in every p (exact). ``Flatten``: 1 in every p (exact).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from liplax._checks import finite_number, pair
from liplax.guarantee import Bound
from liplax.nn._base import LipschitzModule, const_bound
from liplax.nn.registry import register_layer


@register_layer(example=lambda rngs: (Flatten(), (3, 2, 2)))
class Flatten(LipschitzModule):
    """Flatten every axis after the first (batch) axis: (N, H, W, C) → (N, H·W·C). 1-Lipschitz."""

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 2:
            raise ValueError(f"Flatten: input needs a batch axis, got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(shape),)

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        return const_bound(1.0, "exact")


@register_layer(example=lambda rngs: (Scale(-2.5), (2, 3)))
class Scale(LipschitzModule):
    """x ↦ a·x for a fixed Python number ``a``: constant |a| in every p (exact)."""

    def __init__(self, factor: float):
        self.factor = finite_number(factor, "factor", "Scale")

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.factor

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        return const_bound(abs(self.factor), "exact")


class _Pool(LipschitzModule):
    def __init__(self, window, strides=None):
        name = type(self).__name__
        self.window = pair(window, "window", name)
        self.strides = self.window if strides is None else pair(strides, "strides", name)

    @property
    def overlap(self) -> int:
        (kh, kw), (sh, sw) = self.window, self.strides
        return math.ceil(kh / sh) * math.ceil(kw / sw)

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        name = self.layer_name
        if len(shape) != 3:
            raise ValueError(f"{name}: input_shape must be (H, W, C) for one example, got {shape}")
        out = []
        for n, k, s, axis in zip(shape[:2], self.window, self.strides, "HW", strict=True):
            if n < k:
                raise ValueError(f"{name}: input {axis}={n} is smaller than the window {k}")
            out.append((n - k) // s + 1)
        return (out[0], out[1], shape[2])

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"{self.layer_name}: input must be NHWC (rank 4), got {x.shape}")


@register_layer(example=lambda rngs: (AvgPool(2, strides=1), (3, 4, 2)))
class AvgPool(_Pool):
    """Average over ``window`` (int or pair) with ``strides`` (default: the window), VALID."""

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_input(x)
        return nnx.avg_pool(x, self.window, strides=self.strides, padding="VALID")

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        area, c = self.window[0] * self.window[1], self.overlap
        kind = "exact" if c == 1 else "upper"
        if p == math.inf:
            return const_bound(1.0, "exact")
        if p == 1:
            return const_bound(c / area, kind)
        return const_bound(math.sqrt(c / area), kind)


@register_layer(example=lambda rngs: (MaxPool((2, 3), strides=(2, 1)), (4, 4, 1)))
class MaxPool(_Pool):
    """Maximum over ``window`` (int or pair) with ``strides`` (default: the window), VALID."""

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_input(x)
        return nnx.max_pool(x, self.window, strides=self.strides, padding="VALID")

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        c = self.overlap
        kind = "exact" if c == 1 else "upper"
        if p == math.inf:
            return const_bound(1.0, "exact")
        if p == 1:
            return const_bound(float(c), kind)
        return const_bound(math.sqrt(c), kind)


__all__ = ["AvgPool", "Flatten", "MaxPool", "Scale"]
