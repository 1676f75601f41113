"""liplax.traced on models: agreement with the layer-based bound, rounding, the penalty in a
jitted optax loop, certification of a custom module, custom-layer regions (issue 14)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax
from liplax.bounds import log_trivial_bound, trivial_bound
from liplax.guarantee import Bound
from liplax.traced import bounded, lipschitz_bound, log_bound
from tests.test_traced import _bound, _points, _w
from tests.traced_helpers import PS, induced_norm, jac_norm, jacobian64, max_jac_norm

RNG = np.random.default_rng(1)


# ------------------------------------------------------------------------------------------
# Agreement with the layer-based bound, rounding, penalty, certification, regions.
# ------------------------------------------------------------------------------------------


def _mlp():
    return nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), nnx.relu,
                          nnx.Linear(6, 5, rngs=nnx.Rngs(1)), nnx.relu,
                          nnx.Linear(5, 3, rngs=nnx.Rngs(2)))


def _cnn():
    return nnx.Sequential(nnx.Conv(2, 3, (3, 3), rngs=nnx.Rngs(0)), nnx.relu,
                          nnx.Conv(3, 2, (3, 3), strides=2, padding="VALID", rngs=nnx.Rngs(1)))


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@pytest.mark.parametrize("p", PS)
def test_same_value_as_layer_based_bound(p):
    mlp, cnn = _mlp(), _cnn()
    assert float(lipschitz_bound(mlp, jnp.ones((1, 4)), p=p).value) == float(
        trivial_bound(mlp, (4,), p=p).value)
    got = float(lipschitz_bound(cnn, jnp.ones((1, 7, 7, 2)), p=p).value)
    want = float(trivial_bound(cnn, (7, 7, 2), p=p).value)
    assert got == pytest.approx(want, rel=2e-6)  # the same factors; XLA fusion rounds Gram


def _liplax_models():
    """Sequentials of liplax layers whose every factor the trace can also read."""
    import liplax.nn as ln

    r = nnx.Rngs(3)
    mlp = ln.Sequential(ln.Dense(4, 6, rngs=r), ln.Abs(), ln.Dense(6, 5, rngs=r), ln.ReLU(),
                        ln.Dense(5, 3, rngs=r))
    cnn = ln.Sequential(ln.Conv(2, 3, (3, 3), input_size=(7, 7), rngs=r), ln.ReLU(),
                        ln.Conv(3, 2, (3, 3), input_size=(7, 7), strides=2, padding="VALID",
                                rngs=r),
                        ln.Flatten(), ln.Dense(18, 3, rngs=r))
    return [(mlp, (4,)), (cnn, (7, 7, 2))]


@pytest.mark.parametrize("p", PS)
def test_liplax_sequential_traced_equals_trivial_bound(p):
    """On a Sequential of liplax layers both paths multiply the same certified factors."""
    for model, shape in _liplax_models():
        model.eval()
        got = lipschitz_bound(model, jnp.ones((1, *shape)), p=p)
        want = trivial_bound(model, shape, p=p)
        assert got.kind == want.kind == "upper"
        # The same weight factors; the layer-based product also counts each activation's exact 1
        # in its rounding margin (2·exact_margin per exact factor), so it may sit a few ulps above.
        assert float(got.value) <= float(want.value) <= float(got.value) * (1 + 1e-4)


def test_rounding_tight_chain_stays_above_truth():
    """Rank-1 layers whose singular directions line up: Π‖W_l‖ = ‖W_L⋯W_1‖ (tight)."""
    u = np.asarray(RNG.normal(size=6))
    u /= np.linalg.norm(u)
    ws = [jnp.asarray(np.outer(u, u) * s, jnp.float32) for s in (3.1, 0.7, 1.9, 2.3)]

    def f(x):
        for w in ws:
            x = x @ w
        return x

    for p in PS:
        assert _bound(f, np.ones(6, np.float32), p) >= jac_norm(f, np.ones(6, np.float32), p)


def test_non_finite_and_tiny_parameters():
    w = np.ones((3, 3), np.float32)
    w[0, 0] = np.nan
    assert not np.isfinite(float(lipschitz_bound(lambda x: x @ w, jnp.ones(3)).value))
    tiny = jnp.full((3, 3), 1e-40, jnp.float32)  # subnormal: never a bound of 0
    for p in PS:
        v = float(lipschitz_bound(lambda x: jnp.tanh(x @ tiny) @ tiny, jnp.ones(3), p=p).value)
        assert v > 0
        scaled = lipschitz_bound(lambda x: x * jnp.full(3, 1e-40, jnp.float32), jnp.ones(3), p=p)
        assert float(scaled.value) >= 1e-40  # a subnormal constant is not flushed to 0
        divided = lipschitz_bound(lambda x: x / jnp.full(3, 1e-40, jnp.float32), jnp.ones(3), p=p)
        assert float(divided.value) >= 1e40  # inf: 1/1e-40 is beyond float32


def test_penalty_differentiable_in_jitted_optax_loop_matches_layer_penalty():
    import optax

    model = _mlp()
    x = jnp.ones((1, 4))
    opt = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            return log_bound(m, x).value

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    def layer_grad(m):
        return nnx.grad(lambda m: log_trivial_bound(m, (4,)).value)(m)

    g_traced = nnx.grad(lambda m: log_bound(m, x).value)(model)
    g_layer = layer_grad(model)
    for a, b in zip(jax.tree.leaves(g_traced), jax.tree.leaves(g_layer), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    first = float(step(model, opt))
    assert first == pytest.approx(float(log_trivial_bound(_mlp(), (4,)).value), abs=2e-6)
    for _ in range(3):
        last = float(step(model, opt))
    assert last < first


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(2, 2, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(2, 2, (3, 3), rngs=rngs)
        self.head = nnx.Linear(2, 3, rngs=rngs)

    def __call__(self, x):
        x = x + self.c2(nnx.relu(self.c1(x)))
        x = nnx.avg_pool(x, (2, 2), (2, 2)).mean(axis=(1, 2))
        return self.head(x)


def test_custom_module_bound_and_certification():
    model = _Block(nnx.Rngs(0))
    xs = np.stack(_points((6, 6, 2), n=3))
    for p in PS:
        b = lipschitz_bound(model, jnp.ones((1, 6, 6, 2)), p=p)
        assert float(b.value) >= max_jac_norm(lambda x: model(x[None])[0], xs, p)
    b = lipschitz_bound(model, jnp.ones((1, 6, 6, 2)))
    logits = model(jnp.asarray(xs))
    labels = jnp.argmax(logits, axis=1)
    acc = liplax.certify.certified_accuracy(logits, labels, b, eps=0.0)
    assert float(acc) == 1.0
    t = liplax.certify.tightness(model, jnp.asarray(xs), b, key=jax.random.key(0), steps=3,
                                 restarts=1)
    assert float(t.ratio) >= 1.0


def test_bounded_region_uses_the_given_bound():
    w1 = _w(4, 4)
    w2 = jnp.asarray(np.linalg.pinv(np.asarray(w1)) * 0.1, jnp.float32)  # w1 w2 = 0.1 I
    inner = lambda x: (x @ w1) @ w2  # noqa: E731
    loose = float(lipschitz_bound(inner, jnp.ones(4)).value)
    truth = jac_norm(inner, np.ones(4, np.float32), 2)
    region = bounded(inner, Bound(jnp.asarray(0.1 * (1 + 1e-4)), "upper"))
    tight = float(lipschitz_bound(lambda x: jnp.tanh(region(x)), jnp.ones(4)).value)
    assert truth <= tight < loose
    assert np.allclose(np.asarray(region(jnp.ones(4))), np.asarray(inner(jnp.ones(4))))
    with pytest.raises(ValueError, match="estimate"):
        bounded(inner, Bound(jnp.asarray(0.1), "estimate"))


def test_lazy_top_level_names():
    assert liplax.lipschitz_bound is lipschitz_bound
    assert liplax.traced.log_bound is log_bound


def test_jacobian_reference_is_float64():
    m = jacobian64(lambda x: x * 3.0, np.ones(2, np.float32))
    assert m.dtype == np.float64 and induced_norm(m, 2) == 3.0
