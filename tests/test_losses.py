"""liplax.training.losses against float64 NumPy formulas written out per example."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax.training import losses

# ----------------------------------------------------------------------------- NumPy references


def np_ce(z: np.ndarray, y: np.ndarray) -> float:
    out = []
    for zi, yi in zip(z, y, strict=True):
        top = zi.max()
        out.append(top + np.log(np.sum(np.exp(zi - top))) - zi[yi])
    return float(np.mean(out))


def np_offset_ce(z, y, offset, temperature) -> float:
    shifted = z.copy()
    shifted[np.arange(len(y)), y] -= offset
    return np_ce(temperature * shifted, y) / temperature


def np_margins(z, y) -> np.ndarray:
    pairs = zip(z, y, strict=True)
    return np.array([zi[yi] - max(zi[j] for j in range(len(zi)) if j != yi) for zi, yi in pairs])


def np_hinge(z, y, margin) -> float:
    return float(np.mean([max(0.0, margin - m) for m in np_margins(z, y)]))


def np_kr(z, y) -> float:
    vals = []
    for zi, yi in zip(z, y, strict=True):
        rest = [zi[j] for j in range(len(zi)) if j != yi]
        vals.append(zi[yi] - sum(rest) / len(rest))
    return float(np.mean(vals))


def np_hkr(z, y, alpha, margin) -> float:
    return alpha * np_hinge(z, y, margin) - np_kr(z, y)


def sample(seed: int, batch: int = 7, k: int = 5, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(batch, k)), rng.integers(0, k, size=batch)


CASES = [
    ("ce", {}, lambda z, y: np_ce(z, y)),
    ("offset_ce", {"offset": 0.7, "temperature": 3.0},
     lambda z, y: np_offset_ce(z, y, 0.7, 3.0)),
    ("offset_ce", {"offset": 2.5, "temperature": 0.25},
     lambda z, y: np_offset_ce(z, y, 2.5, 0.25)),
    ("hinge", {"margin": 1.5}, lambda z, y: np_hinge(z, y, 1.5)),
    ("hinge", {}, lambda z, y: np_hinge(z, y, 1.0)),
    ("hkr", {"alpha": 4.0, "margin": 0.5}, lambda z, y: np_hkr(z, y, 4.0, 0.5)),
    ("hkr", {}, lambda z, y: np_hkr(z, y, 10.0, 1.0)),
]


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("name,params,ref", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_values_float64(name, params, ref, seed):
    z, y = sample(seed, k=2 + 3 * seed)
    with jax.enable_x64(True):
        got = float(losses.get_loss(name, **params)(jnp.asarray(z), jnp.asarray(y)))
    np.testing.assert_allclose(got, ref(z, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,params,ref", CASES)
def test_values_float32(name, params, ref):
    z, y = sample(2, batch=16, k=10)
    z = z.astype(np.float32)
    out = losses.get_loss(name, **params)(jnp.asarray(z), jnp.asarray(y, jnp.int32))
    assert out.dtype == jnp.float32 and out.shape == ()
    np.testing.assert_allclose(float(out), ref(z.astype(np.float64), y), rtol=2e-5, atol=2e-5)


def test_kr_formula_and_sign():
    z, y = sample(3)
    with jax.enable_x64(True):
        got = float(losses.kr(jnp.asarray(z), jnp.asarray(y)))
        # gradient of a mean of z_y − mean_{j≠y} z_j: +1/B on the true logit, −1/(B(k−1)) elsewhere
        g = np.asarray(jax.grad(losses.kr)(jnp.asarray(z), jnp.asarray(y)))
    np.testing.assert_allclose(got, np_kr(z, y), rtol=1e-12)
    b, k = z.shape
    expected = np.full((b, k), -1.0 / (b * (k - 1)))
    expected[np.arange(b), y] = 1.0 / b
    np.testing.assert_allclose(g, expected, rtol=1e-12)
    # larger is better: raising the true logits raises kr, and hkr subtracts it
    z_up = z.copy()
    z_up[np.arange(b), y] += 1.0
    assert losses.kr(z_up, y) > losses.kr(z, y)
    np.testing.assert_allclose(
        float(losses.hkr(z, y, alpha=0.0)), -float(losses.kr(z, y)), rtol=1e-6
    )


def test_offset_zero_unit_temperature_is_cross_entropy():
    z, y = sample(4, batch=9, k=6)
    with jax.enable_x64(True):
        a = float(losses.offset_cross_entropy(jnp.asarray(z), jnp.asarray(y)))
        b = float(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y)))
    np.testing.assert_allclose(a, b, rtol=1e-14)
    assert b == pytest.approx(np_ce(z, y), rel=1e-12)


def test_offset_ce_tends_to_hinge_at_high_temperature():
    # CE(τ(z − o·e_y))/τ = logsumexp_τ(z') − z'_y → max_j z'_j − z'_y = max(0, o − m_y(z))
    z, y = sample(5, batch=8, k=4)
    with jax.enable_x64(True):
        z64, y64 = jnp.asarray(z), jnp.asarray(y)
        hinge = float(losses.multiclass_hinge(z64, y64, margin=0.8))
        errors = [
            abs(float(losses.offset_cross_entropy(z64, y64, offset=0.8, temperature=t)) - hinge)
            for t in (1.0, 10.0, 1000.0)
        ]
    assert errors[0] > errors[1] > errors[2]
    # the gap is at most log(k)/τ per example
    assert errors[2] <= np.log(4) / 1000.0 + 1e-12


def test_hinge_zero_iff_every_margin_reaches_margin():
    rng = np.random.default_rng(6)
    margin = 1.0
    for _ in range(20):
        z, y = sample(int(rng.integers(1 << 30)), batch=5, k=4)
        # spread margins around the threshold, with some exactly at it
        want = rng.choice([-0.5, 0.999, 1.0, 1.5, 3.0], size=len(y))
        m = np_margins(z, y)
        z[np.arange(len(y)), y] += want - m
        with jax.enable_x64(True):
            h = float(losses.multiclass_hinge(jnp.asarray(z), jnp.asarray(y), margin=margin))
        reached = bool(np.all(np_margins(z, y) >= margin - 1e-12))
        assert (h == 0.0) == reached, (h, np_margins(z, y))
        assert h == pytest.approx(np_hinge(z, y, margin), abs=1e-12)


# ----------------------------------------------------------------------------- gradients


def test_hkr_gradient_matches_central_differences():
    z, y = sample(7, batch=6, k=5)
    with jax.enable_x64(True):
        y64 = jnp.asarray(y)

        def f(zz):
            return losses.hkr(zz, y64, alpha=3.0, margin=2.0)

        g = np.asarray(jax.grad(f)(jnp.asarray(z)))
        eps = 1e-6
        fd = np.zeros_like(z)
        for idx in np.ndindex(*z.shape):
            zp, zm = z.copy(), z.copy()
            zp[idx] += eps
            zm[idx] -= eps
            fd[idx] = (float(f(jnp.asarray(zp))) - float(f(jnp.asarray(zm)))) / (2 * eps)
    # both the hinge (some margins below 2) and kr must contribute
    assert 0 < np.mean(np_margins(z, y) < 2.0) < 1
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_gradient_is_finite_and_mean_scaled(name):
    # duplicating the batch leaves a mean unchanged and halves every per-logit gradient
    z, y = sample(8, batch=4, k=3)
    loss = losses.get_loss(name)
    g1 = np.asarray(jax.grad(loss)(jnp.asarray(z, jnp.float32), jnp.asarray(y)))
    zz, yy = np.concatenate([z, z]), np.concatenate([y, y])
    g2 = np.asarray(jax.grad(loss)(jnp.asarray(zz, jnp.float32), jnp.asarray(yy)))
    assert np.all(np.isfinite(g1))
    np.testing.assert_allclose(g2[:4], g1 / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(loss(zz, yy)), float(loss(z, y)), rtol=1e-5)


# ----------------------------------------------------------------------------- transformations


@pytest.mark.parametrize("name,params,ref", CASES)
def test_jit_and_vmap(name, params, ref):
    z = np.stack([sample(s, batch=6, k=4)[0] for s in range(3)]).astype(np.float32)
    y = np.stack([sample(s, batch=6, k=4)[1] for s in range(3)]).astype(np.int32)
    loss = losses.get_loss(name, **params)
    jitted = jax.jit(loss)
    batched = jax.vmap(loss)(jnp.asarray(z), jnp.asarray(y))
    for i in range(3):
        r = ref(z[i].astype(np.float64), y[i])
        np.testing.assert_allclose(float(jitted(z[i], y[i])), r, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(float(batched[i]), r, rtol=2e-5, atol=2e-5)


def test_params_may_be_traced():
    z, y = sample(9, batch=5, k=3)
    f = jax.jit(lambda zz, t, o: losses.offset_cross_entropy(zz, y, offset=o, temperature=t))
    with jax.enable_x64(True):
        got = float(f(jnp.asarray(z), 2.0, 0.3))
    np.testing.assert_allclose(got, np_offset_ce(z, y, 0.3, 2.0), rtol=1e-6)


# ----------------------------------------------------------------------------- bad input

Z = np.zeros((3, 4), np.float32)
Y = np.array([0, 1, 3], np.int32)


@pytest.mark.parametrize(
    "logits,labels,exc,match",
    [
        (np.zeros(4, np.float32), Y, ValueError, "logits must have rank 2"),
        (np.zeros((0, 4), np.float32), np.zeros(0, np.int32), ValueError, "logits must hold"),
        (np.zeros((3, 1), np.float32), np.zeros(3, np.int32), ValueError, "at least 2 classes"),
        (np.zeros((3, 4), np.int32), Y, TypeError, "logits must be a real floating"),
        (Z, Y.astype(np.float32), TypeError, "labels must be an integer"),
        (Z, np.array([True, False, True]), TypeError, "labels must be an integer"),
        (Z, Y[:2], ValueError, r"labels must have shape \(batch,\) = \(3,\)"),
        (Z, Y[:, None], ValueError, r"labels must have shape"),
        (Z, np.array([0, 4, 1]), ValueError, r"labels must lie in \[0, 4\)"),
        (Z, np.array([0, -1, 1]), ValueError, r"labels must lie in \[0, 4\)"),
    ],
)
@pytest.mark.parametrize("name", sorted(losses.LOSSES) + ["kr"])
def test_bad_arrays_rejected(name, logits, labels, exc, match):
    fn = losses.kr if name == "kr" else losses.LOSSES[name]
    with pytest.raises(exc, match=match):
        fn(logits, labels)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("offset_ce", {"offset": -0.1}, r"offset must be a finite number ≥ 0, got -0.1"),
        ("offset_ce", {"temperature": 0.0}, r"temperature must be a finite number > 0, got 0.0"),
        ("offset_ce", {"temperature": float("nan")}, r"temperature must be a finite number"),
        ("offset_ce", {"offset": [1.0, 2.0]}, r"offset must be a real scalar"),
        ("hinge", {"margin": -1.0}, r"margin must be a finite number ≥ 0"),
        ("hkr", {"alpha": -1.0}, r"alpha must be a finite number ≥ 0"),
        ("hkr", {"margin": float("inf")}, r"margin must be a finite number ≥ 0"),
        ("hinge", {"offset": 1.0}, r"loss 'hinge' takes the parameters \['margin'\].*'offset'"),
        ("ce", {"margin": 1.0}, r"loss 'ce' takes the parameters \[\].*'margin'"),
        ("svm", {}, r"name must be one of \['ce', 'hinge', 'hkr', 'offset_ce'\], got 'svm'"),
    ],
)
def test_bad_params_rejected(name, params, match):
    with pytest.raises(ValueError, match=match):
        losses.get_loss(name, **params)


def test_get_loss_binds_params():
    z, y = sample(10)
    bound = losses.get_loss("hkr", alpha=2.0, margin=0.5)
    assert float(bound(z, y)) == float(losses.hkr(z, y, alpha=2.0, margin=0.5))
    assert float(bound(z, y)) != float(losses.hkr(z, y))
    assert set(losses.LOSSES) == {"ce", "offset_ce", "hinge", "hkr"}
