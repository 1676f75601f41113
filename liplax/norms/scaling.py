r"""Exact power-of-two scaling done on the bits, for operands from subnormal to overflow.

Operator norms are 1-homogeneous, ‖x‖ = 2^k·‖x·2^{-k}‖, and multiplying by a power of two is
exact in binary floating point, so the bound operators work on x·2^{-k} with the largest
magnitude in [1, 2) and multiply the result by 2^k at the end. Doing this with floating-point
arithmetic fails at both ends of the range on XLA: CPUs (and most accelerators) flush subnormal
operands and results to zero, so a kernel of 1e-40 entries reads as zero; and a division by
2^127 is compiled as a multiplication by the reciprocal 2^{-127}, itself subnormal, so a matrix
of 2e38 entries reads as zero too. Here the exponent of the largest magnitude and the scaled
entries are computed with integer operations on the bit patterns (IEEE 754 binary formats:
sign, biased exponent, fraction; subnormals normalized with a count of leading zeros), which
no flushing touches, and the final 2^k is applied as two multiplications by normal powers of two.

What is refused or covered:

- non-finite entries: the result is NaN (some NaN entry) or inf (some infinite entry), never a
  finite number (certification refuses both);
- a result beyond the dtype's range is inf (any value ≥ the largest finite one is reported as
  inf);
- a non-zero result below the smallest normal number ``tiny`` is returned as ``tiny``: later
  arithmetic would flush a subnormal bound to zero (a zero Lipschitz bound certifies any
  radius), and ``tiny`` is above the truth;
- entries far below the largest one (|x_ij·2^{-k}| < tiny) cannot be represented in the scaled
  array and are set to zero; :attr:`Pow2Scaled.lost` records it, and :func:`cover_lost` adds a
  slack for upper bounds. For exact results the loss is relative ≤ (number of entries)·tiny,
  far inside the documented rounding margin.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_INT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


class _Layout(NamedTuple):
    int_dtype: type
    width: int  # bits
    nmant: int  # fraction bits
    bias: int  # exponent bias


def _layout(dtype) -> _Layout:
    dtype = np.dtype(dtype)
    fi = jnp.finfo(dtype)
    return _Layout(_INT[dtype.itemsize], 8 * dtype.itemsize, int(fi.nmant), int(fi.maxexp) - 1)


def _abs_bits(x: jax.Array, lay: _Layout) -> jax.Array:
    bits = lax.bitcast_convert_type(x, lay.int_dtype)
    return bits & lay.int_dtype((1 << (lay.width - 1)) - 1)


def _exponent(ab: jax.Array, lay: _Layout) -> tuple[jax.Array, jax.Array]:
    """(e, fraction) with |x| = 1.fraction·2^e for normal and subnormal magnitudes ``ab`` (bits)."""
    it = lay.int_dtype
    big_e = ab >> it(lay.nmant)
    frac = ab & it((1 << lay.nmant) - 1)
    sub = big_e == 0
    # Subnormal: |x| = frac·2^{1−bias−nmant}; its leading bit p gives e = p + 1 − bias − nmant.
    p = it(lay.width - 1) - lax.clz(jnp.where(sub, frac, it(1)))
    e_sub = p + it(1 - lay.bias - lay.nmant)
    shift = jnp.where(sub, it(lay.nmant) - p, it(0))
    frac_sub = (frac << shift) & it((1 << lay.nmant) - 1)
    e = jnp.where(sub, e_sub, big_e - it(lay.bias))
    return e.astype(jnp.int32), jnp.where(sub, frac_sub, frac)


def pow2(e: jax.Array, dtype) -> jax.Array:
    """2^e as a float of ``dtype`` from its bits; ``e`` must lie in the normal range."""
    lay = _layout(dtype)
    bits = (e.astype(lay.int_dtype) + lay.int_dtype(lay.bias)) << lay.int_dtype(lay.nmant)
    return lax.bitcast_convert_type(bits, np.dtype(dtype))


@jax.custom_jvp
def _scale_down(x: jax.Array, k: jax.Array) -> jax.Array:
    """x·2^{-k} entry by entry on the bits (exact, or 0 below tiny); finite x, max exponent k."""
    lay = _layout(x.dtype)
    it = lay.int_dtype
    bits = lax.bitcast_convert_type(x, it)
    sign = bits & ~it((1 << (lay.width - 1)) - 1)
    ab = _abs_bits(x, lay)
    e, frac = _exponent(ab, lay)
    biased = (e - k).astype(it) + it(lay.bias)
    keep = (ab != 0) & (biased >= 1)
    out = sign | (jnp.where(keep, biased, it(0)) << it(lay.nmant)) | jnp.where(keep, frac, it(0))
    return lax.bitcast_convert_type(out, x.dtype)


@_scale_down.defjvp
def _scale_down_jvp(primals, tangents):
    x, k = primals
    dx, _ = tangents
    k1 = k // 2
    return _scale_down(x, k), dx * pow2(-k1, x.dtype) * pow2(k1 - k, x.dtype)


class Pow2Scaled(NamedTuple):
    """An array split as x = 2^k·(x·2^{-k}), from :func:`scale`.

    Attributes:
      x: x·2^{-k} (largest magnitude in [1, 2); exact except entries below tiny after scaling,
        which are 0, and non-finite entries, which are 0). Differentiable in the input.
      k: int32 scalar exponent (0 for an all-zero array).
      lost: bool scalar, whether some non-zero entry became 0 in ``x``.
      bad: 0 when every entry is finite, else NaN (a NaN entry) or inf (an infinite entry).
    """

    x: jax.Array
    k: jax.Array
    lost: jax.Array
    bad: jax.Array


def scale(x: jax.Array) -> Pow2Scaled:
    """Split ``x`` (a real floating array) by the exponent of its largest finite magnitude."""
    lay = _layout(x.dtype)
    it = lay.int_dtype
    ab = _abs_bits(lax.stop_gradient(x), lay)
    inf_bits = it(((1 << (lay.width - 1 - lay.nmant)) - 1) << lay.nmant)
    finite = ab < inf_bits
    ab_f = jnp.where(finite, ab, it(0))
    top = jnp.max(ab_f)
    e_top, _ = _exponent(top, lay)
    k = jnp.where(top != 0, e_top, 0).astype(jnp.int32)
    xs = _scale_down(jnp.where(finite, x, jnp.zeros_like(x)), k)
    lost = jnp.any((ab_f != 0) & (_abs_bits(lax.stop_gradient(xs), lay) == 0))
    bad = jnp.where(
        jnp.any(ab > inf_bits), jnp.nan, jnp.where(jnp.any(ab == inf_bits), jnp.inf, 0.0)
    ).astype(x.dtype)
    return Pow2Scaled(xs, k, lost, bad)


def unscale(r: jax.Array, sc: Pow2Scaled) -> jax.Array:
    """r·2^k for a result r computed on ``sc.x``: inf past the largest finite number, ``tiny``
    for a positive result that would be subnormal, NaN/inf when the input had such entries.

    The two multiplications by normal powers 2^{⌊k/2⌋} and 2^{k−⌊k/2⌋} are exact while the
    result stays in the normal range (r·2^{⌊k/2⌋} is far from both ends for |r| ≤ 2^60).
    """
    dtype = r.dtype
    fi = jnp.finfo(dtype)
    k1 = sc.k // 2
    out = r * pow2(k1, dtype) * pow2(sc.k - k1, dtype)
    out = jnp.where(out >= fi.max, jnp.inf, out)
    out = jnp.where((r > 0) & (out < fi.tiny), jnp.asarray(fi.tiny, dtype), out)
    return jnp.where(sc.bad != 0, sc.bad.astype(dtype), out)


def cover_lost(bound: jax.Array, lost: jax.Array, norm_of_unit: float) -> jax.Array:
    """An upper bound on the operator of the unscaled entries, from one on ``sc.x``.

    The entries lost in :func:`scale` (each below tiny in scaled units) form a perturbation E
    whose norm is at most ``norm_of_unit``·tiny, where ``norm_of_unit`` bounds the norm of the
    operator with every parameter of magnitude at most one (√(mn) for an m×n matrix in ℓ2). The
    sum bound + slack is rounded up by one step (nextafter), so the float result is ≥ the real
    sum. Without lost entries the bound is returned unchanged.
    """
    tiny = float(jnp.finfo(bound.dtype).tiny)
    b = lax.stop_gradient(bound)
    bumped = jnp.nextafter(b + norm_of_unit * tiny, jnp.asarray(jnp.inf, b.dtype))
    return bound + jnp.where(lost, bumped - b, jnp.zeros_like(b))


def pow2_scale(x: jax.Array) -> jax.Array:
    """A power of two ``s`` (no gradient) with max|x/s| in [1, 2); 1 for a zero array.

    Dividing by a power of two is exact in binary floating point, so the scaling costs no
    rounding; operator norms are 1-homogeneous, so ‖x‖ = s·‖x/s‖. ``s`` is clipped to
    [2^{3−e_max}, 2^{e_max−3}] so that both s and 1/s are normal (XLA divides by multiplying
    with the reciprocal, and flushes subnormals): max|x/s| < 8 near overflow, and subnormal x
    stay out of reach (they are flushed anyway). The norm routines use :func:`scale` instead,
    which has neither limit; this one serves layers that divide their weights by s.
    """
    sc = scale(lax.stop_gradient(x))
    e_max = int(jnp.finfo(x.dtype).maxexp) - 1
    k = jnp.clip(sc.k, 3 - e_max, e_max - 3)
    return lax.stop_gradient(jnp.where(jnp.any(x != 0), pow2(k, x.dtype), jnp.ones((), x.dtype)))
