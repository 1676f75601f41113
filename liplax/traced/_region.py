r"""Custom layers: a region of the program with a bound the user supplies.

``bounded(fn, bound)`` returns a function computing ``fn(x)`` whose trace is one call named
``liplax_bound_region`` taking (x, L) with L = ``bound.value``; the walker does not look inside
and bounds the region by L (``upper``): L_out ≤ L·L_x. Use it in a module's ``__call__`` to
contribute a tighter (or the only available) bound for a sub-computation, e.g. an orthogonal
layer whose constant is 1 by construction, or a block bounded by LipSDP. The bound must be
certified (``exact``/``upper``): the caller is responsible for it being a Lipschitz constant of
``fn`` in the ℓp norm the traced bound is asked for. L may be computed from the parameters (a
traced value inside a training step), so the penalty sees its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from liplax.guarantee import Bound, require_certified
from liplax.traced._errors import refuse
from liplax.traced._lip import Const, Dep, times
from liplax.traced._walk import RULES

REGION_NAME = "liplax_bound_region"


def bounded(fn: Callable, bound: Bound) -> Callable:
    """``fn`` as one region of the trace, bounded by ``bound`` (certified) in ℓp → ℓp."""
    require_certified(bound, name="bound")

    def liplax_bound_region(x, lip):
        return fn(x)

    region = jax.jit(liplax_bound_region)

    def call(x):
        return region(x, jnp.asarray(bound.value))

    return call


def _region_or_body(body_rule):
    def rule(ctx, eqn, ins):
        if eqn.params.get("name") != REGION_NAME:
            return body_rule(ctx, eqn, ins)
        x, lip = ins
        if not isinstance(lip, Const):
            raise refuse(eqn, "a region's bound must not depend on the input")
        if not isinstance(x, Dep):
            return body_rule(ctx, eqn, ins)
        out = times(x, Bound(jnp.asarray(lip.value, jnp.result_type(float)), "upper"))
        return [out for _ in eqn.outvars]

    rule.__doc__ = body_rule.__doc__
    return rule


for _name in ("jit", "pjit"):
    RULES[_name] = _region_or_body(RULES[_name])
