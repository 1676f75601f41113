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

from liplax.guarantee import Bound
from liplax.nn._base import LipschitzModule, const_bound, pair, shape_tuple


class Flatten(LipschitzModule):
    """Flatten every axis after the first (batch) axis: (N, H, W, C) → (N, H·W·C). 1-Lipschitz."""

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 2:
            raise ValueError(f"Flatten: input needs a batch axis, got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    def output_shape(self, input_shape) -> tuple[int, ...]:
        return (math.prod(shape_tuple(input_shape, "Flatten")),)

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        self._p(p)
        self.output_shape(input_shape)
        return const_bound(1.0, "exact")


class Scale(LipschitzModule):
    """x ↦ a·x for a fixed Python number ``a``: constant |a| in every p (exact)."""

    def __init__(self, factor: float):
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(
            factor
        ):
            raise ValueError(f"Scale: factor must be a finite Python number, got {factor!r}")
        self.factor = float(factor)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.factor

    def output_shape(self, input_shape) -> tuple[int, ...]:
        return shape_tuple(input_shape, "Scale")

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        self._p(p)
        self.output_shape(input_shape)
        return const_bound(abs(self.factor), "exact")


class _Pool(LipschitzModule):
    def __init__(self, window, strides=None):
        name = type(self).__name__
        self.window = pair(window, name, "window")
        self.strides = self.window if strides is None else pair(strides, name, "strides")

    @property
    def overlap(self) -> int:
        (kh, kw), (sh, sw) = self.window, self.strides
        return math.ceil(kh / sh) * math.ceil(kw / sw)

    def output_shape(self, input_shape) -> tuple[int, ...]:
        name = self.layer_name
        shape = shape_tuple(input_shape, name)
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


class AvgPool(_Pool):
    """Average over ``window`` (int or pair) with ``strides`` (default: the window), VALID."""

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_input(x)
        return nnx.avg_pool(x, self.window, strides=self.strides, padding="VALID")

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        p = self._p(p)
        self.output_shape(input_shape)
        area, c = self.window[0] * self.window[1], self.overlap
        kind = "exact" if c == 1 else "upper"
        if p == math.inf:
            return const_bound(1.0, "exact")
        if p == 1:
            return const_bound(c / area, kind)
        return const_bound(math.sqrt(c / area), kind)


class MaxPool(_Pool):
    """Maximum over ``window`` (int or pair) with ``strides`` (default: the window), VALID."""

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_input(x)
        return nnx.max_pool(x, self.window, strides=self.strides, padding="VALID")

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        p = self._p(p)
        self.output_shape(input_shape)
        c = self.overlap
        kind = "exact" if c == 1 else "upper"
        if p == math.inf:
            return const_bound(1.0, "exact")
        if p == 1:
            return const_bound(float(c), kind)
        return const_bound(math.sqrt(c), kind)


__all__ = ["AvgPool", "Flatten", "MaxPool", "Scale"]
