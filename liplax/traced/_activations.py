r"""Recognizing known activations in a jaxpr, by structure, never by name.

``jax.nn.gelu`` is inlined as ``x·(1 + tanh(…x³…))/2``, ``jax.nn.silu`` is a call of
``x·logistic(x)``, ``jax.nn.elu`` selects on ``x > 0``: products and selections of
input-dependent values that the rules refuse. Each known activation φ is traced here
(``jax.make_jaxpr``) at the aval of the value it would be applied to, and a run of equations of
the user's jaxpr starting at the current one is accepted as φ only if it is *the same program*:
same primitives, parameters, literals (bodies of calls compared recursively, the same way) and
data flow, with the one input mapped to the dependent value, and none of its intermediate values
used elsewhere. So a function named ``gelu`` that computes something else is walked into (and
refused if it multiplies input-dependent values), and a differently written gelu is not trusted.
Parameterized activations (``elu``'s α, ``leaky_relu``'s slope, ``celu``'s α) are traced twice:
with the default (which JAX bakes into the body) and with a sentinel literal argument, whose
position in the user's program gives the parameter. The constants and
their proofs are in :mod:`liplax.traced._constants`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core

from liplax.guarantee import Bound
from liplax.traced import _constants as K
from liplax.traced._lip import Dep, bound_dtype, constant_factor, times

SENTINEL = 0.3173828125  # exact in every float type ≥ 16 bits


def _fixed(value, kind="exact"):
    return lambda a: constant_factor(value, kind)


def _computed(fn):
    return lambda a: Bound(jnp.asarray(fn(jnp.asarray(a, bound_dtype())), bound_dtype()), "exact")


#: (name, reference function (x, a) -> y, uses the parameter a, factor(a) -> Bound)
ACTIVATIONS = (
    ("gelu_tanh", lambda x, a: jax.nn.gelu(x, approximate=True), False,
     lambda a: constant_factor(K.sup_derivative("gelu_tanh"), "upper")),
    ("gelu", lambda x, a: jax.nn.gelu(x, approximate=False), False,
     lambda a: constant_factor(K.sup_derivative("gelu"), "upper")),
    ("silu", lambda x, a: jax.nn.silu(x), False,
     lambda a: constant_factor(K.sup_derivative("silu"), "upper")),
    ("softplus", lambda x, a: jax.nn.softplus(x), False, _fixed(1.0)),
    ("log_sigmoid", lambda x, a: jax.nn.log_sigmoid(x), False, _fixed(1.0)),
    ("soft_sign", lambda x, a: jax.nn.soft_sign(x), False, _fixed(1.0)),
    ("hard_tanh", lambda x, a: jax.nn.hard_tanh(x), False, _fixed(1.0)),
    ("hard_silu", lambda x, a: jax.nn.hard_silu(x), False, _fixed(1.5)),
    ("selu", lambda x, a: jax.nn.selu(x), False,
     _fixed(K.SELU_SCALE * K.SELU_ALPHA * (1 + 1e-15), "upper")),
    ("elu", lambda x, a: jax.nn.elu(x), False, _fixed(1.0)),
    ("leaky_relu", lambda x, a: jax.nn.leaky_relu(x), False, _fixed(1.0)),
    ("celu", lambda x, a: jax.nn.celu(x), False, _fixed(1.0)),
    ("elu", lambda x, a: jax.nn.elu(x, a), True, _computed(K.elu_constant)),
    ("leaky_relu", lambda x, a: jax.nn.leaky_relu(x, a), True, _computed(K.elu_constant)),
    ("celu", lambda x, a: jax.nn.celu(x, a), True, _computed(K.celu_constant)),
)


@functools.cache
def _canonical(index: int, shape: tuple, dtype) -> core.ClosedJaxpr | None:
    ref = ACTIVATIONS[index][1]
    try:
        cj = jax.make_jaxpr(lambda x: ref(x, SENTINEL))(jax.ShapeDtypeStruct(shape, dtype))
    except (TypeError, ValueError):  # not defined for this dtype
        return None
    if cj.jaxpr.constvars or len(cj.jaxpr.invars) != 1 or len(cj.jaxpr.outvars) != 1:
        return None
    return cj


def _aval_eq(a, b) -> bool:
    return getattr(a, "shape", None) == getattr(b, "shape", None) and \
        getattr(a, "dtype", None) == getattr(b, "dtype", None)


def _lit_eq(pl, ul, binds: dict) -> bool:
    if not isinstance(ul, core.Literal) or not _aval_eq(pl.aval, ul.aval):
        return False
    pv, uv = np.asarray(pl.val), np.asarray(ul.val)
    if pv.shape == () and pv.dtype.kind == "f" and float(pv) == SENTINEL:
        binds.setdefault("a", float(uv))
        return binds["a"] == float(uv) or (np.isnan(binds["a"]) and np.isnan(float(uv)))
    return pv.shape == uv.shape and bool(np.array_equal(pv, uv))


def _atom_eq(p, u, m: dict, binds: dict) -> bool:
    if isinstance(p, core.Literal):
        return _lit_eq(p, u, binds)
    return not isinstance(u, core.Literal) and m.get(p) is u


def _param_eq(p, u, binds: dict) -> bool:
    if isinstance(p, core.ClosedJaxpr):
        return (isinstance(u, core.ClosedJaxpr) and not p.consts and not u.consts
                and _jaxpr_eq(p.jaxpr, u.jaxpr, binds))
    if isinstance(p, core.Jaxpr):
        return isinstance(u, core.Jaxpr) and _jaxpr_eq(p, u, binds)
    if isinstance(p, tuple | list):
        return (isinstance(u, tuple | list) and len(p) == len(u)
                and all(_param_eq(a, b, binds) for a, b in zip(p, u, strict=True)))
    if callable(p) and not isinstance(p, type):
        return type(p) is type(u)  # a custom derivative rule: changes gradients, not values
    try:
        return bool(p == u)
    except (TypeError, ValueError):
        return False


def _eqn_eq(pe, ue, m: dict, binds: dict) -> bool:
    if pe.primitive.name != ue.primitive.name or len(pe.invars) != len(ue.invars):
        return False
    if len(pe.outvars) != len(ue.outvars) or set(pe.params) != set(ue.params):
        return False
    if not all(_atom_eq(p, u, m, binds) for p, u in zip(pe.invars, ue.invars, strict=True)):
        return False
    if not all(_param_eq(pe.params[k], ue.params[k], binds) for k in pe.params):
        return False
    for p, u in zip(pe.outvars, ue.outvars, strict=True):
        if not _aval_eq(p.aval, u.aval):
            return False
        m[p] = u
    return True


def _jaxpr_eq(pj, uj, binds: dict) -> bool:
    if (len(pj.invars), len(pj.outvars), len(pj.eqns)) != \
            (len(uj.invars), len(uj.outvars), len(uj.eqns)) or pj.constvars or uj.constvars:
        return False
    if not all(_aval_eq(p.aval, u.aval) for p, u in zip(pj.invars, uj.invars, strict=True)):
        return False
    m = dict(zip(pj.invars, uj.invars, strict=True))
    if not all(_eqn_eq(p, u, m, binds) for p, u in zip(pj.eqns, uj.eqns, strict=True)):
        return False
    return all(_atom_eq(p, u, m, binds) for p, u in zip(pj.outvars, uj.outvars, strict=True))


def _window(cj, eqns, i: int, v, counts: dict):
    """(number of equations, output var, parameter binds) if eqns[i:] start with ``cj``'s
    program applied to ``v``, else None."""
    pat = cj.jaxpr
    n = len(pat.eqns)
    if n == 0 or i + n > len(eqns) or pat.eqns[0].primitive.name != eqns[i].primitive.name:
        return None
    m, binds = {pat.invars[0]: v}, {}
    for j in range(n):
        if not _eqn_eq(pat.eqns[j], eqns[i + j], m, binds):
            return None
    out = pat.outvars[0]
    if isinstance(out, core.Literal) or out not in m:
        return None
    out_var = m[out]
    inside: dict = {}
    for e in eqns[i:i + n]:
        for a in e.invars:
            if not isinstance(a, core.Literal):
                inside[a] = inside.get(a, 0) + 1
    for e in eqns[i:i + n]:
        for o in e.outvars:
            if o is not out_var and counts.get(o, 0) != inside.get(o, 0):
                return None  # an intermediate value is used outside the activation
    return n, out_var, binds


def match_activation(ctx, eqns, i: int, env: dict, counts: dict):
    """(n, outvar, value) when eqns[i:i+n] compute a known activation of a dependent value."""
    eqn = eqns[i]
    for v in eqn.invars:
        if isinstance(v, core.Literal) or not isinstance(env.get(v), Dep):
            continue
        aval = v.aval
        if not jnp.issubdtype(aval.dtype, jnp.floating):
            continue
        for index, (_, _, uses_param, factor) in enumerate(ACTIVATIONS):
            cj = _canonical(index, tuple(aval.shape), jnp.dtype(aval.dtype))
            if cj is None:
                continue
            hit = _window(cj, eqns, i, v, counts)
            if hit is None or (uses_param and "a" not in hit[2]):
                continue
            n, out_var, binds = hit
            return n, out_var, times(env[v], factor(binds.get("a")))
    return None
