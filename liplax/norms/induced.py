r"""Induced ℓ∞ and ℓ1 operator norms of dense maps and convolution layers.

‖A‖_{∞→∞} is the largest absolute row sum of A's matrix, ‖A‖_{1→1} the largest absolute
column sum (Horn & Johnson, *Matrix Analysis*, §5.6.4–5). With the row-vector convention of
:class:`~liplax.norms.operator.DenseOperator` (x ↦ x @ w, w of shape (in, out)) these are the
max column / max row abs-sums of w. For a :class:`~liplax.norms.operator.ConvOperator` the row
(column) sums of |A| are the layer with kernel |k| applied to the all-ones input (its transpose
to the all-ones output), so every padding and stride is the true layer; for circular padding the
kernel is first aliased modulo the input size (:func:`alias_kernel`). Every routine works on the
array scaled by an exact power of two (:mod:`liplax.norms.scaling`): subnormal and near-overflow
parameters give the right value (or inf beyond the range), NaN entries NaN, infinite ones inf.
``docs/design.md §norms``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liplax.guarantee import gamma, guarantee, unit_roundoff
from liplax.norms.operator import ConvOperator, LinearOperator
from liplax.norms.scaling import cover_lost, scale, unscale


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


def _conv_abs_sums(op: ConvOperator, transpose: bool) -> jax.Array:
    """Largest row (or column) sum of |A|, computed through the layer with kernel |k|."""
    hw = op.input_hw
    kh, kw, cin, cout = op.kernel.shape
    sc = scale(op.kernel)
    abs_k = jnp.abs(sc.x)
    if op.circular and (kh > hw[0] or kw > hw[1]):
        # Aliased taps are a signed sum; its (small, compensated) error bound is added to
        # |fl(Σk)| entry by entry so the result stays an upper bound under cancellation.
        k_alias, err = alias_kernel(sc.x, hw)
        abs_k = jnp.abs(k_alias) + err
    abs_op = op.replace(abs_k)
    taps = abs_k.shape[0] * abs_k.shape[1]
    if transpose:
        sums = abs_op.transpose(jnp.ones(abs_op.out_shape, op.dtype))
        terms = taps * cout
    else:
        sums = abs_op.apply(jnp.ones(abs_op.in_shape, op.dtype))
        terms = taps * cin
    bound = jnp.max(sums) * (1.0 + 2.0 * gamma(terms, op.dtype))
    # Taps lost to the scaling (each < tiny): a row or column of |E| sums ≤ kh·kw·max(in, out).
    return unscale(cover_lost(bound, sc.lost, kh * kw * max(cin, cout)), sc)


def _dense_abs_sums(op: LinearOperator, axis: int) -> jax.Array:
    """max over the other axis of Σ_axis |w|, scaled exactly and rescaled."""
    w = op.array
    sc = scale(w)
    total = jnp.max(jnp.sum(jnp.abs(sc.x), axis=axis))
    return unscale(cover_lost(total, sc.lost, w.shape[axis]), sc)


@guarantee(dense="exact", conv="upper")
def norm_inf(op: LinearOperator) -> jax.Array:
    r"""Induced ℓ∞→ℓ∞ norm: the largest absolute row sum of the operator's matrix.

    Dense x ↦ x @ w: max_j Σ_i |w_ij| (max abs column sum of the (in, out) array); ``exact``, a
    sum of ``in`` non-negative terms (relative rounding error ≤ γ_in).
    Convolution: the layer with kernel |k| on the all-ones input, border rows that see fewer
    taps included, so exact for every padding and stride; reported as ``upper`` because the sum
    is rounded up by (1 + 2γ_terms) so it never falls below the float64 truth.
    Reference: Horn & Johnson, *Matrix Analysis*, §5.6.5.
    """
    if isinstance(op, ConvOperator):
        return _conv_abs_sums(op, transpose=False)
    return _dense_abs_sums(op, axis=0)


@guarantee(dense="exact", conv="upper")
def norm_1(op: LinearOperator) -> jax.Array:
    r"""Induced ℓ1→ℓ1 norm: the largest absolute column sum of the operator's matrix.

    Dense x ↦ x @ w: max_i Σ_j |w_ij| (max abs row sum of the (in, out) array); ``exact``
    (relative rounding error ≤ γ_out). Convolution: |A|ᵀ1, the transpose of the layer with
    kernel |k| applied to the all-ones output (kernel aliased first for circular padding);
    ``upper``, as :func:`norm_inf`. Reference: Horn & Johnson, §5.6.4.
    """
    if isinstance(op, ConvOperator):
        return _conv_abs_sums(op, transpose=True)
    return _dense_abs_sums(op, axis=1)
