"""liplax.grouped: the grouped power steps give the per-layer penalty's value, states and gradient.

The reference is the per-layer fast path (``log_bound_of(..., fast=True)``, one power step per
layer) run on an identical copy of the model; the float64 SVD of each kernel (dense) or of the
materialized operator (conv, ``tests/reference.py``) checks that the grouped σ̂ is the layer's
power estimate: never above σ₁, and converging to it over repeated training steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import bounds
from liplax.grouped import grouped_log_bound, power_groups
from liplax.nn.walk import log_bound_of
from tests import reference as ref


def mlp(seed: int = 0, power_iters: int = 1) -> ln.Sequential:
    """Mixed shapes: three 12×12 layers (one inside a residual), a sinusoidal 12×6, others."""
    r = nnx.Rngs(seed)
    kw = {"rngs": r, "power_iters": power_iters}
    return ln.Sequential(
        ln.Dense(5, 12, **kw), ln.MaxMin(),
        ln.Dense(12, 12, **kw), ln.MaxMin(),
        ln.Residual(ln.Sequential(ln.Dense(12, 12, **kw), ln.MaxMin(), ln.Dense(12, 12, **kw))),
        ln.SinusoidalDense(12, 6, **kw),
        ln.Dense(12, 12, power_iters=power_iters + 1, rngs=r),  # another power_iters: own group
        ln.AOLDense(12, 12, rngs=r),  # no power step
        ln.Dense(12, 3, **kw),
    )


def cnn(seed: int = 0) -> ln.Sequential:
    """Three 3×3 2→2 convs on 6×6 (one group), one strided (other paddings: the
    ``conv_power_step`` test)."""
    r = nnx.Rngs(seed)
    return ln.Sequential(
        ln.Conv(1, 2, 3, input_size=(6, 6), rngs=r), ln.MaxMin(),
        ln.Conv(2, 2, 3, input_size=(6, 6), rngs=r), ln.MaxMin(),
        ln.Conv(2, 2, 3, input_size=(6, 6), rngs=r),
        ln.Conv(2, 2, 3, input_size=(6, 6), rngs=r), ln.MaxMin(),
        ln.Conv(2, 2, 3, input_size=(6, 6), strides=2, rngs=r),
        ln.Flatten(),
        ln.Dense(18, 4, rngs=r),
    )


CASES = [("mlp", mlp, (5,)), ("cnn", cnn, (6, 6, 1))]


def _states(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(nnx.state(model, ln.PowerIterState))]


def _penalty(model, shape, grouped: bool):
    if grouped:
        return grouped_log_bound(model, shape)[0]
    return log_bound_of(model, shape, p=2, fast=True)[0]


@pytest.mark.parametrize(("name", "build", "shape"), CASES, ids=[c[0] for c in CASES])
def test_groups_collect_same_shape_layers(name, build, shape):
    groups = power_groups(build(), shape)
    sizes = sorted(len(g.layers) for g in groups)
    # mlp: 12×12 power_iters=1 ×3, 12×6 sinusoidal ×1 (its own kernel shape), 5×12, 12×3 and the
    # 12×12 with power_iters=2 alone. cnn: 1→2; three 2→2 stride 1 (a group); stride 2; dense.
    assert sizes == ([1, 1, 1, 1, 3] if name == "mlp" else [1, 1, 1, 3])
    big = max(groups, key=lambda g: len(g.layers))
    assert len({layer.kernel[...].shape for layer in big.layers}) == 1
    assert power_groups(build(), shape, p=1) == []


@pytest.mark.parametrize(("name", "build", "shape"), [
    pytest.param(*CASES[0], id="mlp", marks=pytest.mark.slow),  # the suite's 10-minute budget
    pytest.param(*CASES[1], id="cnn")])
def test_value_states_and_gradient_match_per_layer(name, build, shape):
    ref_model, grp_model = build(), build()

    def value_and_grad(grouped):
        return nnx.jit(nnx.value_and_grad(lambda m: _penalty(m, shape, grouped)))

    run_ref, run_grp = value_and_grad(False), value_and_grad(True)
    for _ in range(2):  # two steps: the second starts from states the first moved.
        v_ref, g_ref = run_ref(ref_model)
        v_grp, g_grp = run_grp(grp_model)
        np.testing.assert_allclose(float(v_grp), float(v_ref), rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(g_grp), jax.tree_util.tree_leaves(g_ref),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        for a, b in zip(_states(grp_model), _states(ref_model), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert grouped_log_bound(grp_model, shape)[1] == log_bound_of(ref_model, shape, fast=True)[1]


def test_states_move_in_training_mode_only():
    model = mlp()
    before = _states(model)
    model.eval()
    v_eval = float(grouped_log_bound(model, (5,))[0])
    for a, b in zip(_states(model), before, strict=True):
        np.testing.assert_array_equal(a, b)
    model.train()
    v_train = float(grouped_log_bound(model, (5,))[0])
    assert v_train == pytest.approx(v_eval, rel=1e-6)  # same step from the same state
    moved = [not np.allclose(a, b) for a, b in zip(_states(model), before, strict=True)]
    assert sum(moved) == 7  # every Dense / SinusoidalDense state; AOL has no power step


def test_mixed_modes_in_one_group_write_only_training_layers():
    model = mlp()
    frozen = model.layers[2]  # one of the three 12×12 layers of the big group
    frozen.deterministic = True
    u0 = np.asarray(frozen.power_state[...])
    others0 = np.asarray(model.layers[4].inner.layers[0].power_state[...])
    grouped_log_bound(model, (5,))
    np.testing.assert_array_equal(np.asarray(frozen.power_state[...]), u0)
    assert not np.allclose(np.asarray(model.layers[4].inner.layers[0].power_state[...]), others0)


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_shared_layer_steps_once_per_use_like_per_layer():
    def build():
        r = nnx.Rngs(1)
        shared = ln.Dense(8, 8, rngs=r)
        return ln.Sequential(shared, ln.MaxMin(), shared, ln.Dense(8, 8, rngs=r))

    a, b = build(), build()
    v_ref = float(log_bound_of(a, (8,), fast=True)[0])
    v_grp = float(grouped_log_bound(b, (8,))[0])
    assert v_grp == pytest.approx(v_ref, rel=1e-6)
    for x, y in zip(_states(b), _states(a), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("p", [1, float("inf")])
def test_other_norms_are_the_per_layer_values(p):
    model = mlp()
    got = grouped_log_bound(model, (5,), p=p)
    want = log_bound_of(model, (5,), p=p, fast=True)
    assert got[1] == want[1]
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)


def test_grouped_sigmas_converge_to_float64_truth_from_below():
    """Repeated jitted grouped steps: each σ̂ ≤ σ₁ (float64 SVD) and → σ₁."""
    r = nnx.Rngs(2)
    layers = [ln.Dense(10, 10, rngs=r) for _ in range(4)]
    convs = [ln.Conv(2, 2, 3, input_size=(5, 5), rngs=r) for _ in range(3)]
    model = ln.Sequential(*layers, ln.MaxMin())
    truths = [ref.spectral_norm_truth(np.asarray(m.kernel[...], np.float64)) for m in layers]
    conv_model = ln.Sequential(*convs)
    conv_truths = [
        ref.spectral_norm_truth(ref.conv_operator(np.asarray(c.kernel[...], np.float64), (5, 5)))
        for c in convs
    ]

    for mdl, shape, lays, tr in ((model, (10,), layers, truths),
                                 (conv_model, (5, 5, 2), convs, conv_truths)):
        step = nnx.jit(lambda m, s=shape: grouped_log_bound(m, s)[0])
        for _ in range(300):
            step(mdl)
        groups = power_groups(mdl, shape)
        assert len(groups) == 1 and len(groups[0].layers) == len(lays)
        # σ̂ of each layer after convergence, computed once more per layer (no grouping):
        for layer, truth in zip(lays, tr, strict=True):
            layer.deterministic = True
            sig = float(layer.lipschitz_estimate(shape if len(shape) == 3 else (10,)).value)
            assert sig <= truth * (1 + 1e-5)
            assert sig == pytest.approx(truth, rel=2e-3)


def test_penalty_option():
    a, b = mlp(), mlp()
    for kind, target in (("log", None), ("product", None), ("hinge", 1e-3)):
        ref_v = bounds.trivial_bound_penalty(a, (5,), kind=kind, target=target)
        got = bounds.trivial_bound_penalty(b, (5,), kind=kind, target=target, grouped=True)
        assert float(got) == pytest.approx(float(ref_v), rel=1e-5)
    with pytest.raises(ValueError, match="grouped=True .* fast=True"):
        bounds.trivial_bound_penalty(a, (5,), fast=False, grouped=True)


def test_jit_and_shape_errors():
    model = mlp()
    value = nnx.jit(lambda m: grouped_log_bound(m, (5,))[0])(model)
    assert value == pytest.approx(float(log_bound_of(mlp(), (5,), fast=True)[0]), rel=1e-5)
    with pytest.raises(ValueError, match="input_size"):
        grouped_log_bound(cnn(), (8, 8, 1))
    with pytest.raises(ValueError, match="p must be 1, 2 or inf"):
        grouped_log_bound(mlp(), (5,), p=3)


@pytest.mark.parametrize(
    ("kernel_hw", "hw", "strides", "padding", "iters"),
    [
        pytest.param((3, 3), (7, 6), (1, 1), "SAME", 1, marks=pytest.mark.slow),
        pytest.param((3, 2), (7, 6), (2, 3), "SAME", 2, marks=pytest.mark.slow),
        pytest.param((3, 3), (7, 6), (2, 2), "VALID", 3, marks=pytest.mark.slow),
        ((2, 3), (6, 6), (1, 2), ((2, 0), (1, 3)), 1),
        pytest.param((3, 3), (6, 4), (2, 2), "CIRCULAR", 2, marks=pytest.mark.slow),
        ((5, 5), (3, 4), (1, 1), "CIRCULAR", 1),  # a kernel larger than the input wraps
    ],
)
def test_conv_power_step_is_the_layer_power_iteration(kernel_hw, hw, strides, padding, iters):
    """The im2col batch step against ``conv.power_iteration`` (lax.conv) item by item."""
    from liplax import conv
    from liplax.grouped import conv_power_step

    rng = np.random.default_rng(5)
    ks = jnp.asarray(rng.standard_normal((3, *kernel_hw, 2, 3)) / 3, jnp.float32)
    us = jnp.asarray(rng.standard_normal((3, *hw, 2)), jnp.float32)

    def grouped(k):
        return conv_power_step(k, us, strides=strides, padding=padding, num_iters=iters)

    def single(k):
        s, v = jax.vmap(lambda a, b: conv.power_iteration(
            a, hw, b, strides=strides, padding=padding, num_iters=iters))(k, us)
        return s.value, v

    (s_g, v_g), (s_1, v_1) = jax.jit(grouped)(ks), jax.jit(single)(ks)
    np.testing.assert_allclose(np.asarray(s_g), np.asarray(s_1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(v_g), np.asarray(v_1), rtol=1e-4, atol=1e-6)
    g_g = jax.grad(lambda k: jnp.sum(jnp.log(grouped(k)[0])))(ks)
    g_1 = jax.grad(lambda k: jnp.sum(jnp.log(single(k)[0])))(ks)
    np.testing.assert_allclose(np.asarray(g_g), np.asarray(g_1), rtol=1e-4, atol=1e-6)
    for i in range(3):  # an estimate from below: never above the float64 truth
        truth = ref.spectral_norm_truth(
            ref.conv_operator(np.asarray(ks[i], np.float64), hw, strides, padding))
        assert float(s_g[i]) <= truth * (1 + 1e-5)


def spectral_cnn(seed: int = 0) -> ln.Sequential:
    """Three SpectralConv 2→2 at 6×6 (a group), a SpectralDense pair in a residual."""
    r = nnx.Rngs(seed)
    return ln.Sequential(
        ln.SpectralConv(1, 2, 3, input_size=(6, 6), rngs=r), ln.MaxMin(),
        ln.SpectralConv(2, 2, 3, input_size=(6, 6), rngs=r), ln.MaxMin(),
        ln.SpectralConv(2, 2, 3, input_size=(6, 6), rngs=r),
        ln.SpectralConv(2, 2, 3, input_size=(6, 6), rngs=r),
        ln.Flatten(),
        ln.SpectralDense(72, 8, rngs=r),
        ln.Residual(ln.Sequential(ln.SpectralDense(8, 8, use_bias=True, rngs=r), ln.MaxMin(),
                                  ln.SpectralDense(8, 8, rngs=r))),
        ln.Dense(8, 3, rngs=r),
    )


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_grouped_call_is_the_forward_pass_with_grouped_normalization():
    from liplax.grouped import grouped_call, spectral_groups

    ref_model, grp_model = spectral_cnn(), spectral_cnn()
    assert sorted(len(g.layers) for g in spectral_groups(grp_model)) == [1, 1, 2, 3]
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 1))

    def run(call):
        return nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(call(m, x) ** 2)))

    run_ref, run_grp = run(lambda m, v: m(v)), run(grouped_call)
    for _ in range(2):
        v_ref, g_ref = run_ref(ref_model)
        v_grp, g_grp = run_grp(grp_model)
        assert float(v_grp) == pytest.approx(float(v_ref), rel=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(g_grp), jax.tree_util.tree_leaves(g_ref),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        for a, b in zip(_states(grp_model), _states(ref_model), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Inference mode: no power step, nothing moves, the same map as model(x).
    grp_model.eval()
    ref_model.eval()
    before = _states(grp_model)
    assert spectral_groups(grp_model) == []
    np.testing.assert_allclose(np.asarray(grouped_call(grp_model, x)),
                               np.asarray(ref_model(x)), rtol=1e-5, atol=1e-6)
    for a, b in zip(_states(grp_model), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_grouped_call_guards_a_zero_sigma_as_the_layer_does():
    """σ̂ = 0 (a zero kernel in a group of two): grouped_call applies W itself, as the layer's
    own training-mode forward does (spectral.normalized), instead of 0/0 = NaN."""
    from liplax.grouped import grouped_call, spectral_groups

    def build():
        r = nnx.Rngs(3)
        zero = ln.SpectralDense(4, 4, use_bias=True, bias_init=nnx.initializers.ones, rngs=r)
        zero.kernel[...] = jnp.zeros((4, 4))
        return ln.Sequential(zero, ln.MaxMin(), ln.SpectralDense(4, 4, rngs=r))

    ref_model, grp_model = build(), build()
    assert [len(g.layers) for g in spectral_groups(grp_model)] == [2]
    x = jax.random.normal(jax.random.key(1), (3, 4))
    want = np.asarray(ref_model(x))
    got = np.asarray(grouped_call(grp_model, x))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(want == want[:1])  # the zero layer gives its bias only: one row, repeated


def test_an_unregistered_subclass_takes_its_own_estimate():
    """Grouping looks layers up by exact type: a Dense subclass with its own estimate is not
    stepped with the Dense group, so grouped and per-layer values agree."""

    class Halved(ln.Dense):
        def _estimate(self, shape, p):
            b = super()._estimate(shape, p)
            return type(b)(b.value / 2, b.kind)

    def build():
        r = nnx.Rngs(0)
        return ln.Sequential(ln.Dense(4, 4, rngs=r), Halved(4, 4, rngs=r), ln.Dense(4, 4, rngs=r))

    assert [len(g.layers) for g in power_groups(build(), (4,))] == [2]
    got = float(grouped_log_bound(build(), (4,))[0])
    assert got == pytest.approx(float(log_bound_of(build(), (4,), fast=True)[0]), rel=1e-5)
