r"""``SinusoidalDense``: the bias-free sinusoidal layer x ↦ (cos xW, sin xW), output 2·out features.

A bias is not needed for expressivity: a·cos(θ + b) = (a cos b) cos θ − (a sin b) sin θ is
absorbed by the next linear layer (docs/design.md §activations; Kuang, Xu, Sivaranjani, Lin
2026, reconstructed).
Its Jacobian D = [−diag(sin θ) Wᵀ; diag(cos θ) Wᵀ] (θ = xW) satisfies ‖Dv‖₂ = ‖Wᵀv‖₂ for every x,
so the ℓ2 constant is exactly ‖W‖₂ **at every point**: the trivial bound is tight through it.

Other norms: the ℓ∞ gain is max_j max(|sin θ_j|, |cos θ_j|)·|(vW)_j| ≤ ‖W‖_{∞→∞}, attained at
x = 0 (exact). The ℓ1 gain Σ_j (|sin θ_j| + |cos θ_j|)|(vW)_j| is at most √2·‖W‖_{1→1}
(``upper``; all phases at π/4 at once is not reachable in general).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from liplax.guarantee import Bound
from liplax.nn.activations import CosSin, cos_sin
from liplax.nn.build import effective_kernel, plain_linear
from liplax.nn.dense import DenseBase, matrix_bound
from liplax.nn.registry import register_layer


def _example(rngs):
    return SinusoidalDense(3, 4, rngs=rngs), (3,)


@register_layer(example=_example, power="estimate")
class SinusoidalDense(DenseBase):
    """x ↦ (cos xW, sin xW): bias-free, output ``2·out_features`` (cos block first).

    Args:
      in_features, out_features: sizes (the output has ``2·out_features`` features).
      Other arguments as for :class:`~liplax.nn.Dense` (no ``use_bias``: the layer is bias-free).
    """

    def __init__(self, in_features: int, out_features: int, **kw):
        if kw.get("use_bias"):
            raise ValueError("SinusoidalDense: use_bias must be False (the layer is bias-free)")
        kw.pop("use_bias", None)
        super().__init__(in_features, out_features, use_bias=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return cos_sin(super().__call__(x))

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = super()._output_shape(shape)
        return (*shape[:-1], 2 * self.out_features)

    def to_plain(self):
        """``nnx.Sequential(nnx.Linear(W), CosSin())``."""
        return nnx.Sequential(plain_linear(effective_kernel(self), None), CosSin())

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: ‖W‖₂ (exact); ℓ∞: ‖W‖_{∞→∞} (exact); ℓ1: √2·‖W‖_{1→1} (upper)."""
        b = matrix_bound(self.kernel[...], p)
        if p == 1:
            return Bound(b.value * math.sqrt(2.0) * (1.0 + 1e-6), "upper")
        return b

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: one warm power-iteration step on W (``estimate``); else the certified bound."""
        if p != 2:
            return self._bound(shape, p)
        return Bound(self._power_sigma(self.kernel[...], update=True), "estimate")
