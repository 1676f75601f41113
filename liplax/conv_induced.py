r"""Induced ℓ∞ and ℓ1 norms of 2-D convolution layers (re-exported by :mod:`liplax.conv`).

The row (column) sums of |A| for the layer's matrix A are the layer with kernel |k| applied to
the all-ones input (its transpose to the all-ones output), so every padding and stride is the
true layer. The kernel is first scaled by an exact power of two on its bits
(:mod:`liplax._scaling`), so subnormal and near-overflow kernels give the right value (or inf
beyond the range), NaN taps give NaN and infinite ones inf.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from liplax import _checks
from liplax._conv_apply import _apply, _resolve
from liplax._scaling import cover_lost, scale, unscale
from liplax.guarantee import gamma, guarantee, unit_roundoff


def _alias_groups(kernel: jax.Array, input_hw: tuple[int, int]) -> jax.Array:
    """(r, n_h', n_w', in, out): the r taps that land on each sample of a circular layer.

    Tap p reads sample (p − lo) mod n, so taps p and p + n alias; axes where k ≤ n are unchanged.
    """
    reps = []
    for axis, n in enumerate(input_hw):
        k = kernel.shape[axis]
        r = -(-k // n) if k > n else 1
        pad = [(0, 0)] * 4
        pad[axis] = (0, r * n - k if k > n else 0)
        kernel = jnp.pad(kernel, pad)
        reps.append(r)
    kh, kw, cin, cout = kernel.shape
    nh, nw = kh // reps[0], kw // reps[1]
    g = kernel.reshape(reps[0], nh, reps[1], nw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return g.reshape(reps[0] * reps[1], nh, nw, cin, cout)


def alias_kernel(kernel: jax.Array, input_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    r"""Aliased kernel k_a[j] = Σ_{p ≡ j (mod n)} k[p] of a circular layer, and its error bound.

    A circular convolution reads x[(s·i + p − lo) mod n], so taps p and p + n act on one sample;
    the circular layer with k_a is the same operator up to a cyclic shift of the input. The sum is
    compensated (Knuth's TwoSum; Higham, *Accuracy and Stability*, Alg. 4.3) so that cancellation
    does not cost accuracy: |fl(k_a) − k_a| ≤ 2u|k_a| + 2γ_r²·Σ|k| elementwise; the second
    array returned is that bound (zero where nothing aliases).
    """
    groups = _alias_groups(kernel, input_hw)
    total, comp = groups[0], jnp.zeros_like(groups[0])
    for r in range(1, groups.shape[0]):
        x = groups[r]
        t = total + x
        bp = t - total
        comp = comp + ((total - (t - bp)) + (x - bp))
        total = t
    out = total + comp
    r = groups.shape[0]
    if r == 1:
        return out, jnp.zeros_like(out)
    u = unit_roundoff(kernel.dtype)
    g = gamma(r, kernel.dtype)
    err = 2.0 * u * jnp.abs(out) + 2.0 * g * g * jnp.sum(jnp.abs(groups), axis=0)
    return out, err


def _abs_sums(kernel, input_shape, strides, padding, transpose: bool) -> jax.Array:
    """Largest row (or column) sum of |A|, computed through the layer with kernel |k|."""
    kernel, hw, st, pads = _resolve(kernel, input_shape, strides, padding)
    kh, kw, cin, cout = kernel.shape
    sc = scale(kernel)
    abs_k = jnp.abs(sc.x)
    if pads == "CIRCULAR" and (kernel.shape[0] > hw[0] or kernel.shape[1] > hw[1]):
        # Aliased taps are a signed sum; its (small, compensated) error bound is added to
        # |fl(Σk)| entry by entry so the result stays an upper bound under cancellation.
        k_alias, err = alias_kernel(sc.x, hw)
        abs_k = jnp.abs(k_alias) + err
        kernel = abs_k
    shape = (1, *hw, kernel.shape[2])
    fwd = partial(_apply, abs_k, strides=st, pads=pads)
    if transpose:
        out = jax.eval_shape(fwd, jax.ShapeDtypeStruct(shape, kernel.dtype))
        (sums,) = jax.linear_transpose(fwd, jax.ShapeDtypeStruct(shape, kernel.dtype))(
            jnp.ones(out.shape, kernel.dtype)
        )
        terms = kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
    else:
        sums = fwd(jnp.ones(shape, kernel.dtype))
        terms = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    bound = jnp.max(sums) * (1.0 + 2.0 * gamma(terms, kernel.dtype))
    # Taps lost to the scaling (each < tiny): a row or column of |E| sums ≤ kh·kw·max(in, out).
    return unscale(cover_lost(bound, sc.lost, kh * kw * max(cin, cout)), sc)


@guarantee("upper")
def norm_inf(
    kernel: jax.Array,
    input_shape: tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
) -> jax.Array:
    r"""Induced ℓ∞→ℓ∞ norm of the layer: the largest absolute row sum of its matrix.

    The row sums of |A| are the layer with kernel |k| applied to the all-ones input, so every
    padding and stride (border rows that see fewer taps included) is accounted for exactly; for
    circular padding the kernel is first aliased modulo the input size (:func:`alias_kernel`),
    so taps that land on one sample add before the absolute value. Exact for every padding;
    reported as ``upper`` because the sum is rounded up by (1 + 2γ_terms) so it never falls
    below the float64 truth. Reference: Horn & Johnson, *Matrix Analysis*, §5.6.5.
    """
    return _abs_sums(kernel, input_shape, strides, padding, transpose=False)


@guarantee("upper")
def norm_1(
    kernel: jax.Array,
    input_shape: tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: _checks.Padding = "SAME",
) -> jax.Array:
    r"""Induced ℓ1→ℓ1 norm of the layer: the largest absolute column sum of its matrix.

    Column sums of |A| are |A|ᵀ1, the linear transpose of the layer with kernel |k| applied to
    the all-ones output (kernel aliased first for circular padding). Same guarantee as
    :func:`norm_inf`: exact, rounded up. Reference: Horn & Johnson, §5.6.4.
    """
    return _abs_sums(kernel, input_shape, strides, padding, transpose=True)
