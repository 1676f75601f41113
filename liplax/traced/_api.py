r"""Entry points: the traced bound of a function or an NNX module, and its log for penalties.

``lipschitz_bound(f, x)`` traces ``f`` at ``x`` (``jax.make_jaxpr``; for an ``nnx.Module`` with
its parameters and state as explicit arguments, so they are constants of the bound and may be
traced values of an outer ``jit``/``grad``) and propagates ℓp bounds through the jaxpr
(:mod:`liplax.traced._walk`). The bound holds for the map x ↦ f(x) on the whole array: for a
batched input and a per-example model (no mixing across the batch) it is also the per-example
constant, since the operator is block diagonal (docs/design.md §traced).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from liplax._checks import check_p
from liplax.guarantee import Bound
from liplax.traced._lip import Const, Dep, Taint, to_bound
from liplax.traced._walk import Ctx, propagate


def _input(x, name: str):
    if isinstance(x, jax.ShapeDtypeStruct):
        aval = x
    else:
        try:
            arr = jnp.asarray(x)
        except TypeError as e:
            raise TypeError(
                f"{name}: example_input must be an array, got {type(x).__name__}"
            ) from e
        aval = jax.ShapeDtypeStruct(arr.shape, arr.dtype)
    if not jnp.issubdtype(aval.dtype, jnp.floating) or jnp.finfo(aval.dtype).bits < 32:
        raise ValueError(
            f"{name}: example_input must be a float32 or float64 array, got dtype {aval.dtype}"
        )
    return aval


def _trace(f, aval):
    """(closed jaxpr, values of the leading non-input arguments)."""
    if isinstance(f, nnx.Module):
        graphdef, state = nnx.split(f)
        leaves, treedef = jax.tree.flatten(state)

        def pure(leaves, x):
            return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x)

        return jax.make_jaxpr(pure)(leaves, aval), list(leaves)
    if not callable(f):
        raise TypeError(f"lipschitz_bound: f must be a callable or an nnx.Module, got {f!r}")
    return jax.make_jaxpr(f)(aval), []


def lipschitz_bound(f, example_input, *, p=2) -> Bound:
    r"""A certified bound on the ℓp → ℓp Lipschitz constant of x ↦ f(x), read from its jaxpr.

    Every equation is bounded by a rule whose proof is in its module (linear maps by liplax's
    exact/upper operator norms, elementwise maps by their derivative bounds, sums by the
    triangle inequality, …); the bounds are combined along the program's data flow and rounded
    up. Anything that is not globally Lipschitz or not modelled raises ``ValueError`` naming
    the primitive and the line of the user's code.

    Args:
      f: a function of one float array (or an ``nnx.Module``, bounded with its current
        parameters and state; call ``model.eval()`` first for dropout/batch norm).
      example_input: an array or ``jax.ShapeDtypeStruct`` with the shape ``f`` is called with
        (including a batch axis if ``f`` expects one).
      p: 1, 2 or ``inf``.
    Returns:
      ``Bound`` of kind ``exact`` (one exact factor) or ``upper``; exactly 0 for a constant f.
      Non-finite parameters give a non-finite value (certification refuses it).
    """
    p = check_p(p, "lipschitz_bound")
    aval = _input(example_input, "lipschitz_bound")
    cj, leaves = _trace(f, aval)
    if len(cj.jaxpr.outvars) != 1:
        raise ValueError(
            f"lipschitz_bound: f must return one array, got {len(cj.jaxpr.outvars)} outputs"
        )
    ins = [Const(v) for v in leaves] + [Dep()]
    (out,) = propagate(Ctx(p), cj.jaxpr, list(cj.consts), ins)
    if isinstance(out, Taint):
        raise ValueError(
            f"lipschitz_bound: the output depends on the input through {out.origin}, which is "
            "discontinuous or integer-valued (no Lipschitz bound)"
        )
    if isinstance(out, Const):
        return Bound(jnp.zeros((), jnp.result_type(float)), "exact")
    return to_bound(out)


def log_bound(f, example_input, *, p=2) -> Bound:
    """log of :func:`lipschitz_bound` (natural log), differentiable in the parameters.

    Call it inside a jitted loss with the model being trained (``nnx.value_and_grad``): the
    parameters are traced values and the bound's factors (exact SVD / Gram iteration / induced
    norms) are differentiable, so ``loss + λ·log_bound(model, x).value`` penalizes the
    certified constant itself (no power-iteration state)."""
    b = lipschitz_bound(f, example_input, p=p)
    return Bound(jnp.log(b.value), b.kind)
