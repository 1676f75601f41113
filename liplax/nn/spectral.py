r"""Spectrally normalized layers: the weight divided by a power-iteration estimate of its norm.

``SpectralDense`` applies x ↦ x W/σ̂ and ``SpectralConv`` x ↦ (k/σ̂) ⋆ x, where σ̂ = ‖A u‖ for the
warm-started unit vector u held in a :class:`~liplax.nn.PowerIterState` (Miyato, Kataoka, Koyama,
Yoshida, *Spectral Normalization for GANs*, ICLR 2018). For ``SpectralConv`` the power iteration
runs on the real operator (the layer's own padding and stride, DESIGN.md §4).

- Training mode (``deterministic=False``): each call does ``power_iters`` steps from the stored
  u, stores the new u and divides by σ̂ (gradient through σ̂ with u held fixed).
- Inference mode (``model.eval()``): σ̂ = ‖A u‖ from the stored u; nothing moves.
- The parameters are never written; the normalization is recomputed from them at every call.

Because σ̂ ≤ σ₁ (an estimate from below), the layer's true constant is σ₁/σ̂ ≥ 1, close to 1
once u has converged. :meth:`lipschitz_bound` certifies it on the effective weight W/σ̂ (the
inference-mode map): exact SVD (dense), exact FFT or Gram upper bound (conv), and the exact or
upper ℓ1/ℓ∞ norms. :meth:`lipschitz_estimate` (the penalty's fast path) returns 1 for ℓ2: the
normalized layer has nothing to penalize.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from liplax import linalg
from liplax.guarantee import Bound
from liplax.nn._base import check_p, const_bound, shape_tuple
from liplax.nn.conv import ConvBase, conv_bound
from liplax.nn.dense import DenseBase, check_method, matrix_bound


def _unit(v: jax.Array) -> jax.Array:
    return lax.stop_gradient(linalg.normalize(v))


def _normalized(w: jax.Array, sigma: jax.Array) -> jax.Array:
    """w/σ̂, and w itself where σ̂ = 0 (a zero operator, or u orthogonal to it: 0/0 would be
    NaN; the certificate is always of the weight actually applied)."""
    pos = sigma > 0
    return w / jnp.where(pos, sigma, jnp.ones_like(sigma))


class _SpectralNormalized:
    """What both spectral layers share: the applied kernel k/σ̂ (σ̂ stepped in training mode
    only) and the penalty's ℓ2 value 1 (a normalized layer has nothing to penalize)."""

    def effective_kernel(self) -> jax.Array:
        return _normalized(self.kernel[...], self.sigma(update=False))

    def _forward_kernel(self) -> jax.Array:
        return _normalized(self.kernel[...], self.sigma(update=True))

    def lipschitz_estimate(self, input_shape, *, p=2) -> Bound:
        p = check_p(p, f"{self.layer_name}.lipschitz_estimate")
        if p != 2:
            return self.lipschitz_bound(input_shape, p=p)
        self.output_shape(input_shape)
        return const_bound(1.0, "estimate")


class SpectralDense(_SpectralNormalized, DenseBase):
    """x ↦ x W/σ̂ (+ b), σ̂ a warm power-iteration estimate of ‖W‖₂ (see the module docstring).

    Args:
      power_iters: power-iteration steps per training-mode call (1 with a warm start).
      method: ``"exact"`` (SVD) or ``"gram"`` (Gram upper bound) for the ℓ2 certificate.
      Other arguments as for :class:`~liplax.nn.Dense`.
    """

    def __init__(self, in_features: int, out_features: int, *, method: str = "exact", **kw):
        super().__init__(in_features, out_features, **kw)
        self.method = check_method(method, "SpectralDense")

    def sigma(self, *, update: bool = False) -> jax.Array:
        """σ̂ = ‖u W‖ for the stored u (``update=True`` in training mode steps and stores u)."""
        w = self.kernel[...]
        if update and not self.deterministic:
            return self._power_sigma(w, update=True)
        c = linalg.pow2_scale(w)  # exact: ‖u W‖ = c‖u W/c‖ without under/overflow at 1e∓30
        return c * jnp.linalg.norm(_unit(self.power_state[...]) @ (w / c))

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        """Certified ℓp norm of the effective weight W/σ̂ (≈ 1 for p=2 once u has converged)."""
        p = self._p(p)
        self.output_shape(input_shape)
        return matrix_bound(self.effective_kernel(), p, method=self.method)


class SpectralConv(_SpectralNormalized, ConvBase):
    """x ↦ (k/σ̂) ⋆ x (+ b), σ̂ a warm power iteration on the real convolution operator.

    Arguments as for :class:`~liplax.nn.Conv`; ``input_size`` is the size σ̂ is computed for.
    """

    def sigma(self, *, update: bool = False) -> jax.Array:
        """σ̂ = ‖A u‖ for the stored u (``update=True`` in training mode steps and stores u)."""
        k = self.kernel[...]
        if update and not self.deterministic:
            return self._power_sigma(k, update=True)
        c = linalg.pow2_scale(k)  # exact power of two, as in SpectralDense.sigma
        return c * jnp.linalg.norm(self._apply_single(k / c, _unit(self.power_state[...])))

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        """Certified ℓp constant of the effective kernel on ``input_shape`` = (H, W, C)."""
        p = self._p(p)
        self.output_shape(input_shape)
        hw = shape_tuple(input_shape, self.layer_name)[:2]
        return conv_bound(
            self.effective_kernel(), hw, p, strides=self.strides, padding=self.padding
        )
