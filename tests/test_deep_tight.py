"""The gap penalty (liplax/training/gap.py) and the depth experiment (experiments/deep_tight.py).

The attained gain is checked against an independent float64 reference: the top singular value
of the network's Jacobian (``jax.jacrev``, NumPy SVD) at each point; the gap against the
certified trivial bound.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liplax import bounds, training
from liplax.training import gap
from liplax.training.models import build_model
from tests.train_helpers import tiny_config

SHAPE = (8, 8, 1)


def _model(model: str = "sin_mlp", seed: int = 0, widths=(6, 6)):
    config = training.Config(model=model, widths=widths)
    m = build_model(config, SHAPE, 4, rngs=nnx.Rngs(params=jax.random.key(seed)))
    m.eval()
    return m


def _points(seed: int, n: int = 3) -> jax.Array:
    return jax.random.uniform(jax.random.key(100 + seed), (n, *SHAPE), jnp.float32)


@nnx.jit
def _jacobians(model, xs):
    return jax.vmap(jax.jacrev(lambda z: model(z.reshape(SHAPE)[None])[0]))(
        xs.reshape(xs.shape[0], -1))


def _jacobian_norms(model, xs) -> np.ndarray:
    jacs = np.asarray(_jacobians(model, xs), np.float64)
    return np.array([np.linalg.norm(j, 2) for j in jacs])


_gain = nnx.jit(gap.attained_log_gain, static_argnames="power_iters")


@pytest.mark.parametrize("model,seed", [("sin_mlp", 0), ("sin_mlp", 1), ("abs_mlp", 0),
                                        ("crelu_mlp", 2)])
def test_attained_gain_is_the_largest_local_norm_over_the_points(model, seed):
    m, xs = _model(model, seed), _points(seed)
    truth = _jacobian_norms(m, xs)
    converged = math.exp(float(_gain(m, xs, power_iters=80)))
    assert converged == pytest.approx(truth.max(), rel=1e-4)
    one_step = math.exp(float(_gain(m, xs, power_iters=1)))
    assert one_step <= truth.max() * (1 + 1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_gap_against_the_certified_bound_is_nonnegative(seed):
    m, xs = _model(seed=seed), _points(seed, 5)
    log_upper = jnp.log(bounds.trivial_bound(m, SHAPE).value)
    config = training.Config(gap_points=5, gap_power_iters=20)
    assert float(gap.gap_penalty(config, m, log_upper, xs)) >= -1e-5


def test_gradient_is_that_of_the_gain_along_the_fixed_top_direction():
    """d/dθ of the penalty's gain = d/dθ log‖J_θ(x*)v*‖ with x*, v* held fixed (no gradient
    through the power iteration), v* the top right singular vector from the NumPy SVD."""
    m, xs = _model(seed=3), _points(3)
    truth = _jacobian_norms(m, xs)
    i = int(np.argmax(truth))
    jac = jax.jacrev(lambda z: m(z.reshape(SHAPE)[None])[0])(xs[i].reshape(-1))
    v = jnp.asarray(np.linalg.svd(np.asarray(jac, np.float64))[2][0].reshape(SHAPE), jnp.float32)
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def ours(p):
        return gap.attained_log_gain(nnx.merge(graphdef, p, rest), xs, power_iters=80)

    def reference(p):
        jv = jax.jvp(nnx.merge(graphdef, p, rest), (xs[i:i + 1],), (v[None],))[1]
        return jnp.log(jnp.linalg.norm(jv))

    g1, g2 = jax.jit(jax.grad(ours))(params), jax.jit(jax.grad(reference))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_a_training_chunk_with_the_gap_reports_it_in_its_metric_means():
    # The chunk's running metric sums must hold the gap too (a merge once left them without it:
    # every gap config failed at its first chunk with a pytree-structure error).
    from liplax.training import data

    digits = data.load_digits()
    config = tiny_config("gap_weight=0.5", "penalty_weight=0.1")
    run = training.init_run(config, digits.input_shape, 10)
    chunk = training.step.make_chunk(run, len(digits.y_train), None)
    _, m = chunk(run.state, jnp.asarray(digits.x_train), jnp.asarray(digits.y_train), 2)
    assert set(m) == {"loss", "penalty", "objective", "train_accuracy", "gap"}
    assert float(m["objective"]) == pytest.approx(
        float(m["loss"]) + 0.1 * float(m["penalty"]) + 0.5 * float(m["gap"]), rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_training_objective_includes_the_gap_term(tmp_path):
    config = tiny_config("gap_weight=0.5", "penalty_weight=0.1", "steps=10", "log_every=5",
                         "eval_every=10", "checkpoint_every=10")
    report = training.train(config, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    rows = [r for r in rows if "gap" in r]
    assert len(rows) == 2
    for r in rows:  # chunk means of a sum with constant weights: the sum of the means
        assert r["objective"] == pytest.approx(r["loss"] + 0.1 * r["penalty"] + 0.5 * r["gap"],
                                               rel=1e-5, abs=1e-6)
    assert report["lipschitz_lower"] <= report["lipschitz_upper"]


@pytest.mark.parametrize("overrides,message", [
    (["gap_weight=0.5", "penalty=none"], "penalty='none'; expected log when gap_weight > 0"),
    (["gap_weight=0.5", "model=groupsort_mlp", "widths=8"], "model='groupsort_mlp'"),
    (["gap_points=0"], "gap_points=0; expected an integer ≥ 1"),
    (["gap_weight=-1"], "gap_weight=-1.0; expected a finite number ≥ 0"),
])
def test_gap_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        training.get_config("default", overrides)


def _check_rows(rows, families, depths):
    assert [(r["family"], r["depth"]) for r in rows] == [(f, d) for f in families for d in depths]
    for r in rows:
        assert r["kind"] in ("upper", "exact")
        assert 0 < r["lower"] <= r["upper"]  # attained ≤ certified
        assert r["tightness"] == pytest.approx(r["upper"] / r["lower"], rel=1e-6)
        certs = [r[f"cert@{e}"] for e in ("0.1", "0.3", "0.5", "1")]
        assert certs == sorted(certs, reverse=True) and certs[0] <= r["clean"]
        if r["family"] in ("aol", "groupsort + björck"):  # 1-Lipschitz layers, MaxMin
            assert r["upper"] <= 1.0 + 1e-4


def test_every_family_config_has_the_depth_and_width_asked():
    from experiments import deep_tight

    for label, (model, _) in deep_tight.FAMILIES.items():
        for depth in deep_tight.DEPTHS:
            c = deep_tight.family_config(label, depth, steps=2000, width=128, quick=False, seed=0)
            assert c.model == model and c.widths == (128,) * depth and c.steps == 2000
            assert c.dataset == "fashion-mnist" and c.eps == (0.1, 0.3, 0.5, 1.0)
            assert (c.gap_weight > 0) == (label in ("sin + gap", "abs + gap"))
            assert (c.penalty == "none") == (label not in ("sin + gap", "abs + gap", "sin + log"))
            assert (c.init_norm == 1) == (label == "abs + gap")


@pytest.mark.slow
def test_quick_depth_experiment_writes_rows_table_and_plot(tmp_path):
    from experiments import deep_tight

    families, depths = ["sin + gap", "aol"], (1, 2)
    result = deep_tight.run(tmp_path, quick=True, families=families, depths=depths)
    _check_rows(result["rows"], families, depths)
    out = tmp_path / "deep_tight"
    saved = json.loads((out / "deep_tight.json").read_text())
    assert saved["steps"] == 30 and len(saved["rows"]) == 4
    assert (out / "deep_tight.png").stat().st_size > 0
    assert "| sin + gap | 2 |" in (out / "deep_tight.md").read_text()


@pytest.mark.slow
def test_quick_depth_experiment_every_family(tmp_path):
    from experiments import deep_tight

    result = deep_tight.run(tmp_path, quick=True)
    _check_rows(result["rows"], list(deep_tight.FAMILIES), deep_tight.QUICK_DEPTHS)


@pytest.mark.parametrize("seed", [0, 1])
def test_aol_mlp_bound_is_sound_and_at_most_one(seed):
    """The AOL baseline: the trivial bound is ≥ the product of the applied matrices' float64
    spectral norms (MaxMin is 1-Lipschitz) and ≤ 1 (each layer certified 1-Lipschitz)."""
    m = _model("aol_mlp", seed, widths=(6, 6))
    b = bounds.trivial_bound(m, SHAPE)
    assert b.kind == "upper"
    norms = [np.linalg.norm(np.asarray(layer.effective_kernel(), np.float64), 2)
             for layer in m.layers if hasattr(layer, "effective_kernel")]
    assert len(norms) == 3
    assert float(np.prod(norms)) <= float(b.value) <= 1.0 + 1e-5


def test_witness_gain_is_the_float64_gain_of_the_witness():
    from liplax.certify.witness import witness_gain

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3))

    def f(x):  # a plain batched map, f(x) = tanh(x A)
        return jnp.tanh(x @ a)

    x, y = rng.normal(size=5), rng.normal(size=5)
    want = np.linalg.norm(np.tanh(x @ a) - np.tanh(y @ a)) / np.linalg.norm(x - y)
    assert witness_gain(f, "pair", x, y) == pytest.approx(want, rel=1e-13)
    jac = (1 - np.tanh(x @ a) ** 2)[:, None] * a.T
    assert witness_gain(f, "local", x, y) == pytest.approx(
        np.linalg.norm(jac @ y) / np.linalg.norm(y), rel=1e-13)
    assert witness_gain(f, "local", x, y, p="inf") == pytest.approx(
        np.max(np.abs(jac @ y)) / np.max(np.abs(y)), rel=1e-13)
