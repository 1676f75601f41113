"""The layer contract, checked on every registered layer (``liplax.nn.registry``).

Parametrized from the registry, so a newly registered layer is covered by registering it. For
each layer's registered example (float32, as users build it):

- ``lipschitz_bound`` for p = 1, 2, ∞ is ≥ the induced norm of the float64 Jacobian of the map
  at random inputs and at 0 (``exact`` within its documented rounding margin, ``upper`` with
  no tolerance); the Jacobian is taken with float64 inputs against the layer's float32
  parameters, so it is the derivative of the map the layer applies; p = 3 and p outside
  ``supported_p`` are refused by name;
- ``output_shape`` equals the shape of the call;
- ``eval()`` (``nnx.view(deterministic=True)``) freezes the state: two calls give the same
  output and no variable moves (and for a layer registered with a power role, training mode
  does move its power state, so the freeze is not vacuous);
- ``to_plain`` computes the same function; jit and vmap agree with the eager call, and the
  jitted bound with the eager bound;
- a registered power role is the layer's own path: ``power_step`` on the layer alone gives its
  ``lipschitz_estimate`` (``"estimate"``), ``grouped_call`` gives its forward (``"forward"``).
"""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax.grouped import grouped_call
from liplax.guarantee import Bound, exact_margin
from liplax.nn.registry import registered
from tests.nn_helpers import P_ALL, induced_norm, rngs

ENTRIES = registered()
IDS = [e.cls.__name__ for e in ENTRIES]


def _build(entry):
    layer, shape = entry.example(rngs(0))
    assert type(layer) is entry.cls, "the example must build exactly the registered class"
    return layer, tuple(shape)


def _inputs(shape, n=3, seed=1) -> np.ndarray:
    """n random per-example inputs and the origin, float64."""
    x = 2.0 * np.random.default_rng(seed).standard_normal((n, *shape))
    return np.concatenate([x, np.zeros((1, *shape))])


def _state(layer) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(nnx.state(layer))]


def _jacobian_norms(layer, shape) -> dict:
    """max over the inputs of ‖J(x)‖_p, J the float64 Jacobian of x ↦ layer(x[None])[0]."""
    with jax.enable_x64(True):
        def f(xflat):
            return layer(xflat.reshape(1, *shape))[0].reshape(-1)

        xs = jnp.asarray(_inputs(shape).reshape(4, -1), jnp.float64)
        js = np.asarray(jax.jit(jax.vmap(jax.jacfwd(f)))(xs), np.float64)
    assert js.dtype == np.float64
    return {p: max(float(induced_norm(j, p)) for j in js) for p in P_ALL}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_bound_is_above_the_float64_jacobian(entry):
    layer, shape = _build(entry)
    layer.eval()
    truth = _jacobian_norms(layer, shape)
    ps = [p for p in P_ALL if p in layer.supported_p]
    bounds = nnx.jit(lambda m: [m.lipschitz_bound(shape, p=p) for p in ps])(layer)
    for p, b in zip(ps, bounds, strict=True):
        assert b.kind in ("exact", "upper"), (p, b.kind)
        value = float(b.value)
        assert np.isfinite(value)
        if b.kind == "exact":
            assert value >= truth[p] * (1 - exact_margin(np.float32)), (p, value, truth[p])
        else:
            assert value >= truth[p], (p, value, truth[p])
    name = entry.cls.__name__
    for p in set(P_ALL) - set(ps):
        with pytest.raises(ValueError, match=re.escape(f"{name}.lipschitz_bound: p={p} is not")):
            layer.lipschitz_bound(shape, p=p)
    for method in ("lipschitz_bound", "lipschitz_estimate"):
        with pytest.raises(ValueError, match=re.escape(f"{name}.{method}: p must be 1, 2 or inf")):
            getattr(layer, method)(shape, p=3)
    # the eager call is the jitted one (p = ∞: the cheapest norm of every layer, eagerly)
    eager = layer.lipschitz_bound(shape, p=math.inf)
    assert eager.kind == bounds[-1].kind
    np.testing.assert_allclose(float(eager.value), float(bounds[-1].value), rtol=1e-5)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_shapes_eval_export_jit_vmap(entry):
    layer, shape = _build(entry)
    x = jnp.asarray(_inputs(shape), jnp.float32)
    view = nnx.view(layer, deterministic=True)
    before = _state(layer)
    call = nnx.jit(lambda m, x: m(x))
    y = view(x)
    chex.assert_shape(y, (x.shape[0], *layer.output_shape(shape)))
    assert layer.output_shape(list(shape)) == layer.output_shape(shape)
    jitted = call(view, x)
    chex.assert_trees_all_close(jitted, y, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(call(view, x), jitted)
    nnx.jit(lambda m: m.lipschitz_estimate(shape, p=2))(view)
    chex.assert_trees_all_equal(_state(layer), before)  # inference mode moves nothing

    plain = ln.to_plain(view)
    chex.assert_trees_all_close(plain(x), y, rtol=1e-5, atol=1e-6)
    mapped = jax.vmap(lambda xi: view(xi[None])[0])(x)
    chex.assert_trees_all_close(mapped, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.power], ids=lambda e: e.cls.__name__)
def test_power_role_is_the_layers_own_path(entry):
    layer, shape = _build(entry)
    ref, _ = _build(entry)
    x = jnp.asarray(_inputs(shape), jnp.float32)
    before = _state(layer)
    if entry.power == "estimate":
        layer.power_key(shape)
        sigma, u = nnx.jit(lambda m: m.power_step(m.kernel[...][None],
                                                  m.power_state[...][None]))(layer)
        est = nnx.jit(lambda m: m.lipschitz_estimate(shape, p=2))(ref)
        assert est.kind == "estimate"
        np.testing.assert_allclose(float(sigma[0]), float(est.value), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(u[0]), np.asarray(ref.power_state[...]),
                                   rtol=1e-4, atol=1e-6)
    else:
        got = nnx.jit(grouped_call)(layer, x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(nnx.jit(lambda m, x: m(x))(ref, x)),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(layer.power_state[...]),
                                   np.asarray(ref.power_state[...]), rtol=1e-4, atol=1e-6)
    moved = any(not np.array_equal(a, b) for a, b in zip(before, _state(ref), strict=True))
    assert moved, "training mode must move the power state (else eval() freezes nothing)"


class _OnlyL2(ln.LipschitzModule):
    """A layer that bounds p = 2 only: the template refuses the others by name."""

    supported_p = (2,)

    def __call__(self, x):
        return x

    def _output_shape(self, shape):
        return shape

    def _bound(self, shape, p):
        return Bound(jnp.asarray(1.0), "exact")


def test_template_checks_p_and_shape_once_for_every_layer():
    layer = _OnlyL2()
    assert float(layer.lipschitz_bound((3,), p=2).value) == 1.0
    with pytest.raises(ValueError, match=r"_OnlyL2.lipschitz_bound: p=1 is not supported"):
        layer.lipschitz_bound((3,), p=1)
    with pytest.raises(ValueError, match=r"_OnlyL2.lipschitz_estimate: p=inf is not supported"):
        layer.lipschitz_estimate((3,), p=math.inf)
    for entry in ENTRIES:
        built, _ = _build(entry)
        with pytest.raises(ValueError, match=re.escape(f"{entry.cls.__name__}: input_shape must")):
            built.lipschitz_bound((0,), p=2)
