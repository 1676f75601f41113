r"""Rules for the linear primitives with a constant operand: ``dot_general`` and
``conv_general_dilated``.

**dot_general.** With the constant operand W and the input-dependent X, every output entry is
out[b, f_X, f_W] = Σ_c X[b, f_X, c]·W[b, c, f_W] (b the batch dimensions, c the contracted
ones, f the free ones, in some order; whether X is the left or the right operand only permutes
the output). For fixed (b, f_X) the map is a row vector times the matrix W_b = W[b] arranged as
(contracted, free), so the operator is the block-diagonal ⊕_b (I ⊗ W_b) up to permutations of
the coordinates, which are ℓp isometries. The ℓp → ℓp norm of a block-diagonal map is its
largest block's (‖y‖_p^p = Σ_blocks ‖y_blk‖_p^p; max for p = ∞), and ‖I ⊗ W_b‖_p = ‖W_b‖_p
by the same argument row by row. So L_out ≤ max_b ‖W_b‖_p · L_X, computed by liplax's exact
SVD / induced norms (:mod:`liplax.traced._norms`). A product of two dependent operands is
refused (not globally Lipschitz).

**conv_general_dilated.** A convolution with a constant kernel K is linear in the input. The
batch axis gives identical diagonal blocks and layouts are coordinate permutations, so:

- 2-D, no input dilation, non-negative padding: the kernel is transposed to HWIO (a kernel
  dilation d is the same map as the kernel with d − 1 zeros between its taps) and bounded by
  :func:`liplax.nn.conv.conv_bound` (the layer-based factor of ``nnx.Conv``); with G feature
  groups, group g maps input channels g·I…(g+1)·I − 1 to its own O/G output channels, so the
  operator is block diagonal up to permutations and its norm is the largest group's;
- any other case (1-D/3-D, input dilation, negative padding): Riesz–Thorin,
  ‖A‖_2 ≤ √(‖A‖_1‖A‖_∞) (Horn & Johnson, *Matrix Analysis*, §5.6, Problem 21; and
  ‖A‖_p ≤ ‖A‖_1^{1/p}‖A‖_∞^{1−1/p} in general). ‖A‖_∞ is the largest absolute row sum, i.e. the
  largest entry of the convolution of |K| applied to the all-ones input; ‖A‖_1 the largest
  absolute column sum, the transposed convolution of |K| applied to all-ones (``jax.vjp``).
  Both are sums of n = (taps × input channels per group) non-negative terms, rounded up by
  2γ_{n+2}; |K| is scaled by an exact power of two first (:mod:`liplax.norms.scaling`) so subnormal
  and huge kernels neither flush nor overflow. For p = 1, ∞ this is exact (reported ``upper``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from liplax.guarantee import Bound, gamma, round_up_product
from liplax.norms.scaling import cover_lost, scale, unscale
from liplax.traced._errors import refuse
from liplax.traced._lip import Const, Dep, times
from liplax.traced._norms import block_matrix_norm, conv2d_norm
from liplax.traced._walk import register

_HI = lax.Precision.HIGHEST


def _one_dependent(eqn, ins):
    deps = [i for i, v in enumerate(ins) if isinstance(v, Dep)]
    if len(deps) != 1:
        raise refuse(
            eqn,
            "a product of two input-dependent values is not globally Lipschitz (only a linear "
            "map with one constant operand is bounded)",
        )
    return deps[0]


def _float_const(eqn, value) -> jax.Array:
    w = jnp.asarray(value)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        w = w.astype(jnp.result_type(float))
    return w.astype(jnp.promote_types(w.dtype, jnp.float32))


@register("dot_general")
def dot_general_rule(ctx, eqn, ins):
    """L_out ≤ max_b ‖W_b‖_p · L_X (see the module docstring)."""
    i = _one_dependent(eqn, ins)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    w = _float_const(eqn, ins[1 - i].value)
    contract, batch = (rc, rb) if i == 0 else (lc, lb)
    contract, batch = [int(d) for d in contract], [int(d) for d in batch]
    free = [d for d in range(w.ndim) if d not in contract and d not in batch]
    wt = jnp.transpose(w, (*batch, *contract, *free))
    shp = wt.shape
    b = math.prod(shp[: len(batch)])
    c = math.prod(shp[len(batch): len(batch) + len(contract)])
    f = math.prod(shp[len(batch) + len(contract):])
    if b * c * f == 0:
        return [Const(jnp.zeros(eqn.outvars[0].aval.shape, eqn.outvars[0].aval.dtype))]
    return [times(ins[i], block_matrix_norm(wt.reshape(b, c, f), ctx.p))]


def _abs_sums(eqn, k: jax.Array, lhs_aval) -> tuple[jax.Array, jax.Array, int]:
    """(max row sum, max column sum) of |A| for the convolution of ``eqn`` with kernel ``k``
    (already non-negative and scaled), and the number of terms per sum."""
    params = dict(eqn.params)
    params["preferred_element_type"] = None
    params["precision"] = (_HI, _HI)
    shape = list(lhs_aval.shape)
    spec = params["dimension_numbers"].lhs_spec
    shape[spec[0]] = 1  # one example: identical blocks along the batch axis
    ones = jnp.ones(shape, k.dtype)

    def conv(x):
        return lax.conv_general_dilated_p.bind(x, k, **params)

    out, vjp = jax.vjp(conv, ones)
    (col,) = vjp(jnp.ones_like(out))
    rspec = params["dimension_numbers"].rhs_spec
    terms = math.prod(k.shape[d] for d in rspec[1:])
    return jnp.max(out), jnp.max(col), int(terms)


def _generic_conv(ctx, eqn, k: jax.Array, lhs_aval) -> Bound:
    sc = scale(jnp.abs(k))
    rows, cols, n = _abs_sums(eqn, sc.x, lhs_aval)
    margin = 2.0 * gamma(n + 2, rows.dtype)
    rows = round_up_product([rows], margin=margin)
    cols = round_up_product([cols], margin=margin)
    if ctx.p == 1:
        value = cols
    elif ctx.p == math.inf:
        value = rows
    else:
        value = round_up_product([jnp.sqrt(rows * cols)], margin=8.0 * gamma(1, rows.dtype))
    value = unscale(cover_lost(value, sc.lost, float(n)), sc)
    return Bound(value, "upper")


@register("conv_general_dilated")
def conv_rule(ctx, eqn, ins):
    """L_out ≤ ‖A_K‖_p · L_X (see the module docstring)."""
    i = _one_dependent(eqn, ins)
    if i != 0:
        raise refuse(eqn, "the input as a convolution kernel is not modelled")
    prm = eqn.params
    if prm["batch_group_count"] != 1:
        raise refuse(eqn, f"batch_group_count={prm['batch_group_count']} is not modelled")
    k = _float_const(eqn, ins[1].value)
    lhs_aval = eqn.invars[0].aval
    dn = prm["dimension_numbers"]
    pads = tuple((int(a), int(b)) for a, b in prm["padding"])
    canonical = (
        len(dn.lhs_spec) == 4
        and all(int(d) == 1 for d in prm["lhs_dilation"])
        and all(a >= 0 and b >= 0 for a, b in pads)
    )
    if canonical:
        r = dn.rhs_spec
        kernel = jnp.transpose(k, (r[2], r[3], r[1], r[0]))
        dh, dw = (int(d) for d in prm["rhs_dilation"])
        if (dh, dw) != (1, 1):  # the same map with zeros between the taps
            kh, kw = kernel.shape[:2]
            big = jnp.zeros(((kh - 1) * dh + 1, (kw - 1) * dw + 1, *kernel.shape[2:]), k.dtype)
            kernel = big.at[::dh, ::dw].set(kernel)
        hw = (int(lhs_aval.shape[dn.lhs_spec[2]]), int(lhs_aval.shape[dn.lhs_spec[3]]))
        strides = tuple(int(s) for s in prm["window_strides"])
        groups = int(prm["feature_group_count"])
        per_group = kernel.shape[3] // groups
        factors = [
            conv2d_norm(kernel[..., g * per_group:(g + 1) * per_group], hw, ctx.p,
                        strides=strides, padding=pads)
            for g in range(groups)
        ]
        factor = factors[0] if groups == 1 else Bound(
            jnp.max(jnp.stack([f.value for f in factors])), "upper")
    else:
        factor = _generic_conv(ctx, eqn, k, lhs_aval)
    return [times(ins[0], factor)]


