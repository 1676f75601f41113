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
import functools
import inspect
import math
from collections.abc import Callable, Iterable
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
    kind: Kind

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
:func:`compose` and by certification: a computed exact constant v̂ of a true constant v has
v̂ ≥ (1 − 64u)·v (float32: 3.8e-6). For a sum of n ≥ 0 terms (the ℓ1/ℓ∞ induced norms, in any
summation order) the rounding error is at most γ_{n−1} (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., §4.2), which is inside 64u up to n = 64 terms; a longer sum is
passed through :func:`exact_sum`, which rounds it up by its own γ_{n−1} so that it still
meets the contract whatever its length. For a backward-stable SVD (error a small multiple of
min(m, n)·u·σ₁) the margin is an assumption, not a theorem. jaxlib's CPU SVD *without* vectors
broke it (up to ~80u low on clustered top singular values), so σ₁ comes from the SVD with
vectors (:func:`liplax.norms.exact.top_singular_value`), measured within 13u;
tests/test_svd_accuracy.py holds it to 32u, and tests/test_fuzz_networks.py and
tests/test_fuzz_chains.py check tight rank-1 chains."""


def exact_margin(dtype) -> float:
    """Relative margin EXACT_ULPS·u by which an ``exact`` value may sit below the truth."""
    return EXACT_ULPS * unit_roundoff(dtype)


def exact_sum(value: jax.Array, n: int) -> jax.Array:
    """A computed sum of ``n`` non-negative terms, made to meet the ``exact`` contract.

    The computed ŝ of s = Σ_{i≤n} a_i, a_i ≥ 0, satisfies ŝ ≥ (1 − γ_{n−1})·s in any order of
    addition. While γ_{n−1} ≤ EXACT_ULPS·u (n ≤ 64) ŝ is returned as is; beyond, ŝ·(1 + 2γ_{n−1})
    (its own rounding included, ≥ s), so the ``exact`` margin of :func:`compose` and of
    certification covers every length. (A sum of n terms pre-scaled by a power of two, as
    liplax.linalg's norms are, loses at most n·2^{minexp} relative to flushed terms: far less.)
    """
    value = jnp.asarray(value)
    g = gamma(max(int(n) - 1, 1), value.dtype)
    if g <= exact_margin(value.dtype):
        return value
    return value * (1.0 + 2.0 * g)


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
    rounding of ``exact`` values and of the products. A single factor is returned as is.

    The product is formed by :func:`round_up_product`: never 0 unless a factor is exactly 0
    (a constant layer, hence a constant composition), never below the smallest normal number
    otherwise, inf past the dtype's range (refused by certification)."""
    bounds = list(bounds)
    if len(bounds) == 1:
        return bounds[0]
    kind = compose_kind(b.kind for b in bounds)
    values = [b.value for b in bounds]
    if kind == "estimate":
        return Bound(round_up_product(values, margin=0.0), kind)
    dtype = jnp.result_type(*values) if values else jnp.result_type(float)
    margin = product_margin([b.kind for b in bounds], dtype)
    return Bound(round_up_product(values, margin=margin), kind)


def round_up_product(values, *, margin: float) -> jax.Array:
    """Π_l v_l · (1 + margin), computed so that range limits only ever round it *up*.

    Each factor is split as v_l = m_l·2^{e_l}, m_l in [0.5, 1) (frexp; exponents without
    gradient), the mantissas are multiplied and renormalized and the exponents added, so no
    partial product overflows or underflows (1e30·1e30·1e-30 is 1e30; 0.1^51 is 1e-51, not 0).
    Scalings by powers of two are exact (:func:`scale_pow2`), so the rounding is that of the
    plain product (≤ u per multiplication, covered by ``margin``). Range limits:

    - a subnormal factor (which XLA on CPU flushes to 0, and frexp misreads) is first raised
      to the smallest normal number ``tiny``, which is ≥ it;
    - a non-zero product below ``tiny`` is returned as ``tiny`` (≥ the truth; a subnormal
      result would be flushed to 0 and certify every radius);
    - a product beyond the largest finite number is inf; a factor inf gives inf, a NaN (or
      0·inf) gives NaN. The result is exactly 0 only when some factor is exactly 0.
    """
    values = [jnp.asarray(v) for v in values]
    dtype = jnp.result_type(*values) if values else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    values = [raise_subnormal(v.astype(dtype)) for v in values]
    tiny = jnp.asarray(jnp.finfo(dtype).tiny, dtype)
    mant, expo = jnp.ones((), dtype), jnp.zeros((), jnp.int32)
    has_nan = has_inf = has_zero = jnp.zeros((), bool)
    for v in values:
        finite = jnp.isfinite(v)
        has_nan, has_inf = has_nan | jnp.isnan(v), has_inf | jnp.isinf(v)
        has_zero = has_zero | (v == 0)
        v = jnp.where(finite, v, jnp.ones_like(v))
        m_v, e_v = split_pow2(v)
        mant, e_m = split_pow2(mant * m_v)  # |m_v|, |mant| in [0.5, 1): no under/overflow
        expo = expo + e_v + e_m
    mant = mant * jnp.asarray(1.0 + margin, dtype) if margin else mant
    value = scale_pow2(mant, expo)
    value = jnp.where((mant != 0) & (jnp.abs(value) < tiny), jnp.sign(mant) * tiny, value)
    nan = jnp.asarray(jnp.nan, dtype)
    value = jnp.where(has_inf, jnp.asarray(jnp.inf, dtype), value)
    return jnp.where(has_nan | (has_inf & has_zero), nan, value)


def split_pow2(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(m, e) with x = m·2^e, |m| in [0.5, 1) (0 for x = 0); e has no gradient. x normal."""
    e = jax.lax.stop_gradient(jnp.frexp(x)[1]).astype(jnp.int32)
    e = jnp.where(x == 0, 0, e)
    return scale_pow2(x, -e), e


def _uint_of(dtype):
    return {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[jnp.dtype(dtype).itemsize]


def raise_subnormal(v: jax.Array) -> jax.Array:
    """``v`` with each non-zero subnormal entry replaced by ±tiny (the smallest normal number).

    Read from the bits, so it works where the hardware flushes subnormals to zero (XLA on CPU
    treats them as 0 in arithmetic and comparisons). |result| ≥ |v| entrywise."""
    v = jnp.asarray(v)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        return v
    finfo = jnp.finfo(v.dtype)
    uint = _uint_of(v.dtype)
    bits = jax.lax.bitcast_convert_type(v, uint)
    magnitude = bits & jnp.asarray((1 << (finfo.bits - 1)) - 1, uint)
    tiny_bits = jax.lax.bitcast_convert_type(jnp.asarray(finfo.tiny, v.dtype), uint)
    sub = (magnitude > 0) & (magnitude < tiny_bits)
    negative = (bits >> (finfo.bits - 1)) == 1
    tiny = jnp.asarray(finfo.tiny, v.dtype)
    return jnp.where(sub, jnp.where(negative, -tiny, tiny), v)


def is_subnormal(v: jax.Array) -> jax.Array:
    """Where ``v`` is a non-zero subnormal (from the bits; see :func:`raise_subnormal`)."""
    v = jnp.asarray(v)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        return jnp.zeros(v.shape, bool)
    return raise_subnormal(v) != v


def pow2(k: jax.Array, dtype) -> jax.Array:
    """2^k exactly, for integer k clipped to the normal exponents [minexp, maxexp − 1]."""
    finfo = jnp.finfo(dtype)
    uint = _uint_of(dtype)
    k = jnp.clip(jnp.asarray(k, jnp.int32), finfo.minexp, finfo.maxexp - 1)
    biased = (k + (finfo.maxexp - 1)).astype(uint) << jnp.asarray(finfo.nmant, uint)
    return jax.lax.bitcast_convert_type(biased, dtype)


def scale_pow2(x: jax.Array, k: jax.Array) -> jax.Array:
    """x·2^k as two multiplications by exact powers of two (``jnp.ldexp`` forms 2^k with pow).

    Exact whenever x·2^k and the intermediate x·2^{clip(k)} are normal; otherwise flushed
    towards 0 or overflowing to inf as the hardware rounds. Differentiable in x."""
    x = jnp.asarray(x)
    finfo = jnp.finfo(x.dtype)
    k = jnp.asarray(k, jnp.int32)
    k1 = jnp.clip(k, finfo.minexp, finfo.maxexp - 1)
    return x * pow2(k1, x.dtype) * pow2(k - k1, x.dtype)


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


def guarantee(**kinds: Kind) -> Callable:
    """Declare, per operator family, the kind of Bound a norm routine returns, and enforce it.

    ``@guarantee(dense="exact", conv="upper")`` wraps a routine ``fn(op, ...)`` of a
    :mod:`liplax.norms.operator` operator that computes a bare value (or a tuple whose first item
    is the value, as power iteration's ``(value, vector)``): the wrapper refuses, with a
    ``TypeError`` naming the argument, an ``op`` whose ``family`` is not declared, and returns the
    value as ``Bound(value, kinds[op.family])``. So the kind is declared once, travels with the
    value, and ``fn.guarantee`` (the mapping) is what the code itself reads; the contract test
    (tests/test_norms_contract.py) checks every routine against it.

    Called on concrete arrays (not inside ``jit``, ``vmap`` or ``grad``), the routine runs as one
    compiled program (``jax.jit``; its keyword-only arguments with a non-``None`` default, such
    as ``num_iters``, are static): run op by op it would compile every primitive separately,
    ~5× slower on a first call per shape (a dense spectral norm: 57 small compilations). Inside
    a transformation it is traced inline as before; either way it computes the same program.
    """
    if not kinds:
        raise ValueError("guarantee needs at least one family=kind, e.g. dense='exact'")
    for family, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"unknown bound kind {kind!r} for {family}; expected one of {KINDS}")

    def wrap(fn):
        static = tuple(
            name for name, prm in inspect.signature(fn).parameters.items()
            if prm.kind is inspect.Parameter.KEYWORD_ONLY and prm.default is not None
            and prm.default is not inspect.Parameter.empty
        )
        compiled = jax.jit(fn, static_argnames=static)

        @functools.wraps(fn)
        def routine(op, *args, **kwargs):
            family = getattr(op, "family", None)
            if family not in kinds:
                raise TypeError(
                    f"op must be a liplax operator of family {tuple(kinds)} for {fn.__name__}, "
                    f"got {type(op).__name__}"
                )
            traced = any(isinstance(leaf, jax.core.Tracer)
                         for leaf in jax.tree_util.tree_leaves((op, args, kwargs)))
            out = (fn if traced else compiled)(op, *args, **kwargs)
            if isinstance(out, tuple):
                return (Bound(out[0], kinds[family]), *out[1:])
            return Bound(out, kinds[family])

        routine.guarantee = dict(kinds)
        return routine

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
