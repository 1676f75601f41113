"""Fuzz: the MLP config settings keep the certified bound sound.

Properties (a few fixed layer structures, compiled once each; the weights vary in value and in
scale from subnormal to 1e30):

- ``test_fuzz_bjorck_bound_covers_the_applied_weight``: for a ``BjorckDense`` built the way a
  ``groupsort_mlp`` config builds it (``bjorck_order`` 1 or 2, ``bjorck_iters`` 1–3, far from
  converged), the layer's certified ℓ2 bound (``exact``: an SVD) is ≥ the float64 spectral norm
  of the weight the layer actually applies less the ``exact`` margin certification allows
  (``guarantee.exact_margin``, 64u), or is non-finite (which certification refuses). This fuzz
  found jaxlib's SVD without vectors 67u low on clustered singular values (seed 1212783, shape
  (5, 3), order 1, scale 1); σ₁ now comes from the SVD with vectors (tests/test_svd_accuracy.py).
- ``test_fuzz_init_norm_layers_have_that_norm``: a free-weight MLP built with ``init_norm = s``
  (s from 1e-3 to 1e3) has every dense kernel's singular values equal to s (float64 SVD), and its
  certified trivial bound is ≥ the float64 product of those norms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given, note
from hypothesis import strategies as st

from liplax import bounds
from liplax import nn as lnn
from liplax.guarantee import exact_margin
from liplax.nn.walk import bound_of
from liplax.training.config import get_config
from liplax.training.models import build_model

SETTINGS = [(1, 1), (1, 3), (2, 2)]  # (order, iters)
SHAPES = [(5, 3), (3, 6)]
_LAYERS: dict = {}


@nnx.jit
def _applied_and_bound(layer):
    return layer.effective_kernel(), bound_of(layer, (layer.in_features,), p=2)


def _layer(order: int, iters: int, shape: tuple[int, int]):
    key = (order, iters, shape)
    if key not in _LAYERS:
        _LAYERS[key] = lnn.BjorckDense(*shape, order=order, num_iters=iters,
                                       rngs=nnx.Rngs(params=jax.random.key(0)))
    return _LAYERS[key]


@given(
    setting=st.sampled_from(SETTINGS),
    shape=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-44.0, 30.0),
    rank_one=st.booleans(),
)
def test_fuzz_bjorck_bound_covers_the_applied_weight(setting, shape, seed, log_scale, rank_one):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    if rank_one:  # one large singular value, the rest 0: the slowest case for the iteration
        w = np.outer(rng.normal(size=shape[0]), rng.normal(size=shape[1]))
    w = (w * 10.0**log_scale).astype(np.float32)
    layer = _layer(*setting, shape)
    layer.kernel[...] = jnp.asarray(w)
    applied, b = _applied_and_bound(layer)
    assert b.kind == "exact"
    applied, bound = np.asarray(applied, np.float64), float(b.value)
    note(f"bound {bound}, applied finite {np.all(np.isfinite(applied))}")
    if not np.isfinite(bound):
        return  # certification refuses a non-finite bound
    assert np.all(np.isfinite(applied))
    truth = float(np.linalg.norm(applied, 2))
    assert bound >= truth * (1 - exact_margin(jnp.float32))


_MODELS: dict = {}


def _init_model(model: str, norm: float):
    config = get_config("default", [f"model={model}", "widths=4,6", f"init_norm={norm}"])
    return build_model(config, (3, 3, 1), 3, rngs=nnx.Rngs(params=jax.random.key(1)))


@given(model=st.sampled_from(["sin_mlp", "relu_mlp"]), log_norm=st.floats(-3.0, 3.0))
def test_fuzz_init_norm_layers_have_that_norm(model, log_norm):
    norm = float(10.0**log_norm)
    m = _init_model(model, norm)
    kernels = [np.asarray(layer.kernel[...], np.float64) for layer in m.layers
               if hasattr(layer, "kernel")]
    assert len(kernels) == 3
    for k in kernels:
        np.testing.assert_allclose(np.linalg.svd(k, compute_uv=False), norm, rtol=1e-5)
    if model not in _MODELS:
        _MODELS[model] = nnx.jit(lambda net: bounds.trivial_bound(net, (3, 3, 1)))
    b = _MODELS[model](m)
    truth = float(np.prod([np.linalg.norm(k, 2) for k in kernels]))
    assert b.kind == "upper" and float(b.value) >= truth
