"""Containers compose bounds; shapes are checked with errors naming the layer; to_plain exports."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import bounds
from liplax.guarantee import Bound, product_margin
from tests.nn_helpers import rngs


def _mlp(r):
    return ln.Sequential(
        ln.Dense(10, 8, use_bias=True, rngs=r),
        ln.MaxMin(),
        ln.SpectralDense(8, 8, rngs=r),
        ln.GroupSort(4),
        ln.BjorckDense(8, 6, rngs=r),
        ln.Abs(),
        ln.AOLDense(6, 6, rngs=r),
        ln.CReLU(),
        ln.LinfDense(12, 5, rngs=r),
        ln.SinPoly(),
        ln.SinusoidalDense(10, 4, rngs=r),
        ln.Residual(ln.Sequential(ln.Dense(8, 8, rngs=r), ln.FullSort())),
        ln.Scale(0.5),
        ln.Dense(8, 3, rngs=r),
    )


def _cnn(r):
    return ln.Sequential(
        ln.Conv(1, 4, 3, input_size=(12, 12), use_bias=True, rngs=r),
        ln.MaxMin(),
        ln.SpectralConv(4, 4, 3, input_size=(12, 12), padding="CIRCULAR", rngs=r),
        ln.CReLU(),
        ln.MaxPool(2),
        ln.AOLConv(8, 6, 3, strides=2, padding="VALID", rngs=r),
        ln.GroupSort(2),
        ln.AvgPool(2),
        ln.Flatten(),
        ln.Dense(6, 5, rngs=r),
    )


def test_sequential_bound_is_product_and_residual_is_one_plus():
    r = rngs(0)
    res = ln.Residual(ln.Sequential(ln.Dense(8, 8, rngs=r), ln.FullSort()))
    model = ln.Sequential(ln.Dense(10, 8, use_bias=True, rngs=r), ln.MaxMin(), res,
                          ln.Scale(0.5), ln.CReLU(), ln.Dense(16, 3, rngs=r))
    shape = (10,)
    for p in (2, math.inf):  # (p = 1 takes the same path)
        total = bounds.trivial_bound(model, shape, p=p)
        names, parts = zip(*bounds.layer_bounds(model, shape, p=p), strict=True)
        assert names == ("Dense", "MaxMin", "Residual", "Scale", "CReLU", "Dense")
        assert total.kind == "upper" and all(b.certified for b in parts)
        # the product, rounded up by the documented margin (guarantee.product_margin)
        margin = product_margin([b.kind for b in parts], np.float32)
        np.testing.assert_allclose(float(total.value),
                                   np.prod([float(b.value) for b in parts]) * (1 + margin),
                                   rtol=1e-6)
        inner = float(bounds.trivial_bound(res.inner.layers[0], (8,), p=p).value)
        assert parts[2].kind == "upper"
        assert float(parts[2].value) >= 1.0 + inner  # rounded up, never down
        np.testing.assert_allclose(float(parts[2].value), 1.0 + inner, rtol=5e-5)
        assert float(parts[3].value) == 0.5
        log = bounds.log_trivial_bound(model, shape, p=p)
        np.testing.assert_allclose(float(log.value), math.log(float(total.value)), rtol=1e-5)
    assert model.output_shape(shape) == (3,)
    assert model(jnp.ones((4, 10))).shape == (4, 3)


def test_shape_mismatch_names_layer_and_argument():
    r = rngs(0)
    model = ln.Sequential(ln.Dense(4, 6, rngs=r), ln.MaxMin(), ln.Dense(5, 2, rngs=r))
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\).*6 features.*in_features=5"):
        bounds.trivial_bound(model, (4,))
    with pytest.raises(ValueError, match=r"Dense: input of shape \(3, 6\).*in_features=5"):
        model(jnp.ones((3, 4)))
    odd = ln.Sequential(ln.Dense(4, 5, rngs=r), ln.MaxMin())
    with pytest.raises(ValueError, match=r"Sequential layer 1 \(MaxMin\).*width 5"):
        bounds.trivial_bound(odd, (4,))
    cnn = ln.Sequential(ln.Conv(1, 3, 3, input_size=(8, 8), rngs=r), ln.Flatten(),
                        ln.Dense(100, 2, rngs=r))
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\).*192 features.*in_features=100"):
        bounds.trivial_bound(cnn, (8, 8, 1))
    with pytest.raises(ValueError, match=r"Conv.*input_shape \(8, 8, 2\) has 2 channels"):
        bounds.trivial_bound(cnn, (8, 8, 2))
    with pytest.raises(ValueError, match=r"Residual: inner layer \(Dense\) maps input_shape"):
        bounds.trivial_bound(ln.Residual(ln.Dense(4, 3, rngs=r)), (4,))
    with pytest.raises(ValueError, match=r"Conv: input_size=\(H, W\) is required"):
        ln.Conv(1, 2, 3, rngs=r)
    with pytest.raises(ValueError, match=r"SpectralConv: padding must be one of"):
        ln.SpectralConv(1, 2, 3, input_size=(5, 5), padding="REFLECT", rngs=r)
    with pytest.raises(ValueError, match=r"Dense.lipschitz_bound: p must be 1, 2 or inf, got 3"):
        model.layers[0].lipschitz_bound((4,), p=3)
    with pytest.raises(ValueError, match=r"trivial_bound: p must be 1, 2 or inf, got 0.5"):
        bounds.trivial_bound(model, (4,), p=0.5)
    with pytest.raises(TypeError, match=r"Sequential layer 0 \(str\) has no lipschitz_bound"):
        ln.Sequential("relu")


def test_estimate_factor_makes_the_product_an_estimate():
    class Guess(ln.LipschitzModule):
        def __call__(self, x):
            return x

        def output_shape(self, input_shape):
            return tuple(input_shape)

        def lipschitz_bound(self, input_shape, *, p=2):
            return Bound(jnp.asarray(1.0), "estimate")

    model = ln.Sequential(ln.Dense(3, 3, rngs=rngs(0)), Guess())
    assert bounds.trivial_bound(model, (3,)).kind == "estimate"
    assert bounds.trivial_bound(ln.Residual(Guess()), (3,)).kind == "estimate"
    assert bounds.trivial_bound(model.layers[0], (3,)).kind == "exact"


@pytest.mark.parametrize("build,shape", [
    (_mlp, (10,)), pytest.param(_cnn, (12, 12, 1), marks=pytest.mark.slow),  # conv: layer contract
])
def test_to_plain_same_outputs(build, shape):
    model = build(rngs(1))
    x = jax.random.normal(jax.random.key(0), (6, *shape))
    step = nnx.jit(lambda m, x: m(x))
    for _ in range(3):  # training mode: power-iteration state moves
        step(model, x)
    model.eval()
    plain = bounds.to_plain(model)
    kinds = {type(m) for _, m in nnx.iter_graph(plain)}
    assert nnx.Linear in kinds
    assert not kinds & {ln.Dense, ln.SpectralDense, ln.BjorckDense, ln.AOLDense, ln.LinfDense,
                        ln.SinusoidalDense, ln.Conv, ln.SpectralConv, ln.AOLConv}
    outputs = nnx.jit(lambda m, x: m(x))
    np.testing.assert_allclose(np.asarray(outputs(plain, x)), np.asarray(outputs(model, x)),
                               atol=1e-6, rtol=1e-6)
    if build is _mlp:
        return
    # the plain model's ℓ2 bound never exceeds the liplax one (equal but for AOL's certificate)
    b_plain = float(bounds.trivial_bound(plain, shape).value)
    b_model = float(bounds.trivial_bound(model, shape).value)
    assert b_plain <= b_model * (1 + 1e-5)


def test_to_plain_of_an_unregistered_subclass_computes_its_function():
    """Export looks layers up by exact type: a subclass of Dense that changes its map (here
    doubling the output) is cloned, not exported as its parent's nnx.Linear."""

    class Doubled(ln.Dense):
        def __call__(self, x):
            return 2.0 * super().__call__(x)

    model = ln.Sequential(Doubled(3, 4, rngs=rngs(0)), ln.ReLU(), ln.Dense(4, 2, rngs=rngs(1)))
    model.eval()
    x = jax.random.normal(jax.random.key(0), (5, 3))
    plain = bounds.to_plain(model)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
