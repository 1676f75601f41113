r"""The propagation walker: one pass over a jaxpr, equation by equation, with a rule registry.

For every variable v the walker keeps a :class:`~liplax.traced._lip.Const` (its value), a
:class:`~liplax.traced._lip.Dep` (a bound on L(x ↦ v) in ℓp → ℓp) or a
:class:`~liplax.traced._lip.Taint`. An equation whose inputs are all constant is evaluated
(``primitive.bind``, as ``jax.core.eval_jaxpr`` does; with traced parameters this stays inside
the caller's trace). Otherwise a known activation starting at this equation is recognized
(:mod:`liplax.traced._activations`), or the primitive's rule from :data:`RULES` is applied.

The soundness argument is induction over the DAG: if every input bound holds, a rule's output
bound holds (each rule's docstring proves its own step); the function's output is an outvar.

A rule is ``rule(ctx, eqn, ins) -> list of values`` (one per outvar) and is registered with
:func:`register` (``RULES[name] = rule``); adding a primitive is one function and one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax._src import core

from liplax.traced._errors import refuse
from liplax.traced._lip import Const, Dep, Taint

RULES: dict[str, Callable] = {}

#: calls whose bodies are walked with tainted inputs (the refusal names the real consumer).
CALLS = frozenset({
    "jit", "pjit", "closed_call", "core_call", "remat2", "remat", "checkpoint",
    "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
})
#: primitives that move or convert a tainted value without arithmetic: the output is tainted.
TAINT_PASSING = frozenset({
    "convert_element_type", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor",
    "reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "slice", "rev",
    "concatenate", "copy", "copy_p",
})


def register(*names: str):
    """Decorator: ``rule`` bounds the primitives ``names``."""

    def wrap(rule):
        for name in names:
            RULES[name] = rule
        return rule

    return wrap


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Static settings of one propagation: the norm exponent p ∈ {1, 2, inf}."""

    p: float


def const_eval(eqn, values: list) -> list:
    """Evaluate ``eqn`` on constant inputs (as ``jax.core.eval_jaxpr`` does). Inputs known now
    are evaluated now, even inside a caller's ``jit`` (so a loop counter or a branch index
    built from literals stays known); traced inputs stay in the caller's trace."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if any(isinstance(v, jax.core.Tracer) for v in values):
        out = eqn.primitive.bind(*values, **params)
    else:
        with jax.ensure_compile_time_eval():
            out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _read(env: dict, v):
    if isinstance(v, core.Literal):
        return Const(v.val)
    return env[v]


def _check_dtype(eqn, var, val):
    """A dependent float output narrower than 32 bits rounds the map; non-float is a taint."""
    if not isinstance(val, Dep):
        return val
    dtype = getattr(var.aval, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise refuse(eqn, f"complex output {dtype} is not modelled")
        return Taint(f"'{eqn.primitive.name}' (output dtype {dtype})")
    if jnp.finfo(dtype).bits < 32:
        raise refuse(
            eqn,
            f"the input-dependent value is rounded to {jnp.dtype(dtype).name}, which changes the "
            "map by far more than float32 rounding; compute in float32 or wider",
        )
    return val


def _use_counts(jaxpr) -> dict:
    counts: dict = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, core.Literal):
                counts[v] = counts.get(v, 0) + 1
    for v in jaxpr.outvars:
        if not isinstance(v, core.Literal):
            counts[v] = counts.get(v, 0) + 1
    return counts


def propagate(ctx: Ctx, jaxpr, consts: list, ins: list) -> list:
    """The values of ``jaxpr``'s outvars from its constvars' values and its inputs' values."""
    from liplax.traced._activations import match_activation

    env: dict = {}
    for var, c in zip(jaxpr.constvars, consts, strict=True):
        env[var] = Const(c)
    for var, val in zip(jaxpr.invars, ins, strict=True):
        env[var] = val
    counts = None
    eqns = jaxpr.eqns
    i = 0
    while i < len(eqns):
        eqn = eqns[i]
        vals = [_read(env, v) for v in eqn.invars]
        if all(isinstance(v, Const) for v in vals):
            outs = [Const(o) for o in const_eval(eqn, [v.value for v in vals])]
        else:
            if counts is None:
                counts = _use_counts(jaxpr)
            hit = match_activation(ctx, eqns, i, env, counts)
            if hit is not None:
                n, outvar, val = hit
                env[outvar] = val
                i += n
                continue
            taints = [v for v in vals if isinstance(v, Taint)]
            if taints and eqn.primitive.name in TAINT_PASSING:
                for var in eqn.outvars:
                    env[var] = taints[0]
                i += 1
                continue
            for v in vals if eqn.primitive.name not in CALLS else ():
                if isinstance(v, Taint):
                    raise refuse(
                        eqn,
                        f"it uses a value that depends on the input through {v.origin}, which is "
                        "discontinuous or integer-valued (no Lipschitz bound)",
                    )
            rule = RULES.get(eqn.primitive.name)
            if rule is None:
                raise refuse(
                    eqn,
                    "no Lipschitz rule for this primitive (see liplax.traced.RULES; register one "
                    "with liplax.traced.register)",
                )
            outs = rule(ctx, eqn, vals)
        for var, val in zip(eqn.outvars, outs, strict=True):
            env[var] = _check_dtype(eqn, var, val)
        i += 1
    return [_read(env, v) for v in jaxpr.outvars]
