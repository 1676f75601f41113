"""The MLP settings of a config: the Björck settings (``bjorck_iters``, ``bjorck_order``,
``bjorck_stop_gradient``) reach ``groupsort_mlp``'s layers, the certified bound stays sound with
few Björck steps, and ``init_norm`` gives free-weight MLPs orthogonal weights of that norm.

The effective kernels are checked against an independent float64 NumPy Björck iteration (same
initial scaling), and every layer's certified bound against the NumPy SVD of the weight the
layer actually applies: with 1 or 2 steps that weight is far from orthonormal, so a bound that
assumed 1 would fail here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liplax import bounds, linalg
from liplax import nn as lnn
from liplax.guarantee import exact_margin
from liplax.training.config import CONFIGS, get_config
from liplax.training.models import build_model
from tests.reference import spectral_norm_truth

SHAPE = (6, 6, 1)
COEFFS = {1: (1.5, -0.5), 2: (15 / 8, -5 / 4, 3 / 8)}


def _model(*overrides: str, seed: int = 0):
    config = get_config("groupsort", ["widths=8,8", *overrides])
    m = build_model(config, SHAPE, 4, rngs=nnx.Rngs(params=jax.random.key(seed)))
    m.eval()
    return m


def _bjorck_layers(m) -> list:
    return [layer for layer in m.layers if isinstance(layer, lnn.BjorckDense)]


def _numpy_bjorck(w: np.ndarray, order: int, iters: int) -> np.ndarray:
    """Float64 Björck: A ← A·Σ c_k (AᵀA)^k on the tall orientation, after liplax's scaling."""
    transpose = w.shape[0] < w.shape[1]
    a = (w.T if transpose else w).astype(np.float64)
    scale = float(linalg.gram_bound(jnp.asarray(a, jnp.float32), num_iters=3).value)
    a = a / scale
    c = COEFFS[order]
    for _ in range(iters):
        p = a.T @ a
        poly = c[0] * np.eye(p.shape[0]) + c[1] * p
        if order == 2:
            poly = poly + c[2] * p @ p
        a = a @ poly
    return a.T if transpose else a


@nnx.jit
def _applied_and_bounds(m):
    """(effective kernels of the Björck layers, certified bound of every top-level layer)."""
    kernels = [layer.effective_kernel() for layer in _bjorck_layers(m)]
    return kernels, [b.value for b in bounds.top_level_bounds(m, SHAPE, 2)]


@pytest.mark.parametrize("order,iters,sg", [
    (2, 2, True), (1, 15, False), pytest.param(1, 1, False, marks=pytest.mark.slow)])
def test_layers_apply_the_configured_iteration_and_certify_what_they_apply(order, iters, sg):
    m = _model(f"bjorck_order={order}", f"bjorck_iters={iters}", f"bjorck_stop_gradient={sg}")
    layers = _bjorck_layers(m)
    assert len(layers) == 3
    kernels, layer_bounds = _applied_and_bounds(m)
    layer_bounds = [float(b) for b, layer in zip(layer_bounds, m.layers, strict=True)
                    if isinstance(layer, lnn.BjorckDense)]
    sv = []
    for layer, applied, bound in zip(layers, kernels, layer_bounds, strict=True):
        assert (layer.order, layer.num_iters, layer.stop_gradient) == (order, iters, sg)
        applied = np.asarray(applied, np.float64)
        ref = _numpy_bjorck(np.asarray(layer.kernel[...]), order, iters)
        np.testing.assert_allclose(applied, ref, rtol=0, atol=2e-5)
        truth = spectral_norm_truth(applied)
        assert truth * (1 - exact_margin(np.float32)) <= bound <= truth * (1 + 1e-4)
        sv.append(np.linalg.svd(applied, compute_uv=False))
    sv = np.concatenate(sv)
    if iters == 15:  # converged: orthonormal
        np.testing.assert_allclose(sv, 1.0, atol=1e-3)
    else:  # a few steps: not orthonormal (the bound above is the applied weight's σ₁)
        assert sv.min() < 0.9


