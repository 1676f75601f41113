r"""Rules for structural primitives: moves, copies, sums and maxima of entries, pooling.

- ``reshape``, ``transpose``, ``squeeze``, ``expand_dims``, ``rev``: a permutation of the
  coordinates, an ℓp isometry: factor 1. ``slice``, ``dynamic_slice`` (constant start), ``pad``
  with a constant value (negative padding crops): the output's entries are distinct input entries
  or constants, so ‖Δ out‖_p ≤ ‖Δ in‖_p: factor 1. ``convert_element_type`` to a float type at
  least as wide: the identity on the values (narrowing is refused, integers taint).
- ``broadcast_in_dim`` copying each entry m times: ‖Δ out‖_p = m^{1/p}‖Δ in‖_p (1 for p = ∞).
- ``concatenate`` and ``dynamic_update_slice`` of dependent parts: the output is the disjoint
  union of the parts, ‖Δ out‖_p^p = Σ_i ‖Δ u_i‖_p^p, so L ≤ (Σ_i L_i^p)^{1/p}.
- ``reduce_sum`` of k entries per output: |Σ_j Δ_j| ≤ k^{1−1/p}(Σ_j |Δ_j|^p)^{1/p} (Hölder),
  equality on constant Δ, over disjoint groups: factor k^{1−1/p}. A mean is this sum divided by
  the constant k (the ``div`` rule): k^{−1/p}. ``reduce_max``/``reduce_min``:
  |max_j a_j − max_j b_j| ≤ max_j |a_j − b_j| ≤ the group's ℓp norm, groups disjoint: factor 1.
- ``split``: disjoint subsets, 1 each; ``cumsum`` over n entries: n; ``sort`` of one array: 1.
- ``reduce_window_sum`` (sum/average pooling, any window, stride, padding, dilation): the
  matrix A of 0/1 entries has ‖A‖_∞ = the most input entries in one window and ‖A‖_1 = the
  most windows containing one entry (both counted exactly by applying the window sum, and its
  transpose, to all-ones); Riesz–Thorin gives ‖A‖_p ≤ ‖A‖_1^{1/p}‖A‖_∞^{1−1/p}.
  ``reduce_window_max``/``min``: |max_{W_o} Δ| ≤ (Σ_{j∈W_o} |Δ_j|^p)^{1/p}, and summing over
  the outputs counts each entry at most c = ‖A‖_1 times: factor c^{1/p} (1 for p = ∞).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from liplax.traced._errors import refuse
from liplax.traced._lip import Const, Dep, Taint, constant_factor, dep_pnorm, root_factor, times
from liplax.traced._walk import register


def _size(var) -> int:
    return math.prod(var.aval.shape)


@register("reshape", "transpose", "squeeze", "expand_dims", "rev", "slice")
def move_rule(ctx, eqn, ins):
    """A permutation or a subset of the entries: factor 1."""
    return [ins[0]]


@register("dynamic_slice")
def dynamic_slice_rule(ctx, eqn, ins):
    """A subset of the entries at constant offsets: factor 1."""
    if not all(isinstance(v, Const) for v in ins[1:]):
        raise refuse(eqn, "a slice at an input-dependent offset is discontinuous")
    return [ins[0]]


@register("pad")
def pad_rule(ctx, eqn, ins):
    """Entries of the operand and copies of a constant: factor 1."""
    if not isinstance(ins[1], Const):
        raise refuse(eqn, "an input-dependent padding value is not modelled")
    return [ins[0]]


@register("convert_element_type")
def convert_rule(ctx, eqn, ins):
    """The identity on the values, to a float type at least as wide; narrowing is refused."""
    new, old = jnp.dtype(eqn.params["new_dtype"]), jnp.dtype(eqn.invars[0].aval.dtype)
    if not jnp.issubdtype(new, jnp.floating):
        return [Taint(f"'convert_element_type' to {new.name}")]
    if jnp.finfo(new).bits < jnp.finfo(old).bits:
        raise refuse(
            eqn,
            f"converting an input-dependent value from {old.name} to the narrower {new.name} "
            "rounds it (a different map)",
        )
    return [ins[0]]


@register("broadcast_in_dim")
def broadcast_rule(ctx, eqn, ins):
    """Each entry copied m times: factor m^{1/p}."""
    m = _size(eqn.outvars[0]) // max(_size(eqn.invars[0]), 1)
    return [ins[0] if m <= 1 else times(ins[0], root_factor(m, ctx.p))]


@register("concatenate", "stack")
def concatenate_rule(ctx, eqn, ins):
    """Disjoint parts: (Σ_i L_i^p)^{1/p} over the dependent ones."""
    return [dep_pnorm([v for v in ins if isinstance(v, Dep)], ctx.p)]


@register("split")
def split_rule(ctx, eqn, ins):
    """Disjoint subsets of the entries: factor 1 each."""
    return [ins[0] for _ in eqn.outvars]


@register("cumsum")
def cumsum_rule(ctx, eqn, ins):
    """Running sums of n entries: a triangular 0/1 matrix with row and column sums ≤ n, so
    ‖A‖_1 = ‖A‖_∞ = n and ‖A‖_2 ≤ n (Riesz–Thorin): factor n."""
    n = int(eqn.invars[0].aval.shape[eqn.params["axis"]])
    return [times(ins[0], constant_factor(float(n)))]


@register("sort")
def sort_rule(ctx, eqn, ins):
    """Sorting one array: nonexpansive in every ℓp (Σ_i |x_(i) − y_(i)|^p ≤ Σ_i |x_i − y_i|^p,
    Hardy–Littlewood–Pólya, *Inequalities*, §10.2): factor 1. Sorting by keys is refused."""
    if len(ins) != 1:
        raise refuse(eqn, "sorting several arrays by keys is not modelled")
    return [times(ins[0], constant_factor(1.0))]


@register("dynamic_update_slice")
def update_slice_rule(ctx, eqn, ins):
    """The operand outside the window and the update inside: disjoint parts."""
    if not all(isinstance(v, Const) for v in ins[2:]):
        raise refuse(eqn, "an update at an input-dependent offset is discontinuous")
    return [dep_pnorm([v for v in ins[:2] if isinstance(v, Dep)], ctx.p)]


@register("reduce_sum")
def reduce_sum_rule(ctx, eqn, ins):
    """k entries summed per output: factor k^{1−1/p}."""
    k = _size(eqn.invars[0]) // max(_size(eqn.outvars[0]), 1)
    return [times(ins[0], root_factor(max(k, 1), ctx.p, power="1-1/p"))]


@register("reduce_max", "reduce_min")
def reduce_max_rule(ctx, eqn, ins):
    """Maxima over disjoint groups: factor 1."""
    return [times(ins[0], constant_factor(1.0))]


def _window_counts(eqn) -> tuple[int, int]:
    """(most entries in one window, most windows over one entry) of a ``reduce_window_*``."""
    params = {k: eqn.params[k] for k in
              ("window_dimensions", "window_strides", "padding", "base_dilation",
               "window_dilation")}
    with jax.ensure_compile_time_eval():
        ones = jnp.ones(eqn.invars[0].aval.shape, jnp.float32)

        def window_sum(x):
            return jax.lax.reduce_window_sum_p.bind(x, **params)

        out, vjp = jax.vjp(window_sum, ones)
        (col,) = vjp(jnp.ones_like(out))
        rows = int(jnp.max(out)) if out.size else 0
        cols = int(jnp.max(col)) if col.size else 0
    return rows, cols


@register("reduce_window_sum")
def window_sum_rule(ctx, eqn, ins):
    """Sum pooling: ‖A‖_1^{1/p}·‖A‖_∞^{1−1/p} (Riesz–Thorin) with exact 0/1 counts."""
    rows, cols = _window_counts(eqn)
    if rows == 0 or cols == 0:
        return [Const(jnp.zeros(eqn.outvars[0].aval.shape, eqn.outvars[0].aval.dtype))]
    if ctx.p == 1:
        return [times(ins[0], constant_factor(float(cols)))]
    if ctx.p == math.inf:
        return [times(ins[0], constant_factor(float(rows)))]
    return [times(ins[0], root_factor(rows * cols, 2))]


@register("reduce_window_max", "reduce_window_min")
def window_max_rule(ctx, eqn, ins):
    """Max pooling: each entry in at most c windows: factor c^{1/p}."""
    _, cols = _window_counts(eqn)
    return [times(ins[0], root_factor(max(cols, 1), ctx.p))]
