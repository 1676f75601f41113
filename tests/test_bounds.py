"""liplax.bounds: trivial bound, its log, the penalty (values, gradients, training), bad input."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import bounds
from tests.nn_helpers import rngs

F64 = {"param_dtype": jnp.float64}


def _mlp(r, **kw):
    return ln.Sequential(
        ln.Dense(5, 6, rngs=r, **kw), ln.MaxMin(), ln.Dense(6, 4, rngs=r, **kw), ln.GroupSort(2),
        ln.Dense(4, 3, rngs=r, **kw),
    )


def _cnn(r, **kw):
    return ln.Sequential(
        ln.Conv(1, 2, 3, input_size=(5, 5), rngs=r, **kw), ln.MaxMin(), ln.Flatten(),
        ln.Dense(50, 3, rngs=r, **kw),
    )


_PENALTY = nnx.jit(
    lambda m, shape, p, kind, target, fast: bounds.trivial_bound_penalty(
        m, shape, p=p, kind=kind, target=target, fast=fast
    ),
    static_argnums=(1, 2, 3, 4, 5),
)


_FAST_STEP = nnx.jit(lambda m, shape: bounds.trivial_bound_penalty(m, shape), static_argnums=1)


def _converge(model, shape, calls=300):
    """Training-mode penalty calls: one warm power-iteration step each, then inference mode."""
    for _ in range(calls):
        _FAST_STEP(model, shape)
    model.eval()


@functools.partial(nnx.jit, static_argnums=(1, 2, 3))
def _all_penalties(model, shape, p, target):
    """Every penalty kind, certified, plus the fast product (one compilation per p)."""
    pen = functools.partial(bounds.trivial_bound_penalty, model, shape, p=p)
    return [pen(kind="log", fast=False), pen(kind="product", fast=False),
            pen(kind="hinge", target=target, fast=False),
            pen(kind="hinge", target=4 * target, fast=False), pen(kind="product", fast=True)]


def test_penalty_values_match_bounds():
    model = _mlp(rngs(0))
    for p in (1, 2, math.inf):
        triv = float(bounds.trivial_bound(model, (5,), p=p).value)
        log = float(bounds.log_trivial_bound(model, (5,), p=p).value)
        assert log == pytest.approx(math.log(triv), rel=1e-5)
        target = float(np.float32(triv / 2))
        pen_log, product, hinge, hinge_zero, fast = map(
            float, _all_penalties(model, (5,), p, target))
        assert pen_log == pytest.approx(log, rel=1e-5)
        assert product == pytest.approx(triv, rel=1e-5)
        assert hinge == pytest.approx(triv - target, rel=1e-4)
        assert hinge_zero == 0.0
        if p == 2:  # power iteration approaches each factor from below
            assert fast <= triv * (1 + 1e-6)
        else:  # ℓ1/ℓ∞ factors are exact and cheap: the fast path uses them. The certificate
            # is their product rounded up by guarantee.product_margin (2·(64u per exact factor
            # + u per product)); the penalty is not rounded.
            assert fast <= triv and fast == pytest.approx(triv, rel=1e-4)


# every kind in ℓ2 (certified and fast); the ℓ1/ℓ∞ factors are the same for every kind.
COMBOS = [(1, "log", False), (math.inf, "log", False)] + [
    (2, kind, fast) for kind in ("log", "product", "hinge") for fast in (False, True)
]


@pytest.mark.parametrize(
    "build,shape,combos",
    [
        (_mlp, (5,), COMBOS),
        # the convolution's fast ℓ2 factor (warm power iteration on the real operator); the
        # certified ones (Gram bound, ℓ1/ℓ∞ sums) with every kind in the slow run
        (_cnn, (5, 5, 1), [(2, "log", True)]),
        pytest.param(_cnn, (5, 5, 1), COMBOS, marks=pytest.mark.slow),
    ],
)
def test_penalty_gradients_match_finite_differences(build, shape, combos):
    with jax.enable_x64(True):
        model = build(rngs(1), **F64)
        _converge(model, shape)  # fast ℓ2 gradients are exact at the power-iteration fixed point
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        triv2 = float(bounds.trivial_bound(model, shape).value)

        def penalties(params):
            m = nnx.merge(graphdef, params, rest)
            return jnp.stack([
                bounds.trivial_bound_penalty(
                    m, shape, p=p, kind=kind, target=triv2 / 3 if kind == "hinge" else None,
                    fast=fast,
                )
                for p, kind, fast in combos
            ])

        f = jax.jit(penalties)
        jac = jax.jit(jax.jacrev(penalties))(params)
        leaves = jax.tree.leaves(params)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        d = jax.tree.unflatten(
            jax.tree.structure(params),
            [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
        )
        analytic = sum(
            jnp.tensordot(j, v, axes=v.ndim)
            for j, v in zip(jax.tree.leaves(jac), jax.tree.leaves(d), strict=True)
        )
        h = 1e-6
        plus = jax.tree.map(lambda x, v: x + h * v, params, d)
        minus = jax.tree.map(lambda x, v: x - h * v, params, d)
        fd = (f(plus) - f(minus)) / (2 * h)
        np.testing.assert_allclose(np.asarray(analytic), np.asarray(fd), rtol=1e-5, atol=1e-8,
                                   err_msg=str(combos))
        assert np.all(np.abs(np.asarray(analytic)) > 1e-3)  # none trivially zero

        if build is not _mlp:
            return
        # the same gradient through nnx.value_and_grad inside nnx.jit
        @nnx.jit
        def grad_step(model):
            return nnx.value_and_grad(lambda m: bounds.trivial_bound_penalty(m, shape, fast=False))(
                model)

        value, grads = grad_step(model)
        i = combos.index((2, "log", False))
        assert float(value) == pytest.approx(float(f(params)[i]), rel=1e-12)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(jac), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=1e-9, atol=1e-12)


def test_training_step_moves_state_once_and_lowers_the_bound():
    model = _mlp(rngs(3))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(0), (16, 5))
    y = jax.random.normal(jax.random.key(1), (16, 3))

    @nnx.jit
    def step(model, opt, x, y):
        def loss(model):
            fit = jnp.mean((model(x) - y) ** 2)
            return fit + 0.5 * bounds.trivial_bound_penalty(model, (5,), kind="log")

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    first = model.layers[0]
    w_before = np.asarray(first.kernel[...], np.float64)
    u_before = np.asarray(first.power_state[...], np.float64)
    step(model, opt, x, y)
    want = w_before @ (w_before.T @ u_before)  # one step u ← W Wᵀ u / ‖·‖ on the old weight
    np.testing.assert_allclose(np.asarray(first.power_state[...]), want / np.linalg.norm(want),
                               rtol=1e-5, atol=1e-6)
    start = float(bounds.trivial_bound(model, (5,)).value)
    for _ in range(60):
        step(model, opt, x, y)
    end = float(bounds.trivial_bound(model, (5,)).value)
    assert end < 0.6 * start, (start, end)
    # inference mode: a penalty evaluation does not move the state
    model.eval()
    frozen = np.asarray(first.power_state[...])
    _PENALTY(model, (5,), 2, "log", None, True)
    np.testing.assert_array_equal(np.asarray(first.power_state[...]), frozen)


def test_penalty_bad_input():
    model = _mlp(rngs(0))
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'square'"):
        bounds.trivial_bound_penalty(model, (5,), kind="square")
    with pytest.raises(ValueError, match=r"kind='hinge' needs a target > 0, got target=None"):
        bounds.trivial_bound_penalty(model, (5,), kind="hinge")
    with pytest.raises(ValueError, match=r"target is only used by kind='hinge'"):
        bounds.trivial_bound_penalty(model, (5,), kind="log", target=1.0)
    with pytest.raises(ValueError, match=r"trivial_bound_penalty: p must be 1, 2 or inf, got 3"):
        bounds.trivial_bound_penalty(model, (5,), p=3)
    with pytest.raises(ValueError, match=r"Sequential layer 0 \(Dense\).*in_features=5"):
        bounds.trivial_bound_penalty(model, (4,))
    with pytest.raises(ValueError, match=r"Conv.lipschitz_estimate: input_shape \(6, 6, 1\) does "
                       r"not match the layer's input_size=\(5, 5\)"):
        bounds.trivial_bound_penalty(_cnn(rngs(0)).layers[0], (6, 6, 1))
