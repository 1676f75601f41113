"""Tightness: how far an upper bound sits above the best lower bound found.

:func:`tightness_ratio` is the one definition (upper / lower, ≥ 1 for a valid upper bound, 1 when
tight); :func:`tightness` searches the lower bound on a model itself, and the training evaluation
and :func:`liplax.sweep.model_sweep` report the same ratio.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from liplax.certify.certificates import upper_value
from liplax.certify.lower_bound import LowerBound, lipschitz_lower_bound


def tightness_ratio(upper, lower) -> jax.Array:
    """upper / lower, elementwise: ≥ 1 for a valid upper bound and an attained lower bound.

    1 means tight. Where nothing was found (lower = 0) the ratio is inf, except for a constant
    map (upper = lower = 0), where the bound is exact and the ratio is 1; a nan in either, or
    both infinite, gives nan. The ratio over-states the looseness by however much ``lower`` falls
    short of the truth. Host numbers are divided in float64 (NumPy), JAX arrays and tracers in
    their own dtype (jit- and vmap-safe).
    """
    # NumPy (float64) for host numbers, as reports hold them; jax.numpy for arrays and tracers.
    xp = jnp if isinstance(upper, jax.Array) or isinstance(lower, jax.Array) else np
    upper, lower = xp.asarray(upper), xp.asarray(lower)
    dtype = xp.result_type(upper, lower, float)
    upper, lower = upper.astype(dtype), lower.astype(dtype)
    safe = xp.where(lower > 0, lower, 1)
    at_zero = xp.where(upper == 0, 1.0, xp.where(upper > 0, xp.inf, xp.nan))
    with np.errstate(over="ignore", invalid="ignore"):  # inf/inf is nan; overflow is inf
        ratio = xp.where(lower > 0, upper / safe, xp.where(lower == 0, at_zero, xp.nan))
    return ratio.astype(dtype)


class Tightness(NamedTuple):
    """``ratio`` = upper / lower.value (≥ 1 for a valid upper bound; 1 means tight)."""

    ratio: jax.Array
    upper: jax.Array
    lower: LowerBound

    def __repr__(self) -> str:
        # The witnesses are input-sized arrays: name their shape, never print them.
        point = getattr(self.lower.point, "shape", None)
        try:
            r, u, lo = float(self.ratio), float(self.upper), float(self.lower.value)
        except (TypeError, jax.errors.ConcretizationTypeError):  # traced: no values to show
            return f"Tightness(ratio, upper, lower; witness shape {point})"
        return (f"Tightness(ratio={r:.6g}, upper={u:.6g}, lower={lo:.6g}, "
                f"witness shape {point})")


def tightness(
    model, xs, upper=None, *, key: jax.Array, p: float | str = 2, batched: bool | None = None,
    **lower_kwargs,
) -> Tightness:
    """How loose an upper bound is on ``model``: upper / (best lower bound found near ``xs``).

    Args:
      model: a liplax/Flax NNX model (called on a batch, the Flax convention) or any callable
        of one example.
      xs: ``(n, ...)`` data points to start the search from.
      upper: the upper bound under test: a :class:`Bound` of kind ``exact``/``upper`` or a plain
        number. ``None`` (default): the model's trivial bound,
        ``liplax.bounds.trivial_bound(model, xs.shape[1:], p=p)`` (a liplax model). An
        ``estimate`` is refused.
      batched: whether ``model`` takes a leading batch axis. ``None`` (default): yes for an
        ``nnx.Module`` (its layers, ``Flatten`` first among them, expect one), no for any other
        callable. Passed on to :func:`lipschitz_lower_bound`.
      key, p, lower_kwargs: passed to :func:`lipschitz_lower_bound`.

    Returns:
      :class:`Tightness` with the ratio, the upper value and the lower-bound witnesses. The ratio
      over-states the looseness by however much the lower bound falls short of the truth.
    """
    from flax import nnx

    if batched is None:
        batched = isinstance(model, nnx.Module)
    if upper is None and not isinstance(model, nnx.Module):
        raise TypeError(
            f"tightness: upper=None takes the trivial bound of a liplax model, but model is a "
            f"{type(model).__name__}; pass upper= (a Bound or a number) for a plain callable"
        )
    if upper is None:
        from liplax.bounds import trivial_bound  # imported on use: only this default needs it

        upper = trivial_bound(model, xs.shape[1:], p=p)
    up = upper_value(upper, "upper")
    lower = lipschitz_lower_bound(model, xs, key=key, p=p, batched=batched, **lower_kwargs)
    return Tightness(ratio=tightness_ratio(up, lower.value), upper=up, lower=lower)


__all__ = ["Tightness", "tightness", "tightness_ratio"]
