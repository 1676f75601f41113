"""The CNN training path: strided and AOL CNN builders, the per-step chunk, the evaluation.

- the chunk runs no convolution inside a compiled loop over training steps (XLA's CPU backend
  runs loop-body convolutions many times slower), and chunks of any split reach the same state;
- the evaluation's certified bound, composed from the top-level rows, is the trivial bound, and
  its three programs are compiled once for every evaluation size;
- the strided CNN's factors are exact (float64 SVD of the materialized operators) and its
  trivial bound is above float64 Jacobian norms; the AOL CNN is 1-Lipschitz.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liplax import bounds, training
from liplax import nn as lnn
from liplax.training import evaluation, gap
from liplax.training.models import build_model
from liplax.training.outputs import layer_rows
from tests import reference as ref
from tests.train_helpers import assert_same_state, tiny_config

CNN = ["model=cnn_strided", "widths=4,6,6,4"]


@pytest.fixture(scope="module")
def digits():
    return training.data.load_digits()


def _loops_over_convs(jaxpr) -> list[str]:
    """Loop primitives (a scan of length > 1, any while loop) whose body holds a convolution."""
    found = []

    def has_conv(jx) -> bool:
        for eqn in jx.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            if any(has_conv(sub) for sub in _subjaxprs(eqn)):
                return True
        return False

    def walk(jx):
        for eqn in jx.eqns:
            name = eqn.primitive.name
            loop = name == "while" or (name == "scan" and eqn.params["length"] > 1)
            if loop and any(has_conv(sub) for sub in _subjaxprs(eqn)):
                found.append(name)
            for sub in _subjaxprs(eqn):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for item in v if isinstance(v, tuple | list) else (v,):
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr
            elif hasattr(item, "eqns"):
                yield item


def test_chunk_runs_no_convolution_inside_a_loop_over_steps(digits):
    # Old mechanism: the chunk was one lax.scan over its steps; XLA's CPU backend then ran every
    # convolution inside the loop body, 15× slower than the hand-written per-step loop.
    config = tiny_config(*CNN)
    run = training.init_run(config, digits.input_shape, 10)
    chunk = training.step.make_chunk(run, len(digits.y_train), None)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    jaxpr = jax.make_jaxpr(lambda s: chunk(s, x, y, 2))(run.state)
    assert _loops_over_convs(jaxpr) == []
    n_conv = str(jaxpr).count("conv_general_dilated")
    assert n_conv > 0  # the steps' convolutions are there, outside any loop


@pytest.mark.slow
def test_chunks_of_any_split_reach_the_same_state(digits):
    # 3 + 4 steps and 7 steps: the same batches (a pure function of seed and step) and updates.
    config = tiny_config(*CNN)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    states = []
    for split in ((3, 4), (7,)):
        run = training.init_run(config, digits.input_shape, 10)
        chunk = training.step.make_chunk(run, len(digits.y_train), None)
        state = run.state
        for n in split:
            state, metrics = chunk(state, x, y, n)
            assert all(math.isfinite(float(v)) for v in metrics.values())
        assert int(state.step) == 7
        states.append(training.state_to_flat(state))
    assert_same_state(*states)


def test_micro_batches_take_the_same_step(digits):
    """The batch run as 4 slices joined at the logits: the same loss, accuracy and
    gradient (plain SGD, so the update is −lr·gradient) up to the order of the sums. (The
    penalties read the weights and the whole batch, whatever the slices.)"""
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    out = []
    for m in (1, 4):
        config = tiny_config(*CNN, "widths=2,2,2,2", "optimizer=sgd", "penalty=none",
                             f"micro_batches={m}")
        run = training.init_run(config, digits.input_shape, 10)
        chunk = training.step.make_chunk(run, len(digits.y_train), None)
        state, metrics = chunk(run.state, x, y, 1)
        out.append((training.state_to_flat(state), {k: float(v) for k, v in metrics.items()}))
    (s1, m1), (s4, m4) = out
    assert m1.keys() == m4.keys()
    for k in m1:
        assert m4[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k
    assert_same_state(s1, s4, rtol=1e-5)
    with pytest.raises(ValueError, match="micro_batches=3; expected a divisor of batch_size=64"):
        tiny_config(*CNN, "micro_batches=3")


@pytest.mark.slow
def test_chunk_metrics_are_the_mean_of_the_steps(digits):
    config = tiny_config(*CNN)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    run = training.init_run(config, digits.input_shape, 10)
    chunk = training.step.make_chunk(run, len(digits.y_train), None)
    state, per_step = run.state, []
    for _ in range(3):
        state, m = chunk(state, x, y, 1)
        per_step.append(m)
    run2 = training.init_run(config, digits.input_shape, 10)
    chunk2 = training.step.make_chunk(run2, len(digits.y_train), None)
    _, m3 = chunk2(run2.state, x, y, 3)
    for k in m3:
        np.testing.assert_allclose(float(m3[k]), np.mean([float(m[k]) for m in per_step]),
                                   rtol=1e-5, err_msg=k)


def _models():
    rngs = nnx.Rngs(0)
    res = lnn.Sequential(
        lnn.Conv(1, 2, 3, input_size=(6, 6), padding="CIRCULAR", rngs=rngs), lnn.Abs(),
        lnn.Residual(lnn.Sequential(
            lnn.Conv(2, 2, 3, input_size=(6, 6), padding="CIRCULAR", rngs=rngs), lnn.Abs())),
        lnn.Flatten(), lnn.Dense(72, 3, rngs=rngs),
    )
    out = {"residual": (res, (6, 6, 1))}
    for model in ("cnn", "cnn_strided", "cnn_aol"):
        config = tiny_config(f"model={model}", "widths=4,6,6,4" if model != "cnn" else "widths=4")
        out[model] = (build_model(config, (8, 8, 1), 10, rngs=nnx.Rngs(1)), (8, 8, 1))
    out["leaf"] = (lnn.Dense(5, 3, rngs=rngs), (5,))
    return out


@pytest.mark.parametrize("name", [
    "cnn_strided",
    *(pytest.param(n, marks=pytest.mark.slow) for n in ("residual", "cnn", "cnn_aol", "leaf")),
])
def test_certified_bounds_compose_to_the_trivial_bound(name):
    model, shape = _models()[name]
    model.eval()
    upper, rows = jax.jit(lambda m: evaluation.certified_bounds(m, shape, 2))(model)
    want = bounds.trivial_bound(model, shape, p=2)
    assert upper.kind == want.kind
    assert float(upper.value) == float(want.value)
    table = bounds.layer_bounds(model, shape, p=2)
    assert [float(b.value) for b in rows] == [float(b.value) for _, b in table]


@pytest.mark.slow
def test_strided_cnn_layout_and_exact_factors():
    config = tiny_config("model=cnn_strided", "widths=3,4,4,2")
    model = build_model(config, (8, 8, 1), 5, rngs=nnx.Rngs(2))
    convs = [layer for layer in model.layers if isinstance(layer, lnn.Conv)]
    assert [c.strides for c in convs] == [(1, 1), (2, 2), (2, 2), (1, 1)]
    assert [c.input_size for c in convs] == [(8, 8), (8, 8), (4, 4), (2, 2)]
    shape = (8, 8, 1)
    for node in lnn.walk.top_level(model, shape):
        b = node.layer.lipschitz_bound(node.input_shape)
        if isinstance(node.layer, lnn.Conv):
            assert b.kind == "exact"  # circular, strides dividing the size: the FFT norm
            k = np.asarray(node.layer.kernel[...], np.float64)
            truth = ref.spectral_norm_truth(ref.conv_operator(
                k, node.input_shape[:2], node.layer.strides, "CIRCULAR"))
            np.testing.assert_allclose(float(b.value), truth, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["cnn_strided", "cnn_aol"])
def test_trivial_bound_is_above_float64_jacobian_norms(model_name):
    config = tiny_config(f"model={model_name}", "widths=4,6,6,4")
    model = build_model(config, (8, 8, 1), 5, rngs=nnx.Rngs(3))
    model.eval()
    upper = float(bounds.trivial_bound(model, (8, 8, 1)).value)
    with jax.enable_x64():
        gd, st = nnx.split(model)
        m64 = nnx.merge(gd, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), st))
        f = lambda x: m64(x.reshape(1, 8, 8, 1)).reshape(-1)  # noqa: E731
        xs = np.random.default_rng(0).uniform(-1, 2, (6, 64))
        gains = [np.linalg.norm(np.asarray(jax.jacfwd(f)(jnp.asarray(x))), 2) for x in xs]
    assert max(gains) <= upper
    if model_name == "cnn_aol":
        assert upper <= 1.0 + 1e-5  # AOL convolutions and head, MaxMin: 1-Lipschitz


def test_init_norm_starts_every_strided_cnn_factor_at_that_norm():
    config = tiny_config("model=cnn_strided", "widths=4,6,6,4", "init_norm=0.5", "bias=true")
    model = build_model(config, (8, 8, 1), 5, rngs=nnx.Rngs(4))
    convs = [layer for layer in model.layers if isinstance(layer, lnn.Conv)]
    assert all(c.bias is not None for c in convs)
    for c in convs:  # (co-)isometries of norm 0.5: every nonzero singular value is 0.5
        op = ref.conv_operator(np.asarray(c.kernel[...], np.float64), c.input_size, c.strides,
                               "CIRCULAR")
        s = np.linalg.svd(op, compute_uv=False)
        assert s.size == min(op.shape)
        np.testing.assert_allclose(s, 0.5, rtol=1e-5)
    head = np.asarray(model.layers[-1].kernel[...], np.float64)
    np.testing.assert_allclose(np.linalg.svd(head, compute_uv=False), 0.5, rtol=1e-5)


def test_aol_cnn_needs_even_widths():
    config = tiny_config("model=cnn_aol", "widths=4,5")
    with pytest.raises(ValueError, match="even widths"):
        build_model(config, (8, 8, 1), 5, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_evaluation_compiles_three_programs_for_every_size(digits):
    config = tiny_config(*CNN, "lower_steps=3", "lower_restarts=2")
    run = training.init_run(config, digits.input_shape, 10)
    evaluate = training.evaluation.make_evaluator(run)
    x, y = jnp.asarray(digits.x_test), jnp.asarray(digits.y_test, jnp.int32)
    key = jax.random.key(0)
    small = evaluate(run.state, x[:300], y[:300], key)
    full = evaluate(run.state, x, y, key)
    assert len(evaluate.programs.done) == 3  # bound, lower bound, one batch: reused
    assert small["lipschitz_upper"] == full["lipschitz_upper"]
    model = training.eval_model(run)
    want = bounds.trivial_bound(model, digits.input_shape)
    assert full["lipschitz_upper"] == float(want.value)
    assert full["lipschitz_lower"] <= full["lipschitz_upper"]
    # The report's rows: the same as the per-layer table computed on its own.
    rows = evaluation.layer_table(model, full["_layer_bounds"], full["_gains"])
    want_rows = layer_rows(model, digits.input_shape, 2.0, full["_witness"])
    for got, exp in zip(rows, want_rows, strict=True):
        assert got["layer"] == exp["layer"] and got["kind"] == exp["kind"]
        assert got["value"] == exp["value"]
        np.testing.assert_allclose(got["attained_gain"], exp["attained_gain"], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion-cnn4", "fashion-cnn4-nopen", "fashion-cnn4-aol"])
def test_fashion_cnn4_configs_build_four_convolutions(name):
    config = training.get_config(name)
    assert config.widths == (16, 32, 32, 32)
    model = build_model(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))
    convs = [layer for layer in model.layers if isinstance(layer, lnn.Conv | lnn.AOLConv)]
    assert len(convs) == 4
    assert model(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


# ----------------------------------------------------------------------------- the gap on CNNs


def _tiny_cnn(seed: int, widths: str = "4,6,6,4"):
    config = tiny_config("model=cnn_strided", f"widths={widths}")
    model = build_model(config, (8, 8, 1), 5, rngs=nnx.Rngs(seed))
    model.eval()
    return model


def _float64_jacobian_norms(model, xs: np.ndarray) -> np.ndarray:
    """‖J(x_i)‖₂ of the model at each x_i: float64 forward-mode Jacobian, NumPy SVD."""
    with jax.enable_x64():
        gd, st = nnx.split(model)
        m64 = nnx.merge(gd, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), st))
        f = lambda x: m64(x.reshape(1, 8, 8, 1)).reshape(-1)  # noqa: E731
        jac = jax.jit(jax.vmap(jax.jacfwd(f)))(jnp.asarray(xs.reshape(len(xs), -1), jnp.float64))
        return np.array([np.linalg.norm(np.asarray(j), 2) for j in jac])


_gain = nnx.jit(gap.attained_log_gain, static_argnames=("power_iters", "unroll"))


@pytest.mark.slow
def test_gap_on_a_cnn_is_log_bound_minus_the_float64_gain_at_the_points():
    model = _tiny_cnn(0)
    xs = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    truth = _float64_jacobian_norms(model, xs)
    # 40 power steps as a loop (40 unrolled steps take minutes to compile), then the training
    # path's unrolled steps: the same directions, the same gain as the loop's.
    converged = math.exp(float(_gain(model, jnp.asarray(xs), power_iters=40, unroll=False)))
    assert converged == pytest.approx(truth.max(), rel=2e-4)
    unrolled = float(_gain(model, jnp.asarray(xs), power_iters=2))
    assert unrolled == pytest.approx(
        float(_gain(model, jnp.asarray(xs), power_iters=2, unroll=False)), abs=1e-5)
    assert math.exp(unrolled) <= truth.max() * (1 + 1e-5)  # attained: ≤ the true local norm
    log_upper = jnp.log(bounds.trivial_bound(model, (8, 8, 1)).value)
    config = tiny_config("model=cnn_strided", "gap_weight=1", "gap_points=3",
                         "gap_power_iters=2")
    g = float(gap.gap_penalty(config, model, log_upper, jnp.asarray(xs)))
    assert g == pytest.approx(float(log_upper) - unrolled, abs=1e-5)
    assert float(log_upper) - math.log(truth.max()) >= -1e-5  # the bound is above every gain


def _chunk_jaxpr(config, data):
    run = training.init_run(config, data.input_shape, 10)
    chunk = training.step.make_chunk(run, len(data.y_train), None)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    return jax.make_jaxpr(lambda s: chunk(s, x, y, 1))(run.state)


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_a_cnn_chunk_with_the_gap_runs_no_convolution_inside_a_loop(digits):
    # Old mechanism: the gap's power steps were a fori_loop, whose body (jvp and vjp of the
    # network) holds every convolution: XLA's CPU backend runs those ~15× slower in a loop.
    with_gap = _chunk_jaxpr(tiny_config(*CNN, "gap_weight=1", "gap_power_iters=2"), digits)
    assert _loops_over_convs(with_gap) == []
    without = _chunk_jaxpr(tiny_config(*CNN), digits)
    # the gap's power steps and its differentiated jvp add convolutions, all outside loops
    assert str(with_gap).count("conv_general_dilated") > str(without).count("conv_general_dilated")


@pytest.mark.parametrize("model,accepted", [("cnn_strided", True), ("cnn", True),
                                            ("cnn_aol", False)])
def test_gap_is_accepted_on_free_weight_cnns_only(model, accepted):
    args = [f"model={model}", "widths=4,6", "gap_weight=1"]
    if accepted:
        assert tiny_config(*args).gap_weight == 1.0
        assert model in gap.GAP_MODELS
    else:
        with pytest.raises(ValueError, match="model='cnn_aol'"):
            tiny_config(*args)


@pytest.mark.parametrize("overrides, message", [
    (["model=cnn_aol", "init_norm=1"], "model='cnn_aol'; expected a free-weight MLP or cnn_"),
    (["model=abs_mlp", "bias=true"], "bias=True; expected false unless model is cnn_strided"),
    (["model=cnn_strided", "activation=relu"], "activation='relu'; expected abs or maxmin"),
    (["model=cnn_aol", "activation=maxmin"], "activation='maxmin'; expected abs unless"),
    (["model=cnn_strided", "activation=maxmin", "widths=4,5"], "widths=(4, 5); expected even"),
])
def test_cnn_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_config(*overrides)


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_maxmin_activation_keeps_the_strided_cnn_sound():
    config = tiny_config("model=cnn_strided", "widths=4,6", "activation=maxmin")
    model = build_model(config, (4, 4, 1), 3, rngs=nnx.Rngs(5))
    model.eval()
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv", "MaxMin", "Conv", "MaxMin", "Flatten", "Dense"]
    upper = float(nnx.jit(lambda m: bounds.trivial_bound(m, (4, 4, 1)).value)(model))
    with jax.enable_x64():
        gd, st = nnx.split(model)
        st = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), st)

        @jax.jit
        def jacobians(st, xs):
            m64 = nnx.merge(gd, st)
            return jax.vmap(jax.jacfwd(lambda x: m64(x.reshape(1, 4, 4, 1)).reshape(-1)))(xs)

        xs = jnp.asarray(np.random.default_rng(1).normal(size=(8, 16)))
        gains = [np.linalg.norm(j, 2) for j in np.asarray(jacobians(st, xs))]
    assert max(gains) <= upper * (1 + 1e-6)


# ----------------------------------------------------------------------------- ExactConv


@pytest.mark.slow
@pytest.mark.parametrize("strides,hw,cin,cout", [(1, (8, 8), 1, 3), (2, (8, 6), 3, 4)])
def test_exact_conv_penalty_value_is_the_float64_norm_where_power_iteration_is_below(
        strides, hw, cin, cout):
    # Old mechanism: the penalty's value of a circular Conv was one warm power step, below the
    # norm (the 4-conv CNN's estimates were 0.6-3.6% under it); ExactConv gives the norm.
    key = jax.random.key(strides)
    exact = lnn.ExactConv(cin, cout, 3, input_size=hw, strides=strides, rngs=nnx.Rngs(key))
    plain = lnn.Conv(cin, cout, 3, input_size=hw, strides=strides, padding="CIRCULAR",
                     rngs=nnx.Rngs(key))
    k = np.asarray(exact.kernel[...], np.float64)
    truth = ref.spectral_norm_truth(ref.conv_operator(k, hw, strides, "CIRCULAR"))
    shape = (*hw, cin)
    before = np.asarray(exact.power_state[...])
    assert float(exact.lipschitz_estimate(shape).value) == pytest.approx(truth, rel=1e-5)
    assert not np.array_equal(before, np.asarray(exact.power_state[...]))  # the state moved
    assert float(plain.lipschitz_estimate(shape).value) < truth * (1 - 1e-3)
    # the same map, the same certificate as Conv
    x = jax.random.normal(jax.random.key(9), (2, *shape))
    np.testing.assert_array_equal(np.asarray(exact(x)), np.asarray(plain(x)))
    assert float(exact.lipschitz_bound(shape).value) == float(plain.lipschitz_bound(shape).value)


@pytest.mark.slow
def test_cnn_exact_penalty_is_the_log_of_its_exact_conv_norms_and_the_head_estimate():
    config = tiny_config("model=cnn_exact", "widths=4,6,6,4")
    model = build_model(config, (8, 8, 1), 5, rngs=nnx.Rngs(4))
    nodes = lnn.walk.top_level(model, (8, 8, 1))
    convs = [n for n in nodes if isinstance(n.layer, lnn.Conv)]
    assert [type(n.layer) for n in convs] == [lnn.ExactConv] * 4
    head = nnx.clone(nodes[-1].layer)  # its warm power step, from the same state
    head_log = math.log(float(head.lipschitz_estimate(nodes[-1].input_shape).value))
    pen = float(bounds.trivial_bound_penalty(model, (8, 8, 1)))
    want = sum(math.log(ref.spectral_norm_truth(ref.conv_operator(
        np.asarray(n.layer.kernel[...], np.float64), n.input_shape[:2], n.layer.strides,
        "CIRCULAR"))) for n in convs)
    assert pen == pytest.approx(want + head_log, abs=1e-4)
