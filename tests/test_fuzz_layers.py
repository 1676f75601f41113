"""Fuzz over the layer registry: every registered layer's certificate at random weights and
scales, so a newly registered layer is fuzzed by registering it.

For each registered layer (``liplax.nn.registry``), its example is rebuilt with every parameter
redrawn (a seed) and multiplied by 10^k, k from −30 to 30 (float32 weights from near-subnormal
to near-overflow); inputs are drawn at a scale 10^j. The truth is the float64 Jacobian of the
map the float32 layer applies (float64 inputs against the float32 parameters), at three random
points and the origin: its induced ℓp norm is a lower bound on the layer's constant. Property:
a finite ``lipschitz_bound`` is ≥ that truth (``exact`` within its rounding margin, ``upper``
with no tolerance) for p = 1, 2, ∞; a non-finite bound is allowed only where the bound itself
is refused by certification (it is inf or NaN, never a finite wrong value). Each layer compiles
its bound and its Jacobian once (the parameters are arguments).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import event, given, note
from hypothesis import strategies as st

from liplax.guarantee import exact_margin
from liplax.nn.registry import registered
from tests.nn_helpers import P_ALL, induced_norm, rngs

ENTRIES = {e.cls.__name__: e for e in registered()}


@functools.cache
def _programs(name: str):
    """(graphdef, float32 params, other state, shape, bounds(params), jacobians(params, xs))."""
    layer, shape = ENTRIES[name].example(rngs(0))
    layer.eval()
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    @jax.jit
    def bounds(params):
        m = nnx.merge(graphdef, params, rest)
        return [m.lipschitz_bound(shape, p=p) for p in P_ALL]

    def jacobians(params, xs):
        def f(xflat):
            m = nnx.merge(graphdef, params, rest)
            return m(xflat.reshape(1, *shape))[0].reshape(-1)

        return jax.vmap(jax.jacfwd(f))(xs)

    return graphdef, params, rest, tuple(shape), bounds, jax.jit(jacobians)


@given(st.sampled_from(sorted(ENTRIES)), st.integers(0, 2**31 - 1), st.integers(-30, 30),
       st.integers(-3, 3))
def test_every_registered_layer_bound_is_sound_at_every_scale(name, seed, k, j):
    _, params, _, shape, bounds, jacobians = _programs(name)
    key = jax.random.key(seed)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves) + 1)
    scale = np.float32(10.0**k)
    drawn = [(jax.random.normal(kk, leaf.shape, leaf.dtype) * scale).astype(leaf.dtype)
             for kk, leaf in zip(keys[1:], leaves, strict=True)]
    params = jax.tree_util.tree_unflatten(tree, drawn)
    found = bounds(params)
    n = math.prod(shape)
    xs = 10.0**j * np.random.default_rng(seed).standard_normal((3, n))
    xs = np.concatenate([xs, np.zeros((1, n))])
    with jax.enable_x64(True):
        js = np.asarray(jacobians(params, jnp.asarray(xs, jnp.float64)), np.float64)
    for p, b in zip(P_ALL, found, strict=True):
        value = float(b.value)
        finite = [jj for jj in js if np.all(np.isfinite(jj))]
        truth = max((float(induced_norm(jj, p)) for jj in finite), default=math.nan)
        note(f"{name} p={p} k={k} j={j}: kind={b.kind} bound={value!r} truth={truth!r}")
        assert b.kind in ("exact", "upper")
        event(f"p={p}: {'finite' if math.isfinite(value) else 'non-finite'} bound")
        if not math.isfinite(value):
            continue  # refused by certification (inf or NaN), never a finite wrong value
        assert len(finite) == len(js), "a finite bound for a map with a non-finite Jacobian"
        if b.kind == "exact":
            assert value >= truth * (1 - exact_margin(np.float32)), (value, truth)
        else:
            assert value >= truth, (value, truth)
