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


def project_l1_ball(w: jax.Array, radius: float = 1.0, axis: int = 0) -> jax.Array:
    """Euclidean projection of every slice of ``w`` along ``axis`` onto {v : ‖v‖₁ ≤ radius}.

    θ = (Σ_{k≤ρ} μ_k − r)/ρ with μ the sorted |v| (descending) and ρ the largest index with
    μ_ρ > (Σ_{k≤ρ} μ_k − r)/ρ; the projection is sign(v)·max(|v| − θ, 0) (Duchi et al. 2008).
    """
    v = jnp.moveaxis(w, axis, -1)
    a = jnp.abs(v)
    mu = -jnp.sort(-a, axis=-1)
    css = jnp.cumsum(mu, axis=-1)
    idx = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    cond = mu - (css - radius) / idx > 0
    rho = jnp.sum(cond, axis=-1, keepdims=True)  # ≥ 1 when ‖v‖₁ > r
    css_rho = jnp.take_along_axis(css, jnp.maximum(rho - 1, 0), axis=-1)
    theta = jnp.maximum((css_rho - radius) / jnp.maximum(rho, 1).astype(v.dtype), 0.0)
    inside = jnp.sum(a, axis=-1, keepdims=True) <= radius
    proj = jnp.where(inside, v, jnp.sign(v) * jnp.maximum(a - theta, 0.0))
    return jnp.moveaxis(proj, -1, axis)


class LinfDense(DenseBase):
    """x ↦ x·Π(W) (+ b), every column of W projected onto the unit ℓ1 ball: ‖·‖_{∞→∞} ≤ 1.

    Arguments as for :class:`~liplax.nn.Dense`.
    """

    def effective_kernel(self) -> jax.Array:
        return project_l1_ball(self.kernel[...], 1.0, axis=0)
