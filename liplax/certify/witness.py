r"""An attained lower bound on demand, with its witness re-checked in float64.

:func:`attained_lower_bound` runs the two searches of :mod:`liplax.certify.lower_bound` with a
budget the caller chooses (ascent ``steps``, ``restarts`` of the power/pair search, Adam ascent
on the exact local norm from the origin, ``data_starts`` data points and ``noise_starts`` uniform
points in [0, 1]^d), then re-evaluates every candidate witness on a float64 copy of the network
and reports the best **re-checked** value:

- *local* witness (x, v): the gain ‖J(x)v‖_p / ‖v‖_p, J the Jacobian at x (``jax.jvp`` of the
  float64 network), v the maximizing direction of the float64 Jacobian at x (ℓ2: its top right
  singular vector; ℓ∞: the signs of its row of largest ℓ1 norm; ℓ1: the basis vector of its
  column of largest ℓ1 norm). Where f is differentiable at x this is ≤ Lip_p(f): J(x)v is the
  limit of the difference quotients (f(x + tv) − f(x))/t.
- *pair* witness (x, y): ‖f(x) − f(y)‖_p / ‖x − y‖_p ≤ Lip_p(f) with no assumption at all.

Guarantee: ``estimate`` from below: the reported value is one the network attains at the saved
witness (up to float64 rounding of the forward pass, relative ≈ 1e-16·depth), never assumed;
:func:`witness_gain` recomputes it from the witness alone. See ``docs/design.md §lower-bounds``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liplax import _checks
from liplax.certify.local_ascent import _function_and_points, local_norm_ascent
from liplax.certify.lower_bound import lipschitz_lower_bound
from liplax.nn import check_p

KINDS = ("local", "pair")


class Witness(NamedTuple):
    """An attained gain and where: ``kind`` ``local`` (x, second = v) or ``pair`` (x, second = y).

    ``value``: the float64 re-checked gain (:func:`witness_gain`); ``search_value``: what the
    float32 search reported for it; ``candidates``: every re-checked finite candidate, by name.
    """

    kind: str
    value: float
    search_value: float
    x: np.ndarray
    second: np.ndarray
    candidates: dict


def _model64(model):
    """A float64 copy of an NNX model (call inside ``jax.enable_x64(True)``); a plain function
    is returned as it is (it sees float64 inputs)."""
    if not isinstance(model, nnx.Module):
        return model
    graphdef, state = nnx.split(model)

    def cast(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return nnx.merge(graphdef, jax.tree.map(cast, state))


def _pnorm(v: np.ndarray, p: float) -> float:
    v = np.ravel(np.asarray(v, np.float64))
    if p == math.inf:
        return float(np.max(np.abs(v)))
    if p == 1:
        return float(np.sum(np.abs(v)))
    return float(np.linalg.norm(v))


def witness_gain(model, kind: str, x, second, *, p: float | str = 2) -> float:
    """The gain the model attains at a witness, evaluated in float64 (module doc).

    ``model`` maps a batch ``(n, ...)`` to outputs (an NNX model in eval mode); ``x`` and
    ``second`` are one input each (no batch axis). ``local``: ‖J(x)v‖_p/‖v‖_p with v = second;
    ``pair``: ‖f(x) − f(y)‖_p/‖x − y‖_p with y = second. A zero v or x = y is refused.
    """
    p = check_p(p, "witness_gain")
    if kind not in KINDS:
        raise ValueError(f"witness_gain: kind must be one of {KINDS}, got {kind!r}")
    x = np.asarray(x, np.float64)
    second = np.asarray(second, np.float64)
    if x.shape != second.shape:
        raise ValueError(f"witness_gain: x {x.shape} and its partner {second.shape} differ")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(second))):
        raise ValueError("witness_gain: the witness must be finite")
    den = _pnorm(second if kind == "local" else x - second, p)
    if not den > 0:
        raise ValueError("witness_gain: the direction v of a local witness is 0" if kind == "local"
                         else "witness_gain: a pair witness needs x ≠ y")
    with jax.enable_x64(True):
        m64 = _model64(model)

        def f(z):
            return m64(z[None])[0]

        if kind == "local":
            num = np.asarray(jax.jvp(f, (jnp.asarray(x),), (jnp.asarray(second),))[1])
        else:
            num = np.asarray(f(jnp.asarray(x))) - np.asarray(f(jnp.asarray(second)))
    return _pnorm(num, p) / den


def top_direction(model, x, *, p: float | str = 2) -> np.ndarray:
    """The direction v maximizing ‖J(x)v‖_p/‖v‖_p for the float64 Jacobian J(x) (module doc)."""
    p = check_p(p, "top_direction")
    x = np.asarray(x, np.float64)
    with jax.enable_x64(True):
        m64 = _model64(model)
        jac = jax.jacrev(lambda z: m64(z.reshape(x.shape)[None]).reshape(-1))(
            jnp.asarray(x.reshape(-1))
        )
        jac = np.asarray(jac, np.float64)
    if p == 2:
        v = np.linalg.svd(jac, full_matrices=False)[2][0]
    elif p == math.inf:
        v = np.sign(jac[int(np.argmax(np.sum(np.abs(jac), axis=1)))])
    else:
        v = np.zeros(jac.shape[1])
        v[int(np.argmax(np.sum(np.abs(jac), axis=0)))] = 1.0
    return v.reshape(x.shape)


def attained_lower_bound(
    model, xs, *, key: jax.Array, p: float | str = 2, steps: int = 200, restarts: int = 8,
    data_starts: int = 16, noise_starts: int = 8,
) -> Witness:
    """The best attained gain of ``model`` found with this budget, with its witness (module doc).

    Args:
      model: an NNX model in eval mode mapping ``(n, ...)`` inputs to outputs.
      xs: ``(n, ...)`` data points (the starts are drawn from them).
      key: a ``jax.random`` key (the searches and the choice of starts).
      p: 2, 1 or inf.
      steps: iterations of each search stage (≥ 1).
      restarts: restarts of :func:`liplax.certify.lipschitz_lower_bound` (≥ 1).
      data_starts, noise_starts: starts of the exact local-norm ascent drawn from ``xs``
        (without replacement, at most n) and uniform in [0, 1]^d (both ≥ 0); the origin and the
        power search's witness are always starts too.
    Returns:
      a :class:`Witness`; its ``value`` is re-checked in float64 and ≤ the Lipschitz constant.
    """
    p = check_p(p, "attained_lower_bound")
    steps = _checks.num_iters(steps, "steps", minimum=1)
    restarts = _checks.num_iters(restarts, "restarts", minimum=1)
    data_starts = _checks.num_iters(data_starts, "data_starts", minimum=0)
    noise_starts = _checks.num_iters(noise_starts, "noise_starts", minimum=0)
    xs = _function_and_points(model, xs, "xs")
    k_lb, k_data, k_noise = jax.random.split(key, 3)
    graphdef, state = nnx.split(model)

    def single_of(st):
        m = nnx.merge(graphdef, st)
        return lambda z: m(z[None])[0]

    lb = lipschitz_lower_bound(single_of(state), xs, key=k_lb, p=p, steps=steps,
                               restarts=restarts)
    n_data = min(data_starts, xs.shape[0])
    chosen = jax.random.choice(k_data, xs.shape[0], (n_data,), replace=False)
    noise = jax.random.uniform(k_noise, (noise_starts, *xs.shape[1:]), xs.dtype)
    starts = jnp.concatenate([jnp.zeros_like(xs[:1]), lb.point[None], xs[chosen], noise])
    asc = jax.jit(lambda st, s: local_norm_ascent(single_of(st), s, p=p, steps=steps))(
        state, starts
    )
    found = {}
    for name, point, reported in (("local_ascent", asc.point, asc.value),
                                  ("local_power", lb.point, lb.local_gain)):
        v = top_direction(model, point, p=p)
        found[name] = ("local", np.asarray(point, np.float64), v, float(reported))
    if float(lb.pair_ratio) > 0:
        found["pair"] = ("pair", np.asarray(lb.x, np.float64), np.asarray(lb.y, np.float64),
                         float(lb.pair_ratio))
    usable = {name: c for name, c in found.items()  # a nonzero v, or x ≠ y
              if (np.any(c[2] != 0) if c[0] == "local" else np.any(c[1] != c[2]))}
    checked = {name: witness_gain(model, kind, a, b, p=p)
               for name, (kind, a, b, _) in usable.items()}
    finite = {k: v for k, v in checked.items() if math.isfinite(v)}
    if not finite:
        raise ValueError(f"attained_lower_bound: no finite gain found (candidates {checked}); "
                         f"is the network finite?")
    best = max(finite, key=lambda k: finite[k])
    kind, a, b, reported = found[best]
    return Witness(kind, finite[best], reported, a, b, finite)


def save_witness(path, witness: Witness, *, p: float) -> None:
    """Write the witness as ``.npz``: ``kind``, ``x`` and ``v`` (local) or ``y`` (pair), ``gain``
    (the float64 value), ``search_value`` and ``p``."""
    second = "v" if witness.kind == "local" else "y"
    np.savez(path, kind=np.array(witness.kind), x=witness.x, **{second: witness.second},
             gain=np.float64(witness.value), search_value=np.float64(witness.search_value),
             p=np.float64(p))


__all__ = [
    "KINDS", "Witness", "attained_lower_bound", "save_witness", "top_direction", "witness_gain",
]
