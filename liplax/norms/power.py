r"""Power iteration on the real operator: an ``estimate`` of ‖A‖₂ from below, with warm state.

v ← AᵀAv/‖AᵀAv‖ with A the operator itself and Aᵀ its transpose (for a convolution the linear
transpose of the layer, so every stride and padding is the true layer), then σ̂ = ‖Av‖ ≤ σ₁ for
a unit v: the estimate approaches the norm **from below** and is never a certificate. Pass the
returned vector back as ``u`` to warm-start (one step per training step suffices when the
weights move slowly; Miyato et al., *Spectral Normalization for GANs*, ICLR 2018; Ryu et al.,
ICML 2019 for convolutions). ``docs/design.md §norms``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax.guarantee import guarantee
from liplax.norms.operator import LinearOperator
from liplax.norms.scaling import scale, unscale


def normalize(v: jax.Array) -> jax.Array:
    """v/‖v‖₂ (over all axes), leaving a zero vector at zero."""
    nrm = jnp.sqrt(jnp.sum(v * v))
    return v / jnp.where(nrm > 0, nrm, jnp.ones_like(nrm))


def init_vector(shape: tuple[int, ...], dtype, u: jax.Array | None, key: jax.Array | None,
                name: str = "u") -> jax.Array:
    """The starting vector of a power iteration: ``u`` if given, else a normal draw from ``key``."""
    if u is None:
        if key is None:
            raise ValueError(
                f"power_iteration needs a starting vector {name} or a PRNG key (key=...), "
                "got neither"
            )
        return normalize(jax.random.normal(key, shape, dtype))
    u = _checks.float_array(u, name)
    if u.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the input space), got {u.shape}")
    return u.astype(dtype)


def power_iteration_op(apply, apply_t, v0: jax.Array, num_iters: int) -> jax.Array:
    """The unit vector after ``num_iters`` steps v ← AᵀAv/‖AᵀAv‖ (no gradient flows through it)."""

    def body(_, v):
        return normalize(apply_t(apply(v)))

    return lax.stop_gradient(lax.fori_loop(0, num_iters, body, normalize(v0)))


@guarantee(dense="estimate", conv="estimate")
def power_iteration(
    op: LinearOperator,
    u: jax.Array | None = None,
    *,
    num_iters: int = 20,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Estimate of ‖A‖₂ by power iteration on AᵀA, with warm state.

    The operator is first scaled by an exact power of two (:mod:`liplax.norms.scaling`), so
    subnormal and near-overflow parameters neither flush nor overflow. Gradient: the vector is
    held fixed (stop-gradient), so ∂σ̂/∂A = (Av/σ̂)vᵀ, the gradient of σ₁ at convergence; no
    backpropagation through the loop.

    Guarantee: ``estimate`` (σ̂ ≤ σ₁ up to rounding). Reference: Miyato et al., ICLR 2018.

    Args:
      op: the operator.
      u: the previous unit vector in the input space, shape ``op.in_shape``; or ``None`` with
        ``key``.
      num_iters: number of steps (static).
      key: PRNG key for a random start when ``u`` is ``None``.
    Returns:
      ``(estimate, v)``: the estimate (a :class:`~liplax.guarantee.Bound`) and the unit vector
      to warm-start from.
    """
    num_iters = _checks.num_iters(num_iters, "num_iters")
    v0 = init_vector(op.in_shape, op.dtype, u, key)
    sc = scale(op.array)
    fixed = op.replace(lax.stop_gradient(sc.x))
    v = power_iteration_op(*fixed.power_maps(), v0, num_iters)
    y = op.replace(sc.x).apply(v)
    return unscale(jnp.sqrt(jnp.sum(y * y)), sc), v
