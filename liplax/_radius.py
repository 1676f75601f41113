"""The certified radius margin·s/(c·L), rounded down whatever the scales (used by certify)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from liplax.guarantee import (
    is_subnormal,
    raise_subnormal,
    scale_pow2,
    split_pow2,
    unit_roundoff,
)


def certifiable(m: jax.Array, L: jax.Array) -> jax.Array:
    """Where a certificate may be issued: a positive, finite margin and a finite bound L ≥ 0.

    Concrete non-finite values raise before this; under ``jit`` they cannot, so an example
    whose margin or bound is NaN or ±inf is simply never certified (radius 0)."""
    good_l = jnp.isfinite(L) & (L >= 0)
    return (m > 0) & jnp.isfinite(m) & good_l


def safe_radius(m: jax.Array, L: jax.Array, factor: float, s: jax.Array) -> jax.Array:
    """margin·s/(c·L) rounded *down*: never above the true radius, whatever the scales.

    m, L and s are split into mantissas in [0.5, 1) and exponents (guarantee.split_pow2), so
    the quotient of the mantissas, mm·ms/(ĉ·ml), neither under- nor overflows; ĉ ≥ c is the
    factor rounded up to the dtype. Its three roundings (≤ u each, relative) and the margin's
    own (m̂ = fl(f_y − f_j) ≤ (1 + u)·m) are covered by the factor (1 − 8u) (exact in binary),
    and the exponent 2^{em + es − el} is applied exactly. Then: a radius past the largest
    finite number is that number (the true radius is larger still); a radius below the
    smallest normal number is 0 (it would be rounded to a subnormal or flushed); L = 0 (a
    constant network: no perturbation changes the output) gives inf. A subnormal L is raised to
    the smallest normal number, a subnormal margin or scale lowered to 0 (XLA on CPU flushes
    them), so every adjustment lowers the radius. Where a certificate is refused, 0."""
    dtype = jnp.result_type(m, L, s)
    finfo = jnp.finfo(dtype)
    u = unit_roundoff(dtype)
    c = np.asarray(factor, dtype)
    if float(c) != factor or not math.log2(factor).is_integer():  # √2 and 2^{1−1/p}: up 1 ulp
        c = np.nextafter(c, np.asarray(np.inf, dtype))
    L = raise_subnormal(jnp.asarray(L, dtype))
    m = jnp.where(is_subnormal(m), 0.0, m).astype(dtype)
    s = jnp.where(is_subnormal(s), 0.0, s).astype(dtype)
    m, L = jnp.broadcast_arrays(m, L)
    ok = certifiable(m, L) & (s > 0) & jnp.isfinite(s)
    zero = L == 0
    use = ok & ~zero
    mm, em = split_pow2(jnp.where(use, m, 1.0))
    ml, el = split_pow2(jnp.where(use, L, 1.0))
    ms, es = split_pow2(jnp.where(ok, s, 1.0))
    q = mm / (jnp.asarray(c) * ml) * ms * jnp.asarray(1.0 - 8.0 * u, dtype)
    r = scale_pow2(q, em - el + es)
    r = jnp.where(jnp.isinf(r), jnp.asarray(finfo.max, dtype), r)
    r = jnp.where(r < finfo.tiny, 0.0, r)
    return jnp.where(ok, jnp.where(zero, jnp.inf, r), 0.0).astype(dtype)
