r"""The values the walker tracks, and sound arithmetic on Lipschitz bounds.

Each variable of the jaxpr is one of:

- :class:`Const`: it does not depend on the input; its value is known (an array, or a tracer
  of the caller's trace when the parameters are traced, e.g. inside a training step);
- :class:`Dep`: it depends on the input x, and L(x ↦ v) ≤ Π of ``factors`` in ℓp → ℓp (a chain
  of factors, kept unmultiplied so that a chain of layers gives exactly the product that
  :func:`liplax.guarantee.compose` forms for the layer-based bound);
- :class:`Taint`: it depends on the input through a discontinuous or integer-valued map
  (comparison, ``sign``, ``floor``, ``argmax``, conversion to an integer): no Lipschitz bound
  exists, and any arithmetic that uses it is refused.

Rounding (docs/design.md §guarantee): a chain is multiplied by :func:`compose` (rounded up by
its product margin). Where chains meet (a sum, a p-norm combination, a maximum) each chain is
first *materialized* as a sound upper value (an ``exact`` single factor is raised by twice the
exact margin, :func:`liplax.guarantee.exact_margin`) and the sum or norm is rounded up by
2γ_{n+4} (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1, §4.2: a sum of n
non-negative terms is computed within γ_{n−1}, a square root and a division within u each).
Non-finite values propagate: inf stays inf, NaN stays NaN (certification refuses both).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from liplax.guarantee import Bound, compose, exact_margin, gamma, round_up_product


@dataclasses.dataclass(frozen=True)
class Const:
    """A value that does not depend on the input."""

    value: Any


@dataclasses.dataclass(frozen=True)
class Dep:
    """An input-dependent value with L ≤ Π ``factors`` (``()``: the identity, L ≤ 1)."""

    factors: tuple[Bound, ...] = ()


@dataclasses.dataclass(frozen=True)
class Taint:
    """An input-dependent value without a Lipschitz bound; ``origin`` says where it came from."""

    origin: str


def bound_dtype():
    """The dtype of the bounds: float32, or float64 when x64 is enabled."""
    return jnp.result_type(float)


def times(v: Dep, factor: Bound) -> Dep:
    """v's chain followed by a map of constant ``factor``."""
    return Dep((*v.factors, factor))


def to_bound(v: Dep) -> Bound:
    """The chain's product as a ``Bound`` (exact 1 for the identity)."""
    if not v.factors:
        return Bound(jnp.ones((), bound_dtype()), "exact")
    return compose(v.factors)


def upper_value(v: Dep) -> jax.Array:
    """A value ≥ the true constant of the chain (an ``exact`` result is raised by its margin)."""
    b = to_bound(v)
    value = jnp.asarray(b.value, bound_dtype())
    if b.kind == "exact":
        if not v.factors:
            return value
        return round_up_product([value], margin=2.0 * exact_margin(value.dtype))
    return value


def _rounded(value: jax.Array, n: int) -> jax.Array:
    return round_up_product([value], margin=2.0 * gamma(n + 4, value.dtype))


def upper(value: jax.Array) -> Dep:
    """A chain of one already-sound ``upper`` value."""
    return Dep((Bound(jnp.asarray(value, bound_dtype()), "upper"),))


def dep_sum(parts: list[Dep]) -> Dep:
    """L(u₁ + … + u_n) ≤ Σ L(u_i) (triangle inequality), rounded up."""
    if len(parts) == 1:
        return parts[0]
    values = jnp.stack([upper_value(v) for v in parts])
    return upper(_rounded(jnp.sum(values), len(parts)))


def dep_pnorm(parts: list[Dep], p: float) -> Dep:
    r"""(Σ_i L_i^p)^{1/p} (max_i L_i for p = ∞), rounded up.

    Bounds any map whose output's ℓp norm of a difference is at most (Σ_i ‖Δu_i‖_p^p)^{1/p}:
    a concatenation of the u_i, an entrywise maximum of two of them, a selection with a constant
    predicate. Computed as m·(Σ (L_i/m)^p)^{1/p}, m = max L_i, so it neither overflows nor
    underflows; p = 2 takes a square root (one more rounding, inside the margin)."""
    if len(parts) == 1:
        return parts[0]
    values = jnp.stack([upper_value(v) for v in parts])
    m = jnp.max(values)
    if p == math.inf:
        return upper(m)
    safe = jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m))
    r = values / safe
    s = jnp.sum(r) if p == 1 else jnp.sqrt(jnp.sum(r * r))
    value = jnp.where((m > 0) & jnp.isfinite(m), safe * s, m)
    value = jnp.where(jnp.any(jnp.isnan(values)), jnp.nan, value)
    return upper(_rounded(value, len(parts)))


def dep_max(parts: list[Dep]) -> Dep:
    """max_i L_i: the bound of a map that is one of the u_i (a branch chosen by a constant)."""
    if len(parts) == 1:
        return parts[0]
    values = jnp.stack([upper_value(v) for v in parts])
    value = jnp.where(jnp.any(jnp.isnan(values)), jnp.nan, jnp.max(values))
    return upper(value)


def constant_factor(value: float, kind: str = "exact") -> Bound:
    """A Python constant as a factor; an ``upper`` one is rounded up to the bound dtype."""
    import numpy as np

    dtype = np.dtype(bound_dtype())
    v = dtype.type(value)
    if kind == "upper" and float(v) < value:
        v = np.nextafter(v, dtype.type(np.inf))
    return Bound(jnp.asarray(v, dtype), kind)


def root_factor(m: int, p: float, *, power: str = "1/p") -> Bound:
    """m^{1/p} (``power="1/p"``) or m^{1−1/p} (``"1-1/p"``), exactly 1 or m where p allows it,
    otherwise rounded up (``upper``): the factor of copying or summing m entries."""
    if m < 1:
        raise ValueError(f"root_factor: m must be ≥ 1, got {m}")
    e = (1.0 / p) if power == "1/p" else (1.0 - 1.0 / p)
    if e == 0.0 or m == 1:
        return constant_factor(1.0)
    if e == 1.0:
        return constant_factor(float(m), "exact" if m < 2**24 else "upper")
    value = math.sqrt(m) if e == 0.5 else m**e
    return constant_factor(value * (1.0 + 4e-16), "upper")
