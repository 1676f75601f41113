r"""Rules for calls and control flow: the walker goes into the bodies.

- ``jit``/``pjit``, ``closed_call``, ``core_call``, ``remat``/``checkpoint``,
  ``custom_jvp_call``, ``custom_vjp_call``: the body computes the same function as the call
  (custom derivative rules change gradients, not values), so the body's bounds are the call's.
  A known activation is recognized *before* its call is entered
  (:mod:`liplax.traced._activations`).
- ``cond`` with a constant index: the output is one branch's output, so L ≤ max over the branches
  (only the taken branch when the index is known now). An input-dependent index is refused (a
  discontinuous switch).
- ``scan`` of fixed length T: unrolled, the body is propagated T times with the carries' bounds
  (L of carry_{t+1} from L of carry_t); the stacked outputs ys are the concatenation of the T
  per-step outputs: (Σ_t L_t^p)^{1/p}.
- ``while``: walked like ``scan`` when its predicate depends only on constants known at trace
  time (then the trip count is the same for every input); otherwise refused (use
  ``lax.fori_loop`` with Python-int bounds, which is a ``scan``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from liplax.traced._errors import inside, refuse
from liplax.traced._lip import Const, Dep, Taint, dep_max, dep_pnorm
from liplax.traced._walk import propagate, register


def _closed(j):
    """(jaxpr, consts) of a ClosedJaxpr or an open Jaxpr."""
    if hasattr(j, "jaxpr") and hasattr(j, "consts"):
        return j.jaxpr, list(j.consts)
    return j, []


def _body_rule(param: str):
    def rule(ctx, eqn, ins):
        jaxpr, consts = _closed(eqn.params[param])
        return inside(eqn, lambda: propagate(ctx, jaxpr, consts, ins))

    rule.__doc__ = f"Walk into the body ``{param}``: the call computes what its body computes."
    return rule


for _name, _param in (("jit", "jaxpr"), ("pjit", "jaxpr"), ("closed_call", "call_jaxpr"),
                      ("core_call", "call_jaxpr"), ("remat2", "jaxpr"), ("checkpoint", "jaxpr"),
                      ("remat", "jaxpr"), ("custom_jvp_call", "call_jaxpr"),
                      ("custom_vjp_call", "call_jaxpr"), ("custom_vjp_call_jaxpr", "fun_jaxpr")):
    register(_name)(_body_rule(_param))


@register("cond")
def cond_rule(ctx, eqn, ins):
    """Constant index: max over the (taken) branches of the output bounds."""
    index, ops = ins[0], ins[1:]
    if not isinstance(index, Const):
        raise refuse(eqn, "a branch chosen by an input-dependent value is discontinuous")
    branches = eqn.params["branches"]
    known = _known_index(index.value)
    taken = range(len(branches)) if known is None else [min(max(known, 0), len(branches) - 1)]
    results = [inside(eqn, lambda b=b: propagate(ctx, *_closed(branches[b]), ops))
               for b in taken]
    outs = []
    for k in range(len(eqn.outvars)):
        vals = [r[k] for r in results]
        taint = [v for v in vals if isinstance(v, Taint)]
        deps = [v for v in vals if isinstance(v, Dep)]
        if taint:
            outs.append(taint[0])
        elif deps:
            outs.append(dep_max(deps))
        elif len(vals) == 1:
            outs.append(vals[0])
        else:
            stacked = jnp.stack([jnp.asarray(v.value) for v in vals])
            i = jnp.clip(jnp.asarray(index.value, jnp.int32), 0, len(vals) - 1)
            outs.append(Const(stacked[i]))
    return outs


def _known_index(x):
    try:
        return int(np.asarray(x))
    except TypeError:  # a tracer: the index is not known now
        return None


@register("scan")
def scan_rule(ctx, eqn, ins):
    """Fixed length T: the body propagated T times; ys combined as a concatenation."""
    prm = eqn.params
    n_consts, n_carry, length = prm["num_consts"], prm["num_carry"], int(prm["length"])
    jaxpr, consts = _closed(prm["jaxpr"])
    body_consts, carry = ins[:n_consts], ins[n_consts:n_consts + n_carry]
    xs = ins[n_consts + n_carry:]
    ys_steps: list[list] = []
    order = range(length - 1, -1, -1) if prm["reverse"] else range(length)
    for t in order:
        x_t = [Const(x.value[t]) if isinstance(x, Const) else x for x in xs]
        step_ins = [*body_consts, *carry, *x_t]
        outs = inside(eqn, lambda a=step_ins: propagate(ctx, jaxpr, consts, a))
        carry, ys = outs[:n_carry], outs[n_carry:]
        ys_steps.append((t, ys))
    ys_steps.sort(key=lambda e: e[0])
    stacked = []
    for k in range(len(eqn.outvars) - n_carry):
        vals = [ys[k] for _, ys in ys_steps]
        taint = [v for v in vals if isinstance(v, Taint)]
        deps = [v for v in vals if isinstance(v, Dep)]
        if taint:
            stacked.append(taint[0])
        elif deps:
            stacked.append(dep_pnorm(deps, ctx.p))
        else:
            stacked.append(Const(jnp.stack([jnp.asarray(v.value) for v in vals])))
    return [*carry, *stacked]


MAX_WHILE_STEPS = 10_000


@register("while")
def while_rule(ctx, eqn, ins):
    """A loop whose predicate depends only on constants (a counter) has a trip count that is
    the same for every input: it is found by evaluating the predicate, and the body is
    propagated that many times (as ``scan``). An input-dependent or unknown (traced) predicate,
    or more than ``MAX_WHILE_STEPS`` steps, is refused."""
    prm = eqn.params
    nc, nb = prm["cond_nconsts"], prm["body_nconsts"]
    cond_consts, body_consts, carry = ins[:nc], ins[nc:nc + nb], list(ins[nc + nb:])
    cj, cc = _closed(prm["cond_jaxpr"])
    bj, bc = _closed(prm["body_jaxpr"])
    for _ in range(MAX_WHILE_STEPS + 1):
        (pred,) = inside(eqn, lambda a=[*cond_consts, *carry]: propagate(ctx, cj, cc, a))
        if not isinstance(pred, Const):
            raise refuse(eqn, "the loop's trip count depends on the input (use a fixed count)")
        known = _known_index(pred.value)
        if known is None:
            raise refuse(
                eqn,
                "the loop's trip count is not known at trace time; use lax.fori_loop with "
                "Python-int bounds (a scan) or lax.scan",
            )
        if not known:
            return carry
        carry = inside(eqn, lambda a=[*body_consts, *carry]: propagate(ctx, bj, bc, a))
    raise refuse(eqn, f"more than {MAX_WHILE_STEPS} iterations")
