"""The guarantee vocabulary: every bound says what it is.

- ``"exact"``: the quantity itself, up to floating-point rounding (each function documents its
  rounding error).
- ``"upper"``: never below the truth, rounding included (Gram iteration, products of upper
  bounds, LipSDP, LiPopt).
- ``"estimate"``: may be below the truth (power iteration, gradient-ascent lower bounds).

A :class:`Bound` is a pytree whose ``value`` is an array leaf and whose ``kind`` is static
metadata, so it passes through ``jax.jit``/``jax.vmap`` unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Literal

import jax
import jax.numpy as jnp

Kind = Literal["exact", "upper", "estimate"]
KINDS: tuple[str, ...] = ("exact", "upper", "estimate")
CERTIFIED_KINDS: tuple[str, ...] = ("exact", "upper")


@dataclasses.dataclass(frozen=True)
class Bound:
    """A Lipschitz constant or operator norm together with its guarantee.

    Attributes:
      value: a scalar (or batched) array.
      kind: ``"exact"``, ``"upper"`` or ``"estimate"``.
    """

    value: jax.Array
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Bound kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def certified(self) -> bool:
        """Whether this bound may be used in a certificate (``exact`` or ``upper``)."""
        return self.kind in CERTIFIED_KINDS

    def __mul__(self, other: Bound) -> Bound:
        """Product of two layer constants: a bound on the composition (Lip(f∘g) ≤ Lip(f)Lip(g))."""
        if not isinstance(other, Bound):
            return NotImplemented
        return compose([self, other])

    def __float__(self) -> float:
        return float(self.value)


jax.tree_util.register_dataclass(Bound, data_fields=["value"], meta_fields=["kind"])


def compose_kind(kinds: Iterable[str]) -> str:
    """Kind of a product of layer constants bounding a composition.

    The product is ``upper`` when every factor is ``exact`` or ``upper`` (the product of exact
    layer constants bounds, but in general does not equal, the constant of the composition), and
    ``estimate`` as soon as one factor is an estimate. A single factor keeps its kind.
    """
    kinds = list(kinds)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown bound kind {k!r}; expected one of {KINDS}")
    if not kinds:
        return "exact"  # the empty product: the identity map, constant 1.
    if "estimate" in kinds:
        return "estimate"
    if len(kinds) == 1:
        return kinds[0]
    return "upper"


EXACT_ULPS = 64
"""Rounding margin of an ``exact`` value, in units of roundoff u of its dtype, assumed by
:func:`compose`: a computed exact constant v̂ of a true constant v has v̂ ≥ (1 − 64u)·v
(float32: 3.8e-6). An assumption, not a theorem: a backward-stable SVD and an n-term abs-sum
are observed far inside it (errors ~√n·u; tests/test_fuzz_networks.py checks tight rank-1
chains), but the worst-case bound γ_n of a sum exceeds it past n ≈ 64 terms."""


def exact_margin(dtype) -> float:
    """Relative margin EXACT_ULPS·u by which an ``exact`` value may sit below the truth."""
    return EXACT_ULPS * unit_roundoff(dtype)


def product_margin(kinds: Iterable[str], dtype) -> float:
    """Relative margin M such that fl(Π v̂_l)·(1 + M), rounded once more, is ≥ Π v_l.

    Each ``exact`` factor may be low by exact_margin, each product rounds by ≤ u; to first
    order the loss is Σ_exact m + (L + 1)·u, doubled to cover the second-order terms."""
    kinds = list(kinds)
    u = unit_roundoff(dtype)
    m = exact_margin(dtype)
    return 2.0 * (sum(m for k in kinds if k == "exact") + (len(kinds) + 1) * u)


def compose(bounds: Iterable[Bound]) -> Bound:
    """Bound of a composition f_L ∘ … ∘ f_1 from the bounds of its factors: Π_l Lip(f_l).

    With two or more factors the product is rounded up by :func:`product_margin` so that it
    stays ≥ the composition's constant even when the factors are tight (e.g. a chain of
    rank-1 layers whose singular directions line up, where Π‖W_l‖ = ‖W_L⋯W_1‖) and carry the
    rounding of ``exact`` values and of the products. A single factor is returned as is; a
    product beyond the dtype's range is inf (or a wrong 0 for a tiny one: none below tiny)."""
    bounds = list(bounds)
    # Mantissas multiply and exponents add, so partial products neither overflow nor flush to 0
    # (1e30·1e30·1e-30 is 1e30, not inf); the rounding is that of the plain product.
    mantissa, exponent = jnp.asarray(1.0), jnp.asarray(0, jnp.int32)
    for b in bounds:
        m, e = jnp.frexp(mantissa * b.value)
        mantissa, exponent = m, exponent + e
    value = jnp.ldexp(mantissa, exponent)
    kind = compose_kind(b.kind for b in bounds)
    if len(bounds) > 1 and kind != "estimate":
        dtype = jnp.result_type(value)
        value = value * (1.0 + product_margin([b.kind for b in bounds], dtype))
    return Bound(value, kind)


def require_certified(bound: Bound, *, name: str = "bound") -> Bound:
    """Return ``bound`` if it may be used in a certificate, else raise ``ValueError``."""
    if not isinstance(bound, Bound):
        raise TypeError(f"{name} must be a liplax Bound, got {type(bound).__name__}")
    if not bound.certified:
        raise ValueError(
            f"{name} is of kind {bound.kind!r}: a certificate needs an 'exact' or 'upper' bound, "
            "never an estimate (power iteration and lower bounds can be below the truth)"
        )
    return bound


def guarantee(kind: str):
    """Decorator recording the guarantee of a bound function as ``fn.guarantee``."""
    if kind not in KINDS:
        raise ValueError(f"unknown bound kind {kind!r}; expected one of {KINDS}")

    def wrap(fn):
        fn.guarantee = kind
        return fn

    return wrap


def unit_roundoff(dtype) -> float:
    """u = eps/2 of a floating dtype: |fl(a∘b) − a∘b| ≤ u·|a∘b| for one basic operation."""
    return float(jnp.finfo(dtype).eps) / 2.0


def gamma(n: int | float, dtype, *, complex_: bool = False) -> float:
    """Higham's γ_n = n·u/(1 − n·u): the relative error bound of an n-term inner product.

    For complex arithmetic a complex multiply-add is a few real operations; we use the standard
    γ_{n+2}·√2 (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.6).
    """
    u = unit_roundoff(dtype)
    if complex_:
        n = n + 2
    nu = n * u
    if nu >= 0.5:
        raise ValueError(f"rounding-error analysis does not apply: n·u = {nu} (n = {n})")
    g = nu / (1.0 - nu)
    return math.sqrt(2.0) * g if complex_ else g
