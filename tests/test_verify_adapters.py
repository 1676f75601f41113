"""Adapters from NNX models and lists; the optional extra stays optional."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liplax.verify import (
    crelu_to_relu,
    network_function,
    trivial_bound,
    weights_from_list,
    weights_from_model,
)
from liplax.verify._common import require


def test_weights_from_sequential_and_layer_list():
    rngs = nnx.Rngs(0)
    layers = [nnx.Linear(5, 7, rngs=rngs), nnx.Linear(7, 3, rngs=rngs), nnx.Linear(3, 2, rngs=rngs)]
    model = nnx.Sequential(layers[0], jax.nn.relu, layers[1], jax.nn.relu, layers[2])
    expected = [np.asarray(layer.kernel[...], np.float64) for layer in layers]
    for got in (weights_from_model(model), weights_from_model(layers)):
        assert [w.dtype for w in got] == [np.float64] * 3
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)


def test_weights_from_liplax_model_uses_effective_kernels():
    from liplax import nn

    rngs = nnx.Rngs(1)
    model = nn.Sequential(nn.SpectralDense(6, 4, rngs=rngs), nn.ReLU(), nn.Dense(4, 2, rngs=rngs))
    model.eval()
    ws = weights_from_model(model)
    plain = nn.to_plain(model)
    expected = [np.asarray(layer.kernel[...]) for layer in plain.layers if hasattr(layer, "kernel")]
    for got, want in zip(ws, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    raw = np.asarray(model.layers[0].kernel[...])
    assert not np.allclose(ws[0], raw)  # the normalized weight W/σ̂, not the raw parameter


def test_weights_from_model_refuses_unordered_kernels():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.out = nnx.Linear(4, 2, rngs=rngs)  # sorts before "zin": order is lost
            self.zin = nnx.Linear(3, 4, rngs=rngs)

    with pytest.raises(ValueError, match="do not chain"):
        weights_from_model(Net(nnx.Rngs(0)))


def test_weights_from_list_checks():
    with pytest.raises(TypeError, match="list"):
        weights_from_list(np.ones((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        weights_from_list([np.full((2, 2), np.nan)])
    with pytest.raises(ValueError, match="matrix"):
        weights_from_list([np.ones(3)])


def test_crelu_to_relu_and_network_function_are_the_written_network():
    rng = np.random.default_rng(0)
    w1, w2, w3 = rng.normal(size=(4, 3)), rng.normal(size=(6, 5)), rng.normal(size=(5, 2))
    x = rng.normal(size=(5, 4))
    z = x @ w1
    crelu = np.concatenate([np.maximum(z, 0), np.maximum(-z, 0)], axis=1) @ w2
    r1, r2 = crelu_to_relu([w1, w2])
    np.testing.assert_allclose(np.maximum(x @ r1, 0) @ r2, crelu)
    with jax.enable_x64(True):
        f = network_function([w1, w2], "crelu", jnp.float64)
        np.testing.assert_allclose(jax.vmap(f)(x), crelu, rtol=1e-12)
        g = network_function([w1, w2[:3], w3], "abs", jnp.float64)
        h = np.abs(np.abs(x @ w1) @ w2[:3]) @ w3
        np.testing.assert_allclose(jax.vmap(g)(x), h, rtol=1e-12)


def test_trivial_bound_is_the_product_of_layer_norms():
    rng = np.random.default_rng(1)
    ws = [rng.normal(size=(6, 5)), rng.normal(size=(5, 3))]
    b = trivial_bound(ws)
    assert b.kind == "upper"
    exact = np.linalg.norm(ws[0], 2) * np.linalg.norm(ws[1], 2)
    assert exact <= float(b.value) <= exact * (1 + 1e-12)
    np.testing.assert_allclose(
        float(trivial_bound(ws, p="inf").value), np.prod([np.linalg.norm(w, 1) for w in ws])
    )
    np.testing.assert_allclose(
        float(trivial_bound([jnp.asarray(w, jnp.float32) for w in ws]).value), exact, rtol=1e-6
    )


def test_missing_extra_names_it():
    with pytest.raises(ImportError, match=r"liplax\[verify\]"):
        require("liplax_no_such_solver_module")


def test_core_import_does_not_load_the_solvers():
    code = (
        "import sys, liplax; "
        "assert 'cvxpy' not in sys.modules and 'scipy.optimize' not in sys.modules; "
        "assert callable(liplax.verify.lipsdp) and 'cvxpy' in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