def test_stop_gradient_keeps_the_forward_pass_and_changes_only_the_gradient():
    full, sg = _model(), _model("bjorck_stop_gradient=true")
    x = jax.random.uniform(jax.random.key(1), (5, *SHAPE))
    forward = nnx.jit(lambda m, x: m(x))
    np.testing.assert_allclose(np.asarray(forward(sg, x)), np.asarray(forward(full, x)),
                               rtol=0, atol=1e-6)

    def grad(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        g = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x) ** 2)))(params)
        return np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])

    g_full, g_sg = grad(full), grad(sg)
    assert np.all(np.isfinite(g_sg))
    # Not the full gradient (only the last step is differentiated), but the same descent
    # direction to first order at convergence: positively correlated.
    assert not np.allclose(g_full, g_sg, rtol=1e-3, atol=1e-6)
    assert g_full @ g_sg > 0


@pytest.mark.parametrize("item, message", [
    ("bjorck_order=3", "config: bjorck_order=3; expected 1 or 2"),
    ("bjorck_iters=0", "config: bjorck_iters=0; expected an integer ≥ 1"),
    ("bjorck_stop_gradient=maybe", "bjorck_stop_gradient='maybe' is not a valid bool"),
])
def test_bad_bjorck_settings_name_the_key(item, message):
    with pytest.raises(ValueError, match=message):
        get_config("fashion-groupsort4", [item])


def test_mlp4_comparison_shares_one_budget():
    """fashion-mlp4, its unpenalized twin and the 1-Lipschitz baselines: same steps, batch,
    widths, data and schedule; the Björck baseline differentiates all its 15 steps."""
    names = ("fashion-mlp4", "fashion-mlp4-nopen", "fashion-mlp4-sin", "fashion-mlp4-sin-nopen",
             "fashion-groupsort4", "fashion-aol4")
    keys = ("dataset", "widths", "batch_size", "steps", "learning_rate", "lr_warmup", "eps")
    ref = {k: getattr(CONFIGS[names[0]], k) for k in keys}
    for name in names[1:]:
        assert {k: getattr(CONFIGS[name], k) for k in keys} == ref, name
    for pen, nopen in (("fashion-mlp4", "fashion-mlp4-nopen"),
                       ("fashion-mlp4-sin", "fashion-mlp4-sin-nopen")):
        # the unpenalized twin is the same network (model, initialization, loss)
        a, b = CONFIGS[pen], CONFIGS[nopen]
        assert (a.model, a.init_norm, a.loss) == (b.model, b.init_norm, b.loss)
        assert a.penalty == "log" and a.gap_weight > 0 and b.penalty == "none"
    gs = CONFIGS["fashion-groupsort4"]
    assert not gs.bjorck_stop_gradient and gs.bjorck_iters == 15 and gs.bjorck_order == 1


@pytest.mark.parametrize("model,norm", [
    ("sin_mlp", 1.0), pytest.param("relu_mlp", 0.5, marks=pytest.mark.slow),
    pytest.param("abs_mlp", 2.0, marks=pytest.mark.slow)])
def test_init_norm_gives_orthogonal_weights_of_that_spectral_norm(model, norm):
    config = get_config("default", [f"model={model}", "widths=8,12,8", f"init_norm={norm}"])
    m = build_model(config, SHAPE, 4, rngs=nnx.Rngs(params=jax.random.key(2)))
    kernels = [np.asarray(layer.kernel[...], np.float64) for layer in m.layers
               if hasattr(layer, "kernel")]
    assert len(kernels) == 4
    for k in kernels:  # every singular value (min(in, out) of them) equals init_norm
        np.testing.assert_allclose(np.linalg.svd(k, compute_uv=False), norm, rtol=1e-5)
    b = bounds.trivial_bound(m, SHAPE)
    assert float(b.value) == pytest.approx(norm ** 4, rel=1e-4)


def test_init_norm_zero_keeps_lecun_normal_weights():
    config = get_config("default", ["widths=64"])
    m = build_model(config, SHAPE, 4, rngs=nnx.Rngs(params=jax.random.key(3)))
    k = np.asarray(m.layers[1].kernel[...], np.float64)
    assert k.shape == (36, 64)
    assert k.std() == pytest.approx(1 / np.sqrt(36), rel=0.1)  # LeCun: variance 1/fan_in
    sv = np.linalg.svd(k, compute_uv=False)
    assert sv.max() / sv.min() > 2  # not orthogonal


def test_negative_init_norm_is_refused():
    with pytest.raises(ValueError, match="config: init_norm=-1.0; expected a finite number ≥ 0"):
        get_config("default", ["init_norm=-1"])
