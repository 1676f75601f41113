"""Certified radius/accuracy hand-checked on constructed logits; lower bounds on known maps."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax.certify import (
    certified_accuracy,
    certified_radius,
    lipschitz_lower_bound,
    local_norm,
    local_norm_ascent,
    tightness,
)
from liplax.guarantee import Bound

# Four examples: a clear win (margin 2), a tie between the label and another class, a tie
# between two other classes above the label, and a misclassified point.
LOGITS = jnp.array([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0], [1.0, 5.0, 5.0], [1.0, 4.0, 0.0]])
LABELS = jnp.array([0, 1, 0, 0])


@pytest.mark.parametrize(
    "p, head, factor",
    [(2, "global", math.sqrt(2.0)), ("inf", "global", 2.0), (1, "global", 1.0),
     (2, "per_logit", 2.0), (np.inf, "per_logit", 2.0)],
)
def test_radius_hand_checked_with_ties(p, head, factor):
    r = certified_radius(LOGITS, LABELS, 0.5, p=p, head=head)
    np.testing.assert_allclose(r, [2.0 / (factor * 0.5), 0.0, 0.0, 0.0], rtol=1e-6)


def test_radius_input_scale_uses_smallest_scale():
    base = certified_radius(LOGITS, LABELS, Bound(jnp.asarray(0.5), "upper"))
    np.testing.assert_allclose(certified_radius(LOGITS, LABELS, 0.5, input_scale=0.25), base / 4)
    np.testing.assert_allclose(
        certified_radius(LOGITS, LABELS, 0.5, input_scale=jnp.array([0.5, 0.2, 1.0])), base * 0.2
    )


def test_accuracy_strict_and_tie_safe():
    # per-logit ℓ2: radius of example 0 is 2 / (2·0.5) = 2 exactly.
    acc = certified_accuracy(
        LOGITS, LABELS, 0.5, jnp.array([0.0, 1.999, 2.0, 3.0]), head="per_logit"
    )
    np.testing.assert_allclose(acc, [0.25, 0.25, 0.0, 0.0])  # margin = 2·L·ε is not certified
    assert certified_accuracy(LOGITS, LABELS, 0.5, 0.0).shape == ()
    # per-example bounds broadcast against the labels
    acc = certified_accuracy(LOGITS, LABELS, jnp.array([0.1, 1.0, 1.0, 1.0]), 1.0, p="inf")
    np.testing.assert_allclose(acc, 0.25)


@pytest.mark.parametrize("p, head", [(2, "global"), ("inf", "global"), (2, "per_logit")])
def test_radius_sound_and_tight_on_linear_two_class_map(p, head):
    """For f(x) = x·[a, −a] the factor is attained: the radius equals the flip distance."""
    a = 0.7
    A = np.array([[a, -a]])
    if head == "per_logit":
        lip = a  # each logit ±a·x is a-Lipschitz
    elif p == "inf":
        lip = np.abs(A).sum(axis=0).max()  # ‖x ↦ xA‖_{∞→∞}: max column abs-sum
    else:
        lip = np.linalg.norm(A, 2)
    xs = np.array([[1.3], [-0.4], [2.0]])
    logits = xs @ A
    labels = np.argmax(logits, axis=1)
    r = certified_radius(jnp.asarray(logits), jnp.asarray(labels), lip, p=p, head=head)
    flip = np.abs(xs[:, 0])  # the decision boundary is x = 0
    np.testing.assert_allclose(r, flip, rtol=1e-6)


@pytest.mark.parametrize(
    "bad, err, match",
    [
        (Bound(jnp.asarray(1.0), "estimate"), ValueError, "estimate"),
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        (-1.0, ValueError, "≥ 0"),
    ],
)
def test_refuses_bad_lipschitz(bad, err, match):
    with pytest.raises(err, match=match):
        certified_radius(LOGITS, LABELS, bad)
    with pytest.raises(err, match=match):
        certified_accuracy(LOGITS, LABELS, bad, 0.1)


def test_refuses_bad_arguments():
    with pytest.raises(ValueError, match="logits must be finite"):
        certified_radius(LOGITS.at[0, 0].set(jnp.nan), LABELS, 1.0)
    with pytest.raises(ValueError, match="labels must lie in"):
        certified_radius(LOGITS, jnp.array([0, 1, 2, 3]), 1.0)
    with pytest.raises(TypeError, match="integer"):
        certified_radius(LOGITS, jnp.zeros(4), 1.0)
    with pytest.raises(ValueError, match="head"):
        certified_radius(LOGITS, LABELS, 1.0, head="both")
    with pytest.raises(ValueError, match="p must be"):
        certified_radius(LOGITS, LABELS, 1.0, p=3)
    with pytest.raises(ValueError, match="input_scale"):
        certified_radius(LOGITS, LABELS, 1.0, input_scale=0.0)
    with pytest.raises(ValueError, match="eps"):
        certified_accuracy(LOGITS, LABELS, 1.0, -0.1)


def test_certify_under_jit_matches_eager():
    bound = Bound(jnp.asarray(0.5), "exact")
    jitted = jax.jit(lambda lg, lb, b: certified_radius(lg, lb, b))(LOGITS, LABELS, bound)
    np.testing.assert_allclose(jitted, certified_radius(LOGITS, LABELS, bound))


# ----------------------------------------------------------------------------- lower bounds

RNG = np.random.default_rng(0)
A = RNG.normal(size=(5, 3)).astype(np.float32)
XS = jnp.asarray(RNG.normal(size=(6, 5)), jnp.float32)


def linear(x):
    return x @ A


@functools.cache
def linear_lower(p):
    if p == 2:  # through an outer jax.jit: the whole search is jit-able
        run = jax.jit(functools.partial(lipschitz_lower_bound, linear, p=2, steps=20, restarts=4))
        return run(XS, key=jax.random.key(1))
    return lipschitz_lower_bound(linear, XS, key=jax.random.key(1), p=p, steps=20, restarts=4)


@pytest.mark.parametrize(
    "p, truth",
    [(2, np.linalg.norm(A, 2)), ("inf", np.abs(A).sum(0).max()), (1, np.abs(A).sum(1).max())],
)
def test_lower_bound_attains_the_norm_of_a_linear_map(p, truth):
    res = linear_lower(p)
    assert res.bound.kind == "estimate"
    np.testing.assert_allclose(res.value, truth, rtol=1e-5)
    assert res.value <= truth * (1 + 1e-5)


@pytest.mark.parametrize("p", [2, "inf", 1])
def test_lower_bound_witnesses_reproduce_its_values(p):
    res = linear_lower(p)
    order = {2: 2, "inf": np.inf, 1: 1}[p]
    A64 = A.astype(np.float64)
    v = np.asarray(res.direction, np.float64)
    gain = np.linalg.norm(v @ A64, order) / np.linalg.norm(v, order)
    np.testing.assert_allclose(res.local_gain, gain, rtol=1e-5)
    x, y = np.asarray(res.x, np.float64), np.asarray(res.y, np.float64)
    ratio = np.linalg.norm((x - y) @ A64, order) / np.linalg.norm(x - y, order)
    np.testing.assert_allclose(res.pair_ratio, ratio, rtol=1e-4)


def test_lower_bound_refused_by_certification():
    with pytest.raises(ValueError, match="estimate"):
        certified_radius(LOGITS, LABELS, linear_lower(2).bound)


def test_lower_bound_argument_checks():
    with pytest.raises(ValueError, match="steps"):
        lipschitz_lower_bound(linear, XS, key=jax.random.key(0), steps=0)
    with pytest.raises(ValueError, match="xs"):
        lipschitz_lower_bound(linear, XS[0], key=jax.random.key(0))
    with pytest.raises(TypeError, match="callable"):
        lipschitz_lower_bound(A, XS, key=jax.random.key(0))


def test_tightness_is_upper_over_lower_on_a_batched_model():
    upper = np.linalg.norm(A, 2) * 3.0
    t = tightness(
        lambda xb: xb @ A, XS, upper, key=jax.random.key(1), steps=20, restarts=4, batched=True
    )
    # same key, same search: eager on a batched model = jitted on the single-example map
    np.testing.assert_allclose(t.lower.value, linear_lower(2).value, rtol=1e-6)
    np.testing.assert_allclose(t.ratio, upper / t.lower.value, rtol=1e-6)
    np.testing.assert_allclose(t.ratio, 3.0, rtol=1e-5)
    with pytest.raises(ValueError, match="estimate"):
        tightness(linear, XS, Bound(jnp.asarray(2.0), "estimate"), key=jax.random.key(1))


def test_tightness_defaults_to_the_trivial_bound_of_a_liplax_model():
    from flax import nnx

    from liplax import bounds, nn

    model = nn.Sequential(nn.Dense(5, 3, rngs=nnx.Rngs(0)))  # linear: the trivial bound is tight
    model.eval()
    t = tightness(model, XS, key=jax.random.key(1), steps=20, restarts=4, batched=True)
    np.testing.assert_allclose(t.upper, bounds.trivial_bound(model, (5,)).value)
    np.testing.assert_allclose(t.ratio, 1.0, rtol=1e-5)


def test_tightness_of_a_model_that_starts_with_flatten_as_the_readme_calls_it():
    """An NNX model takes a batch: tightness calls it so without a flag (issue: the documented
    call failed in Dense on any model starting with Flatten)."""
    from flax import nnx

    from liplax import bounds, nn

    model = nn.Sequential(nn.Flatten(), nn.Dense(12, 3, rngs=nnx.Rngs(0)))  # linear: tight
    model.eval()
    xs = jax.random.normal(jax.random.key(2), (6, 4, 3))
    t = tightness(model, xs, key=jax.random.key(1), steps=20, restarts=4)
    w = np.asarray(model.layers[1].kernel[...], np.float64)
    np.testing.assert_allclose(t.upper, bounds.trivial_bound(model, (4, 3)).value)
    np.testing.assert_allclose(t.lower.value, np.linalg.norm(w, 2), rtol=1e-4)
    np.testing.assert_allclose(t.ratio, 1.0, rtol=1e-4)
    assert t.lower.point.shape == (4, 3)
    explicit = tightness(model, xs, key=jax.random.key(1), steps=20, restarts=4, batched=True)
    np.testing.assert_array_equal(explicit.ratio, t.ratio)


def test_tightness_of_a_plain_callable_needs_its_upper_bound():
    with pytest.raises(TypeError, match="upper=None takes the trivial bound of a liplax model"):
        tightness(linear, XS, key=jax.random.key(1))


def test_tightness_ratio_is_one_definition_with_its_edge_cases():
    from liplax.certify import tightness_ratio

    got = np.asarray(tightness_ratio(jnp.array([3.0, 2.0, 0.0, np.nan, 1.0, 5.0]),
                                     jnp.array([1.5, 0.0, 0.0, 1.0, np.nan, 5.0])))
    # found nothing (lower 0): inf; constant map (0 / 0): the bound is exact, ratio 1; nan stays
    np.testing.assert_array_equal(got, [2.0, np.inf, 1.0, np.nan, np.nan, 1.0])
    assert float(tightness_ratio(6, 4)) == 1.5


def test_model_sweep_tightness_of_a_constant_model_is_one_not_nan():
    """A zero network has upper = lower = 0: its bound is exact. model_sweep divided directly
    (0/0 = nan) where the training evaluation said inf; both now use certify.tightness_ratio."""
    from flax import nnx

    from liplax import nn
    from liplax.certify import tightness_ratio
    from liplax.sweep import model_sweep

    models = []
    for s in range(2):
        m = nn.Sequential(nn.Dense(5, 3, rngs=nnx.Rngs(s)))
        m.layers[0].kernel[...] = jnp.zeros((5, 3)) if s == 0 else m.layers[0].kernel[...]
        models.append(m)
    out = model_sweep(models, (5,), xs=XS, lower_steps=3)
    np.testing.assert_array_equal(
        np.asarray(out["tightness"]),
        np.asarray(tightness_ratio(out["trivial"].value, out["lower"].value)),
    )
    assert float(out["tightness"][0]) == 1.0
    assert float(out["tightness"][1]) >= 1 - 1e-5


def test_tightness_prints_numbers_not_witness_arrays():
    t = tightness(linear, XS, 2.0 * np.linalg.norm(A, 2), key=jax.random.key(1), steps=5,
                  restarts=2)
    text = repr(t)
    assert "\n" not in text and len(text) < 120, text
    assert text.startswith(f"Tightness(ratio={float(t.ratio):.6g}, upper={float(t.upper):.6g}")
    assert f"witness shape {tuple(XS.shape[1:])}" in text


# ----------------------------------------------------------------------------- local_norm_ascent


@pytest.mark.parametrize("p", [2, math.inf, 1])
def test_local_norm_is_the_induced_norm(p):
    jac = np.asarray(jax.random.normal(jax.random.key(0), (4, 9)), np.float64)
    truth = {2: np.linalg.norm(jac, 2), math.inf: np.abs(jac).sum(1).max(),
             1: np.abs(jac).sum(0).max()}[p]
    assert float(local_norm(jnp.asarray(jac, jnp.float32), p)) == pytest.approx(truth, rel=1e-5)
    tall = jac.T  # (9, 4): the other Gram matrix
    t2 = {2: np.linalg.norm(tall, 2), math.inf: np.abs(tall).sum(1).max(),
          1: np.abs(tall).sum(0).max()}[p]
    assert float(local_norm(jnp.asarray(tall, jnp.float32), p)) == pytest.approx(t2, rel=1e-5)


def test_local_norm_ascent_finds_the_constant_of_a_smooth_network():
    # f(x) = W2 (cos W1x, sin W1x) with W1 = a·u vᵀ of rank one: J(x) = W2 (−sin z ⊙ au;
    # cos z ⊙ au) vᵀ with z = a(vᵀx)u, so ‖J(x)‖ = ‖v‖·‖W2 (−sin z ⊙ au; cos z ⊙ au)‖ depends on
    # x through s = vᵀx only: its supremum is found on a fine grid of s in float64.
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    u = np.asarray(jax.random.normal(k1, (6,)), np.float64)
    v = np.asarray(jax.random.normal(k2, (5,)), np.float64)
    w2 = np.asarray(jax.random.normal(k3, (3, 12)), np.float64)
    a = 1.3
    w1 = a * np.outer(u, v)  # (6, 5)

    def f(x):
        z = jnp.asarray(w1, jnp.float32) @ x
        return jnp.asarray(w2, jnp.float32) @ jnp.concatenate([jnp.cos(z), jnp.sin(z)])

    def sup_gain(radius):  # sup of ‖J(x)‖ over |vᵀx| ≤ radius, on a fine grid
        z = np.outer(np.linspace(-radius, radius, 400001), a * u)
        dcol = np.concatenate([-np.sin(z) * (a * u), np.cos(z) * (a * u)], axis=1)
        return np.max(np.linalg.norm(dcol @ w2.T, axis=1)) * np.linalg.norm(v)

    starts = jax.random.normal(jax.random.key(2), (8, 5))
    found = local_norm_ascent(f, starts, steps=300, learning_rate=0.05)
    jac = np.asarray(jax.jacrev(f)(found.point), np.float64)
    assert float(found.value) == pytest.approx(np.linalg.norm(jac, 2), rel=1e-5)  # attained
    assert float(found.value) <= sup_gain(40.0) * (1 + 1e-5)  # a lower bound
    # ‖J‖ is quasi-periodic in vᵀx: the ascent finds the best peak near its starts
    # (|vᵀx| ≤ 3 covers them), not necessarily the global one further out.
    assert abs(float(found.point @ v)) <= 3
    assert float(found.value) >= sup_gain(3.0) * (1 - 1e-4)


def test_local_norm_ascent_on_a_linear_map_is_its_norm():
    w = jax.random.normal(jax.random.key(4), (3, 7))
    found = local_norm_ascent(lambda x: w @ x, jnp.ones((2, 7)), steps=3)
    assert float(found.value) == pytest.approx(float(np.linalg.norm(np.asarray(w), 2)), rel=1e-5)


def test_local_norm_ascent_argument_checks():
    f = lambda x: x  # noqa: E731
    with pytest.raises(ValueError, match="starts must be a batch"):
        local_norm_ascent(f, jnp.ones(3))
    with pytest.raises(ValueError, match="learning_rate"):
        local_norm_ascent(f, jnp.ones((2, 3)), learning_rate=0)
    with pytest.raises(TypeError, match="f must be callable"):
        local_norm_ascent(3, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN|finite"):
        local_norm_ascent(f, jnp.full((2, 3), jnp.nan))
