r"""``LinfDense``: a dense layer whose ℓ∞→ℓ∞ norm is at most 1 by projection onto the ℓ1 ball.

For x ↦ x W with W of shape ``(in, out)``, ‖W‖_{∞→∞} = max_j Σ_i |W_ij|: the ℓ1 norm of each
column W[:, j] (the weights feeding output j; the "rows" of the column-vector matrix Wᵀ). Each
column is Euclidean-projected onto the unit ℓ1 ball (Duchi, Shalev-Shwartz, Singer, Chandra,
ICML 2008: soft-thresholding at the θ found by sorting), as Anil, Lucas, Grosse (ICML 2019) do for
ℓ∞-Lipschitz networks. Columns already inside the ball are unchanged. The certificate is the
exact ℓ∞ norm of the projected weight actually applied (≤ 1 up to rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liplax.nn.dense import DenseBase
from liplax.nn.registry import register_layer


def project_l1_ball(w: jax.Array, radius: float = 1.0, axis: int = 0) -> jax.Array:
    r"""Euclidean projection of every slice of ``w`` along ``axis`` onto {v : ‖v‖₁ ≤ radius}.

    With μ the sorted |v| (descending), the projection is sign(v)·max(|v| − θ, 0) where
    θ = (Σ_{k≤ρ} μ_k − r)/ρ and ρ is the largest index with μ_ρ > θ_ρ (Duchi et al. 2008).
    Written in the gaps D_k = μ₁ − μ_k to the largest magnitude, the test is
    Σ_{k≤j}(D_j − D_k) < r and the result is max(t − D_i, 0) with t = (Σ_{k≤ρ} D_k + r)/ρ:
    both are differences of quantities of order r, never of order μ₁, so weights of 1e8 or
    1e30 project as accurately as weights of 1 (the textbook form subtracts θ ≈ μ₁ from |v|
    and rounds everything to 0 once ulp(μ₁) > r). In the support the gaps are exact
    (Sterbenz: μ_i > μ₁ − r ≥ μ₁/2 once μ₁ ≥ 2r). Slices already inside the ball are returned
    unchanged; NaN or infinite entries give NaN in their slice.
    """
    v = jnp.moveaxis(w, axis, -1)
    a = jnp.abs(v)
    mu = -jnp.sort(-a, axis=-1)
    top = mu[..., :1]
    gaps = top - mu  # D_k ≥ 0, D_1 = 0
    cgaps = jnp.cumsum(gaps, axis=-1)
    idx = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    cond = idx * gaps - cgaps < radius  # true for j = 1; a prefix in exact arithmetic
    rho = jnp.sum(jnp.cumprod(cond, axis=-1), axis=-1, keepdims=True)
    c_rho = jnp.take_along_axis(cgaps, jnp.maximum(rho - 1, 0), axis=-1)
    t = (c_rho + radius) / jnp.maximum(rho, 1).astype(v.dtype)
    inside = jnp.sum(a, axis=-1, keepdims=True) <= radius
    proj = jnp.sign(v) * jnp.maximum(t - (top - a), 0.0)
    return jnp.moveaxis(jnp.where(inside, v, proj), -1, axis)


def _example(rngs):
    return LinfDense(3, 4, use_bias=True, rngs=rngs), (3,)


@register_layer(example=_example)
class LinfDense(DenseBase):
    """x ↦ x·Π(W) (+ b), every column of W projected onto the unit ℓ1 ball: ‖·‖_{∞→∞} ≤ 1.

    Arguments as for :class:`~liplax.nn.Dense`.
    """

    def effective_kernel(self) -> jax.Array:
        return project_l1_ball(self.kernel[...], 1.0, axis=0)
