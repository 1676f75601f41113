"""exact_lipschitz against an independent brute force over activation patterns."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from liplax.verify import TooLarge, crelu_to_relu, exact_lipschitz
from tests.verify_helpers import random_weights

ORD = {2: 2, "inf": 1, 1: np.inf}  # numpy matrix-norm order of J for the map x ↦ x @ J


def _jacobian(ws, patterns, activation):
    """J of x ↦ σ(… σ(x@W1) …)@W_L on the region with the given 0/1 patterns."""
    jac = ws[0]
    for d, w in zip(patterns, ws[1:], strict=True):
        n = d.size
        if activation == "relu":
            jac = jac @ (d[:, None] * w)
        elif activation == "abs":
            jac = jac @ ((2 * d - 1)[:, None] * w)
        else:  # crelu: d/dz relu(z) = [z>0], d/dz relu(−z) = −[z<0]
            jac = jac @ (d[:, None] * w[:n] - (1 - d)[:, None] * w[n:])
    return jac


def _region_exists(ws, patterns, activation):
    """max t s.t. every non-vanishing pre-activation has its sign with margin t, ‖x‖∞ ≤ 1."""
    d_in = ws[0].shape[0]
    rows, coef = [], ws[0]
    for d, w in zip(patterns, ws[1:], strict=True):
        for k in range(d.size):
            if np.linalg.norm(coef[:, k]) > 1e-12:
                rows.append((1.0 if d[k] else -1.0) * coef[:, k])
        coef = _jacobian([coef, w], [d], activation)
    a = np.asarray(rows)
    res = linprog(
        np.r_[np.zeros(d_in), -1.0],
        A_ub=np.c_[-a, np.ones(len(a))],
        b_ub=np.zeros(len(a)),
        bounds=[(-1, 1)] * d_in + [(None, 1)],
        method="highs",
    )
    return res.status == 0 and -res.fun > 1e-9


def brute_force(ws, p, activation="relu", check_regions=True):
    widths = [w.shape[1] for w in ws[:-1]]
    best = 0.0
    for combo in itertools.product(*(itertools.product([0.0, 1.0], repeat=n) for n in widths)):
        patterns = [np.asarray(c) for c in combo]
        if check_regions and not _region_exists(ws, patterns, activation):
            continue
        best = max(best, np.linalg.norm(_jacobian(ws, patterns, activation), ORD[p]))
    return best


def _net(seed, dims, activation="relu"):
    return random_weights(seed, dims, crelu=activation == "crelu")


@pytest.mark.parametrize("dims", [[7, 6, 3], [5, 3, 6]], ids=["narrow-out", "wide-out"])
@pytest.mark.parametrize("activation", ["relu", "abs", "crelu"])
@pytest.mark.parametrize("p", [2, "inf", 1])
def test_one_hidden_layer_matches_brute_force(p, activation, dims):
    ws = _net(1, dims, activation)  # W1 has full row rank: every pattern is a region
    truth = brute_force(ws, p, activation, check_regions=False)
    methods = ["enumerate", "regions"] + (["milp"] if p != 2 else [])
    for method in methods:
        res = exact_lipschitz(ws, p=p, activation=activation, method=method)
        assert res.bound.kind == "exact" and res.details["method"] == method
        np.testing.assert_allclose(float(res), truth, rtol=1e-6, err_msg=method)


@pytest.mark.parametrize(
    "dims", [[3, 6, 2], [6, 5, 4, 2], [4, 4, 5, 1]], ids=["rank-deficient", "3-layer", "3-layer-b"]
)
@pytest.mark.parametrize("p", [2, "inf"])
def test_region_search_matches_brute_force(dims, p):
    ws = _net(2, dims)
    res = exact_lipschitz(ws, p=p)
    assert res.details["method"] == "regions"
    np.testing.assert_allclose(float(res), brute_force(ws, p), rtol=1e-6)


def test_unreachable_patterns_are_not_counted():
    # Second hidden layer fed by non-negative weights from ReLUs: its units are never negative,
    # so patterns with them off (other than the dead all-off first layer) do not exist.
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(4, 3))
    w2 = np.abs(rng.normal(size=(3, 2)))
    w3 = np.array([[1.0], [-1.0]])
    ws = [w1, w2, w3]
    exact = float(exact_lipschitz(ws, p=2))
    assert exact < brute_force(ws, 2, check_regions=False) - 1e-3
    np.testing.assert_allclose(exact, brute_force(ws, 2), rtol=1e-6)


@pytest.mark.parametrize("dims", [[6, 5, 3], [5, 4, 4, 2]])
def test_witness_point_lies_in_the_maximizing_region(dims):
    ws = _net(4, dims)
    res = exact_lipschitz(ws, p=2)
    h = res.details["point"]
    for w, d in zip(ws[:-1], res.details["patterns"], strict=True):
        z = h @ w
        live = np.abs(z) > 1e-9
        np.testing.assert_array_equal((z > 0)[live], d[live].astype(bool))
        h = np.maximum(z, 0.0)
    # the Jacobian there, by central differences of the network (it is linear on the region)
    x, eps = res.details["point"], 1e-6

    def f(v):
        for w in ws[:-1]:
            v = np.maximum(v @ w, 0.0)
        return v @ ws[-1]

    jac = np.stack([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(x.size)])
    np.testing.assert_allclose(np.linalg.norm(jac, 2), float(res), rtol=1e-6)


def test_crelu_equals_its_relu_rewriting():
    ws = _net(5, [6, 4, 2], "crelu")
    for p in (2, "inf"):
        a = float(exact_lipschitz(ws, p=p, activation="crelu"))
        b = exact_lipschitz(crelu_to_relu(ws), p=p)  # [W, −W] is rank-deficient: region search
        assert b.details["method"] == "regions"
        np.testing.assert_allclose(a, float(b), rtol=1e-6)


def test_too_large_says_what_it_needs():
    ws = _net(6, [30, 24, 2])
    with pytest.raises(TooLarge, match="16,777,216.*max_patterns=4,194,304.*lipsdp"):
        exact_lipschitz(ws, p=2)
    with pytest.raises(TooLarge, match="region search"):
        exact_lipschitz(_net(6, [8, 12, 12, 1]), p="inf")


def test_argument_errors():
    ws = _net(7, [5, 4, 2])
    with pytest.raises(ValueError, match="inputs"):
        exact_lipschitz([ws[0], ws[0]])
    with pytest.raises(ValueError, match="at least 2"):
        exact_lipschitz(ws[:1])
    with pytest.raises(ValueError, match="milp"):
        exact_lipschitz(ws, p=2, method="milp")
    with pytest.raises(ValueError, match="full row rank"):
        exact_lipschitz(_net(7, [2, 4, 1]), method="enumerate")
    with pytest.raises(ValueError, match="activation"):
        exact_lipschitz(ws, activation="tanh")


# --- scale invariance (relu(c·z) = c·relu(z), c > 0: rescaled networks are the same function) --


def _rescale_units(ws, scales, activation="relu"):
    """Hidden unit k of layer l scaled by scales[l][k] > 0, its outgoing rows by the inverse."""
    out = [w.copy() for w in ws]
    for layer, s in enumerate(scales):
        out[layer] = out[layer] * s[None, :]
        reps = 2 if activation == "crelu" else 1
        out[layer + 1] = out[layer + 1] / np.tile(s, reps)[:, None]
    return out


@pytest.mark.parametrize("c", [1e-20, 1e-7, 3.0, 1e9, 1e20])
@pytest.mark.parametrize(
    "dims", [[3, 6, 2], [4, 4, 3, 2], [6, 5, 3]], ids=["rank-deficient", "3-layer", "full-rank"]
)
@pytest.mark.parametrize("p", [2, "inf", 1])
def test_global_rescaling_keeps_the_constant(dims, p, c):
    ws = _net(2, dims)
    truth = brute_force(ws, p)
    scaled = [w.copy() for w in ws]
    scaled[0], scaled[1] = ws[0] * c, ws[1] / c
    res = exact_lipschitz(scaled, p=p)
    assert res.bound.kind == "exact"
    np.testing.assert_allclose(float(res), truth, rtol=1e-9)


@pytest.mark.parametrize("activation", ["relu", "abs", "crelu"])
@pytest.mark.parametrize("dims", [[3, 5, 2], [4, 3, 3, 2], [5, 4, 3]])
def test_per_unit_rescaling_over_forty_orders_keeps_the_constant(dims, activation):
    ws = _net(8, dims, activation)
    rng = np.random.default_rng(9)
    scales = [10.0 ** rng.uniform(-20, 20, size=n) for n in dims[1:-1]]
    scaled = _rescale_units(ws, scales, activation)
    for p in (2, "inf"):
        ref = exact_lipschitz(ws, p=p, activation=activation)
        res = exact_lipschitz(scaled, p=p, activation=activation)
        assert res.bound.kind == ref.bound.kind == "exact"
        np.testing.assert_allclose(float(res), float(ref), rtol=1e-9)
        np.testing.assert_allclose(float(ref), brute_force(ws, p, activation), rtol=1e-9)


def test_weights_spanning_seventeen_orders():
    # f(x) = relu(x1) + relu(x2): ℓ2 constant √2, ℓ∞ constant 2 (the example gave 1).
    ws = [np.diag([1.0, 1e-17]), np.array([[1.0], [1e17]])]
    np.testing.assert_allclose(float(exact_lipschitz(ws, p=2)), np.sqrt(2.0), rtol=1e-12)
    np.testing.assert_allclose(float(exact_lipschitz(ws, p="inf")), 2.0, rtol=1e-12)
    np.testing.assert_allclose(float(exact_lipschitz(ws, p=1)), 1.0, rtol=1e-12)


def test_dead_and_duplicate_units():
    ws = _net(10, [4, 3, 2])
    w1 = np.concatenate([ws[0], np.zeros((4, 1)), ws[0][:, :1] * 1e-30], axis=1)
    w2 = np.concatenate([ws[1], 5.0 * np.ones((1, 2)), ws[1][:1] * 1e30], axis=0)
    # unit 4 is dead; unit 5 is unit 0 (exact power-of-ten rescaling aside): it doubles unit 0
    doubled = ws[1].copy()
    doubled[0] *= 2
    for p in (2, "inf"):
        res = exact_lipschitz([w1, w2], p=p)
        truth = brute_force([ws[0], doubled], p)
        assert float(res) >= truth * (1 - 1e-9)
        if res.bound.kind == "exact":
            np.testing.assert_allclose(float(res), truth, rtol=1e-9)
        else:
            assert res.bound.kind == "upper"


def test_a_sliver_region_is_never_dropped():
    # Units x1 + x2 and x1 + (1+u)x2 (u one ulp) are not parallel: the regions where exactly
    # one is on are slivers of relative width ~1e-16, and there f has gradient ±(1, 1(+u)).
    # Elsewhere the gradient is 0 or (0, −u): dropping the slivers gives ~1e-16.
    one_up = np.nextafter(1.0, 2.0)
    ws = [np.array([[1.0, 1.0], [1.0, one_up]]), np.array([[1.0], [-1.0]])]
    for p, truth in ((2, np.hypot(1.0, one_up)), ("inf", 1.0 + one_up), (1, one_up)):
        res = exact_lipschitz(ws, p=p)
        assert res.bound.kind in ("exact", "upper")
        assert float(res) >= truth
        if res.bound.kind == "exact":
            np.testing.assert_allclose(float(res), truth, rtol=1e-14)


def test_float32_weights_are_the_same_network():
    ws32 = [w.astype(np.float32) for w in _net(11, [4, 3, 3, 2])]
    ws64 = [w.astype(np.float64) for w in ws32]
    for p in (2, "inf"):
        a, b = exact_lipschitz(ws32, p=p), exact_lipschitz(ws64, p=p)
        assert float(a) == float(b) and a.bound.kind == b.bound.kind == "exact"
        np.testing.assert_allclose(float(a), brute_force(ws64, p), rtol=1e-9)


def test_negated_and_identical_units_are_decided_exactly():
    # [W, −W] (the CReLU rewriting) and exact copies: the impossible sign combinations are
    # proved empty (Gordan certificates), so the answer stays exact.
    ws = _net(12, [4, 3, 2])
    for w1, w2 in (
        (np.c_[ws[0], -ws[0]], np.r_[ws[1], 0.5 * ws[1]]),
        (np.c_[ws[0], ws[0] * 4.0], np.r_[ws[1], -ws[1]]),
    ):
        for p in (2, "inf", 1):
            res = exact_lipschitz([w1, w2], p=p)
            assert res.bound.kind == "exact" and res.details["uncertain_regions"] == 0
            np.testing.assert_allclose(float(res), brute_force([w1, w2], p), rtol=1e-9)


def test_unit_scales_beyond_float64_are_refused():
    # unit 0 reaches the output with gain 1e-600, unit 1 with 1e300: no float64 holds both
    ws = [np.array([[1e-300, 1.0]]), np.array([[1e-300], [1e300]])]
    with pytest.raises(ValueError, match="weights\\[1\\] spans too many orders"):
        exact_lipschitz(ws)


@pytest.mark.parametrize("activation", ["relu", "abs", "crelu"])
def test_a_layer_of_dead_units_gives_zero(activation):
    ws = _net(13, [3, 2, 2, 1], activation)
    ws[1] = np.zeros_like(ws[1])  # the second hidden layer never sees its input: f ≡ 0
    for p in (2, "inf", 1):
        res = exact_lipschitz(ws, p=p, activation=activation)
        assert res.bound.kind == "exact" and float(res) == 0.0
