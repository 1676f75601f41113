r"""Rules for elementwise primitives: scalar functions, arithmetic with constants, sums.

**Scalar c-Lipschitz maps.** If |φ(s) − φ(t)| ≤ c|s − t| for scalars then, entry by entry,
‖φ(u) − φ(u')‖_p ≤ c‖u − u'‖_p in every ℓp, so L_out ≤ c·L_u. The constants are
c = sup|φ'| (mean value theorem), each attained or approached, so they are also the best ones:

- ``neg``, ``abs``, ``copy``: 1 (|·| is 1-Lipschitz by the reverse triangle inequality);
- ``tanh``: tanh' = 1 − tanh² ≤ 1, equality at 0;
- ``logistic``: σ' = σ(1 − σ) ≤ 1/4, equality at 0;
- ``sin``, ``cos``: |cos|, |sin| ≤ 1, equality at 0 resp. π/2;
- ``atan``: 1/(1 + s²) ≤ 1; ``asinh``: 1/√(1 + s²) ≤ 1; equality at 0;
- ``erf``, ``erfc``: (2/√π)e^{−s²} ≤ 2/√π, equality at 0 (irrational: rounded up, ``upper``);
- ``max``/``min`` with a constant, ``clamp`` with constant limits: 1 (|max(s, c) − max(t, c)| ≤
  |s − t|).

**Constants.** c ⊙ u: |c_i(u_i − u'_i)| ≤ max|c|·|u_i − u'_i|, so L ≤ max|c|·L_u (``exact``);
u / c: L ≤ L_u / min|c| (one rounding, inside the exact margin); 0 in c gives inf (refused at
trace time when c is known). u ± c: L_u. A scalar dependent operand broadcast against a
constant array of m entries is first copied (factor m^{1/p}, see
:mod:`liplax.traced._structural`).

**Two dependent operands.** u ± v: L_u + L_v (triangle inequality). max(u, v), min(u, v):
|max(a, b) − max(a', b')| ≤ max(|a − a'|, |b − b'|) entrywise, so
‖Δ out‖_p^p ≤ Σ_j (|Δu_j|^p + |Δv_j|^p) ≤ (L_u^p + L_v^p)‖Δx‖_p^p: L ≤ (L_u^p + L_v^p)^{1/p}
(max(L_u, L_v) for p = ∞). ``select_n`` with a constant predicate: the output entries are split
into disjoint sets S_i taken from case i, so ‖Δ out‖_p^p = Σ_i ‖Δ case_i|S_i‖_p^p and
L ≤ (Σ_i L_i^p)^{1/p} over the cases that are selected somewhere (not max_i L_i: selecting x on
some entries and a permutation of x on the others can double ‖Δ‖²). u·v, u/v, exp, log, powers
of the input: refused (not globally Lipschitz).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from liplax.guarantee import Bound, raise_subnormal
from liplax.traced._errors import refuse
from liplax.traced._lip import (
    Const,
    Dep,
    Taint,
    bound_dtype,
    constant_factor,
    dep_pnorm,
    dep_sum,
    root_factor,
    times,
)
from liplax.traced._walk import register

UNARY_CONSTANTS = {
    "neg": 1.0, "abs": 1.0, "copy": 1.0, "copy_p": 1.0, "tanh": 1.0, "logistic": 0.25,
    "sin": 1.0, "cos": 1.0, "atan": 1.0, "asinh": 1.0,
}
UPPER_CONSTANTS = {"erf": 2.0 / math.sqrt(math.pi), "erfc": 2.0 / math.sqrt(math.pi)}

NOT_LIPSCHITZ = (
    "exp", "exp2", "expm1", "log", "log1p", "sqrt", "rsqrt", "cbrt", "integer_pow", "pow",
    "square", "tan", "asin", "acos", "acosh", "atanh", "sinh", "cosh", "erf_inv", "lgamma",
    "digamma", "atan2", "rem", "reciprocal",
)
DISCONTINUOUS = (
    "sign", "floor", "ceil", "round", "is_finite", "eq", "ne", "lt", "le", "gt", "ge", "and",
    "or", "not", "xor", "nextafter", "argmax", "argmin", "population_count", "clz",
)


@register(*UNARY_CONSTANTS)
def unary_rule(ctx, eqn, ins):
    """A scalar c-Lipschitz map applied entrywise: L·c (constants in the module docstring)."""
    return [times(ins[0], constant_factor(UNARY_CONSTANTS[eqn.primitive.name]))]


@register(*UPPER_CONSTANTS)
def upper_unary_rule(ctx, eqn, ins):
    """``erf``/``erfc``: L·2/√π, rounded up."""
    return [times(ins[0], constant_factor(UPPER_CONSTANTS[eqn.primitive.name], "upper"))]


@register(*NOT_LIPSCHITZ)
def not_lipschitz_rule(ctx, eqn, ins):
    """Refused: the map is not globally Lipschitz in the input (unbounded derivative)."""
    raise refuse(
        eqn,
        "this function of an input-dependent value is not globally Lipschitz (its derivative "
        "is unbounded), so no certified bound exists",
    )


@register(*DISCONTINUOUS)
def discontinuous_rule(ctx, eqn, ins):
    """A comparison, rounding or integer result: the outputs are tainted (no bound)."""
    return [Taint(f"'{eqn.primitive.name}'") for _ in eqn.outvars]


def _size(var) -> int:
    return math.prod(getattr(var.aval, "shape", ()))


def _broadcast(ctx, eqn, v: Dep, var) -> Dep:
    """A dependent operand of fewer entries than the output is copied (factor m^{1/p})."""
    m = _size(eqn.outvars[0]) // max(_size(var), 1)
    return v if m <= 1 else times(v, root_factor(m, ctx.p))


def _concrete(x):
    """``x`` as a NumPy array when it is known now, else None (a tracer)."""
    try:
        return np.asarray(x)
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _abs_const(c) -> jax.Array:
    """|c| in the bound dtype, subnormal entries raised to the smallest normal number (XLA on
    CPU flushes them to 0 in max/min, which would make a bound of 0)."""
    c = jnp.abs(jnp.asarray(c))
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(bound_dtype())
    return raise_subnormal(c.astype(jnp.promote_types(c.dtype, bound_dtype())))


@register("mul")
def mul_rule(ctx, eqn, ins):
    """c ⊙ u: L_u·max|c|; u ⊙ v with both dependent: refused."""
    deps = [i for i, v in enumerate(ins) if isinstance(v, Dep)]
    if len(deps) != 1:
        raise refuse(eqn, "a product of two input-dependent values is not globally Lipschitz")
    i = deps[0]
    v = _broadcast(ctx, eqn, ins[i], eqn.invars[i])
    return [times(v, Bound(jnp.max(_abs_const(ins[1 - i].value)), "exact"))]


@register("div")
def div_rule(ctx, eqn, ins):
    """u / c: L_u / min|c|; division by the input: refused."""
    if not isinstance(ins[1], Const):
        raise refuse(eqn, "division by an input-dependent value is not globally Lipschitz")
    c = jnp.abs(jnp.asarray(ins[1].value))  # not raised: a subnormal divisor must give inf
    c = c.astype(jnp.promote_types(c.dtype if jnp.issubdtype(c.dtype, jnp.floating)
                                   else bound_dtype(), bound_dtype()))
    known = _concrete(c)
    if known is not None and known.size and np.min(known) == 0:
        raise refuse(eqn, "division by a constant with a zero entry (the map is undefined)")
    v = _broadcast(ctx, eqn, ins[0], eqn.invars[0])
    return [times(v, Bound(jnp.max(1.0 / c), "exact"))]


@register("add", "sub", "add_any")
def add_rule(ctx, eqn, ins):
    """u ± c: L_u; u ± v: L_u + L_v."""
    deps = [_broadcast(ctx, eqn, v, var) for v, var in zip(ins, eqn.invars, strict=True)
            if isinstance(v, Dep)]
    return [dep_sum(deps)]


@register("max", "min", "clamp")
def max_rule(ctx, eqn, ins):
    """max/min with a constant: L_u; of two dependent values: (L_u^p + L_v^p)^{1/p}.

    clamp(lo, u, hi) = min(max(u, lo), hi) is the same rule over its three operands."""
    deps = [_broadcast(ctx, eqn, v, var) for v, var in zip(ins, eqn.invars, strict=True)
            if isinstance(v, Dep)]
    if len(deps) == 1:
        return [times(deps[0], constant_factor(1.0))]
    return [dep_pnorm(deps, ctx.p)]


@register("select_n")
def select_rule(ctx, eqn, ins):
    """Constant predicate: (Σ_i L_i^p)^{1/p} over the selected dependent cases."""
    pred, cases = ins[0], ins[1:]
    if not isinstance(pred, Const):
        raise refuse(eqn, "a selection whose predicate depends on the input is discontinuous")
    known = _concrete(pred.value)
    chosen = range(len(cases))
    if known is not None:
        chosen = sorted({int(i) for i in np.unique(known.astype(np.int64))})
    deps = [_broadcast(ctx, eqn, cases[i], eqn.invars[1 + i]) for i in chosen
            if isinstance(cases[i], Dep)]
    if not deps:  # only constant cases are selected: the output is constant
        vals = [c.value if isinstance(c, Const) else jnp.zeros(v.aval.shape, v.aval.dtype)
                for c, v in zip(cases, eqn.invars[1:], strict=True)]
        return [Const(jax.lax.select_n(pred.value, *vals))]
    return [dep_pnorm(deps, ctx.p)]
