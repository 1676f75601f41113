"""Products of per-layer constants and certified radii round in the safe direction.

A bound must never fall below the truth through underflow (0.1^51 flushed to 0 certified every
radius), through the rounding of the factors (ℓ1/ℓ∞ abs-sums, the product itself) or of the
radius margin·s/(c·L). References are exact rationals (``fractions.Fraction``) or float64.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import bounds, certify, verify
from liplax.guarantee import (
    EXACT_ULPS,
    Bound,
    compose,
    exact_margin,
    gamma,
    unit_roundoff,
)
from liplax.sweep import model_sweep
from tests._helpers import rotate
from tests.nn_helpers import rngs

F32 = np.float32
TINY32 = float(np.finfo(F32).tiny)
MAX32 = float(np.finfo(F32).max)
PS = (1, 2, math.inf)


def dense_chain(scales, n: int = 2, bias_at: int | None = 0) -> ln.Sequential:
    """Dense layers x ↦ x·(s_l·I) (a bias on layer ``bias_at``): constant Π s_l exactly."""
    layers = []
    for i, s in enumerate(scales):
        d = ln.Dense(n, n, use_bias=i == bias_at, rngs=rngs(i))
        d.kernel[...] = jnp.asarray(F32(s) * np.eye(n, dtype=F32))
        if i == bias_at:
            d.bias[...] = jnp.asarray(np.arange(n, 0, -1, dtype=F32))
        layers.append(d)
    return ln.Sequential(*layers)


def exact_product(scales) -> Fraction:
    return math.prod((Fraction(float(F32(s))) for s in scales), start=Fraction(1))


def at_least(value, truth: Fraction) -> bool:
    v = float(value)
    return math.isfinite(v) and Fraction(v) >= truth


CHAINS = [[0.1] * 51, [1e-20] * 3, [1e-30, 1e30] * 4 + [0.5], [1e-25, 1e-25, 1e30, 1e30, 1e-9]]


# ---------------------------------------------------------------- class 2: underflow to zero


# 0.1^51 (the reported chain) at p = 2; the same underflow (1e-13^4 = 1e-52) at every p, in a
# chain that compiles in seconds rather than the 51-layer chain's ~40 s per p.
# By default each chain once (p cycling); every (chain, p) under -m slow.
CHAIN_CASES = [pytest.param(CHAINS[0], 2, marks=pytest.mark.slow)] + rotate(
    [([1e-13] * 4,), *((c,) for c in CHAINS[1:])], PS, xid=lambda c: f"{c[0][0]:g}x{len(c[0])}")


@pytest.mark.parametrize(("scales", "p"), CHAIN_CASES)
def test_deep_chain_bound_never_below_the_product(scales, p):
    model, truth = dense_chain(scales), exact_product(scales)
    b = bounds.trivial_bound(model, (2,), p=p)
    assert b.kind == "upper" and float(b.value) > 0.0
    assert at_least(b.value, truth), (float(b.value), float(truth))
    log_b = bounds.log_trivial_bound(model, (2,), p=p)
    assert float(log_b.value) >= math.log(truth.numerator) - math.log(truth.denominator)
    swept = model_sweep([model, model], (2,), p=p)["trivial"]
    assert all(at_least(v, truth) for v in np.asarray(swept.value))


@pytest.mark.parametrize("scales", [
    pytest.param([0.1] * 51, marks=pytest.mark.slow, id="0.1^51"),  # the reported chain, ~30 s
    pytest.param([1e-13] * 4, id="1e-13^4"),  # the same underflow (1e-52) in seconds
])
def test_deep_chain_certificate_is_finite_and_no_larger_than_the_truth(scales):
    model = dense_chain(scales, bias_at=len(scales) - 1)  # bias last: logits (2, 1), margin 1
    x = jnp.zeros((1, 2))
    logits = model(x)
    b = bounds.trivial_bound(model, (2,))
    r = float(certify.certified_radius(logits, jnp.array([0]), b)[0])
    true_radius = Fraction(float(logits[0, 0] - logits[0, 1])) / exact_product(scales)
    true_radius /= Fraction(math.sqrt(2)) * (1 + Fraction(1, 10**15))  # above √2
    assert 0.0 < r < math.inf and Fraction(r) <= true_radius


def test_zero_layer_makes_a_constant_network_with_bound_zero():
    model = dense_chain([0.5, 0.0, 4.0], bias_at=2)
    for p in PS:
        assert float(bounds.trivial_bound(model, (2,), p=p).value) == 0.0
    logits = model(jnp.array([[3.0, -7.0]]))
    r = certify.certified_radius(logits, jnp.array([0]), bounds.trivial_bound(model, (2,)))
    assert float(r[0]) == math.inf  # constant: no perturbation changes the class


def test_subnormal_weights_never_give_a_zero_bound():
    """XLA on CPU flushes subnormals: 1e-40 weights had an ℓp norm of 0, certifying anything."""
    w = np.zeros((3, 3), F32)
    w[0, 1] = F32(1e-40)  # subnormal in float32
    d = ln.Dense(3, 3, rngs=rngs())
    d.kernel[...] = jnp.asarray(w)
    model = ln.Sequential(d, ln.Dense(3, 3, rngs=rngs(1)))
    for p in PS:
        one = bounds.trivial_bound(d, (3,), p=p)
        assert at_least(one.value, Fraction(float(w[0, 1]))) and float(one.value) > 0
        assert float(bounds.trivial_bound(model, (3,), p=p).value) > 0


def test_compose_range_limits():
    up = [Bound(jnp.float32(v), "upper") for v in (1e30, 1e30, 1e30)]
    assert float(compose(up).value) == math.inf
    assert float(compose([*up, Bound(jnp.float32(0.0), "upper")]).value) == 0.0
    inf_zero = [Bound(jnp.float32(math.inf), "upper"), Bound(jnp.float32(0.0), "upper")]
    assert math.isnan(float(compose(inf_zero).value))  # refused by certification
    tiny = compose([Bound(jnp.float32(1e-30), "exact")] * 3)
    assert float(tiny.value) == TINY32  # 1e-90 is raised to the smallest normal, not 0
    sub = compose([Bound(jnp.float32(1e-40), "upper"), Bound(jnp.float32(2.0), "upper")])
    assert at_least(sub.value, Fraction(float(F32(1e-40))) * 2)


# ---------------------------------------------------------------- the certified radius


def _true_radius_sq(m: float, L: float, s: float, c_sq: Fraction) -> Fraction:
    return (Fraction(float(m)) * Fraction(float(s))) ** 2 / (c_sq * Fraction(float(L)) ** 2)


@pytest.mark.parametrize("p,head,c_sq", [(2, "global", Fraction(2)), (1, "global", Fraction(1)),
                                         (math.inf, "global", Fraction(4)),
                                         (2, "per_logit", Fraction(4))])
def test_radius_is_never_above_margin_over_cL(p, head, c_sq):
    rng = np.random.default_rng(7)
    n = 4000
    logits = np.zeros((n, 2), F32)
    logits[:, 0] = rng.uniform(0.5, 2.0, n).astype(F32)
    margin = logits[:, 0] - logits[:, 1]
    Ls = (10.0 ** rng.uniform(-3, 3, n)).astype(F32)
    s = F32(rng.uniform(0.1, 3.0))
    got = np.asarray(certify.certified_radius(jnp.asarray(logits), jnp.zeros(n, jnp.int32),
                                              jnp.asarray(Ls), p=p, head=head, input_scale=s))
    above = [i for i in range(n)
             if Fraction(float(got[i])) ** 2 > _true_radius_sq(margin[i], Ls[i], s, c_sq)]
    assert not above, f"{len(above)} radii above margin·s/(c·L), e.g. index {above[:3]}"
    assert np.all(got > 0)


@pytest.mark.parametrize("L,m,lo,hi", [
    (1e-40, 1.0, 5e37, MAX32),  # subnormal L: was flushed to 0 in c·L and gave inf
    (1e-38, 100.0, MAX32, MAX32),  # margin/(c·L) past float32's range: its largest number
    (3e38, 1e-30, 0.0, 0.0),  # below the smallest normal: 0 (never a rounded-up subnormal)
    (0.0, 1.0, math.inf, math.inf),  # a constant network
])
def test_radius_range_limits(L, m, lo, hi):
    logits = jnp.asarray([[F32(m), F32(0.0)]])
    r = float(certify.certified_radius(logits, jnp.array([0]), jnp.float32(L))[0])
    assert lo <= r <= hi


def test_exact_bound_counts_its_rounding_margin():
    """An ``exact`` value may be EXACT_ULPS·u below the truth: the radius must allow for it."""
    v = F32(1.5)
    logits = jnp.asarray([[F32(1.0), F32(0.0)]])
    r = float(certify.certified_radius(logits, jnp.array([0]), Bound(jnp.float32(v), "exact"))[0])
    worst_l = Fraction(float(v)) / (1 - Fraction(exact_margin(F32)))
    assert Fraction(r) ** 2 <= 1 / (2 * worst_l**2)
    acc = certify.certified_accuracy(logits, jnp.array([0]), Bound(jnp.float32(v), "exact"),
                                     jnp.asarray([0.0, r, float(np.nextafter(F32(r), F32(0)))]))
    assert np.asarray(acc).tolist() == [1.0, 0.0, 1.0]  # ε < r̂ certified, ε = r̂ not


def test_accuracy_agrees_with_radius_at_extreme_scales():
    logits = jnp.asarray([[1.0, 0.0], [1e-30, 0.0], [5.0, 1.0]], jnp.float32)
    labels = jnp.array([0, 0, 0])
    for L in (1e-40, 1e-20, 1.0, 1e30):
        r = np.asarray(certify.certified_radius(logits, labels, jnp.float32(L)))
        eps = jnp.asarray(sorted({0.0, *[float(x) for x in r]}), jnp.float32)
        acc = np.asarray(certify.certified_accuracy(logits, labels, jnp.float32(L), eps))
        want = [np.mean((e == 0) | (e < r)) for e in np.asarray(eps)]
        np.testing.assert_allclose(acc, want)


def test_linear_model_cannot_be_flipped_within_its_radius():
    """f(x) = x W + b: the least ℓp change flipping y to j is (f_y − f_j)/‖W[:, y] − W[:, j]‖_q
    (q the dual exponent), computed in float64; every certified radius must be below it."""
    rng = np.random.default_rng(3)
    for scale in (1e-25, 1e-3, 1.0, 1e20):
        w = (rng.normal(size=(5, 3)) * scale).astype(F32)
        b = rng.normal(size=3).astype(F32)
        x = rng.normal(size=(64, 5)).astype(F32)
        d = ln.Dense(5, 3, use_bias=True, rngs=rngs())
        d.kernel[...], d.bias[...] = jnp.asarray(w), jnp.asarray(b)
        logits = d(jnp.asarray(x))
        labels = jnp.argmax(logits, axis=-1)
        exact = np.asarray(x, np.float64) @ w.astype(np.float64) + b
        for p, q in ((2, 2), (1, math.inf), (math.inf, 1)):
            L = bounds.trivial_bound(d, (5,), p=p)
            r = np.asarray(certify.certified_radius(logits, labels, L, p=p))
            for i in range(x.shape[0]):
                y = int(labels[i])
                flip = min((exact[i, y] - exact[i, j]) / np.linalg.norm(
                    w[:, y].astype(np.float64) - w[:, j], q) for j in range(3) if j != y)
                assert r[i] <= flip * (1 + 1e-5), (scale, p, i, r[i], flip)


# ---------------------------------------------------------------- class 6: ℓ1/ℓ∞ products


def _aligned_chain(rng, p, depth, width):
    """Rank-1 nonnegative chains whose trivial bound is the constant of the product (float64):
    ℓ∞ (max column abs-sum of x ↦ xW): W_l = a_l 1ᵀ; ℓ1 (max row abs-sum): W_l = 1 b_lᵀ."""
    ws = []
    for _ in range(depth):
        v = rng.integers(1, 2**20, width) / 3.0 ** rng.integers(1, 30)
        ones = np.ones(width)
        ws.append(np.outer(v, ones) if p == math.inf else np.outer(ones, v))
    return ws


def _exact_induced(ws, p) -> Fraction:
    prod = [[Fraction(float(e)) for e in row] for row in ws[0]]
    for w in ws[1:]:
        wf = [[Fraction(float(e)) for e in row] for row in w]
        prod = [[sum(r[k] * wf[k][j] for k in range(len(wf))) for j in range(len(wf[0]))]
                for r in prod]
    if p == math.inf:
        return max(sum(abs(prod[i][j]) for i in range(len(prod))) for j in range(len(prod[0])))
    return max(sum(abs(e) for e in row) for row in prod)


@pytest.mark.parametrize("p", [1, math.inf])
def test_verify_trivial_bound_l1_linf_never_below_exact_product(p):
    rng = np.random.default_rng(11)
    below = 0
    for _ in range(60):
        ws = _aligned_chain(rng, p, depth=int(rng.integers(1, 5)), width=3)
        truth = _exact_induced(ws, p)
        below += Fraction(float(verify.trivial_bound(ws, p=p).value)) < truth
    assert below == 0


@pytest.mark.parametrize("p", PS)
def test_verify_trivial_bound_deep_tiny_and_huge_chains(p):
    for scales in ([0.1] * 400, [1e-200, 1e-200, 1e300], [1e200, 1e200, 1e-300]):
        ws = [s * np.eye(2) for s in scales]
        truth = math.prod((Fraction(s) for s in scales), start=Fraction(1))
        got = float(verify.trivial_bound(ws, p=p).value)
        assert got > 0 and Fraction(got) >= truth, (scales[:3], got)
        assert got <= max(float(truth), np.finfo(np.float64).tiny) * (1 + 1e-12)


def test_exact_sum_covers_a_long_sequential_sum():
    """A sequential float32 sum of n terms can lose γ_{n−1} (here 2^24 + 1 + 1 + … stays 2^24),
    far past EXACT_ULPS·u; exact_sum rounds it up so the exact contract holds again."""
    from liplax.guarantee import exact_sum  # (new in the fix)

    n = 4096
    terms = np.ones(n, F32)
    terms[0] = F32(2.0**24)
    seq = F32(0.0)
    for t in terms:
        seq = F32(seq + t)
    truth = Fraction(2**24 + n - 1)
    floor = truth * (1 - Fraction(EXACT_ULPS) * Fraction(unit_roundoff(F32)))
    assert Fraction(float(seq)) < floor  # the bare sum breaks the exact contract
    assert Fraction(float(seq)) >= truth * (1 - Fraction(gamma(n - 1, F32)))
    assert Fraction(float(exact_sum(jnp.float32(seq), n))) >= truth
    assert float(exact_sum(jnp.float32(3.0), 64)) == 3.0  # short sums are left as they are


# ---------------------------------------------------------------- the penalty


@pytest.mark.parametrize("scales", [pytest.param([1e-20] * 3, marks=pytest.mark.slow),
                                    pytest.param([1e-13] * 4, marks=pytest.mark.slow),
                                    [1e-30, 1e30] * 2])
def test_penalty_gradient_is_finite_for_tiny_bounds(scales):
    model = dense_chain(scales)
    for p in PS:
        for kind, kw in (("log", {}), ("product", {}), ("hinge", {"target": 1.0})):
            for fast in (False, True):
                val, grad = nnx.value_and_grad(
                    lambda m, p=p, kind=kind, kw=kw, fast=fast: bounds.trivial_bound_penalty(
                        m, (2,), p=p, kind=kind, fast=fast, **kw))(model)
                leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grad)]
                assert np.isfinite(float(val)) and all(np.all(np.isfinite(g)) for g in leaves)
