"""Fuzz exact_lipschitz: rescaled-equivalent networks and an independent float64 truth.

Networks are small (so each property is cheap) and drawn from three families whose truth is
computed independently of liplax:

- one hidden layer with W1 of full column rank: every pattern is a region, truth = max over
  all 2^n patterns of the Jacobian norm (NumPy);
- two inputs, any depth: every region is an angular sector of the plane; the sweep splits the
  circle at each unit's zero crossings, layer by layer, and takes each sector's Jacobian;
- one input: the regions are the two half-lines x > 0 and x < 0.

Perturbations: dead units (zero columns), duplicated units (a copy times a power of two, which
is the same hyperplane exactly), entries spread over up to 16 orders of magnitude, and for the
invariance property global and per-unit positive rescalings over up to ±20 orders.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st

from liplax.verify import exact_lipschitz

ORD = {2: 2, "inf": 1, 1: np.inf}  # numpy matrix-norm order of J for the map x ↦ x @ J
FAMILIES = {
    "full-rank": [[3, 3, 2], [4, 3, 1], [3, 2, 3], [2, 2, 2]],
    "plane": [[2, 3, 1], [2, 2, 2, 1], [2, 3, 2, 2], [2, 4, 1], [2, 2, 3]],
    "line": [[1, 2, 2], [1, 3, 2, 1]],
}


def _act(z, activation):
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "abs":
        return np.abs(z)
    return np.concatenate([np.maximum(z, 0.0), np.maximum(-z, 0.0)], axis=-1)


def _through(w_next, d, activation):
    """The next weight seen through σ' on pattern d (0/1 per unit)."""
    n = d.size
    if activation == "relu":
        return d[:, None] * w_next
    if activation == "abs":
        return (2 * d - 1)[:, None] * w_next
    return d[:, None] * w_next[:n] - (1 - d)[:, None] * w_next[n:]


def _jacobian_at(ws, x, activation, exact=False):
    """J at x; the signs of the pre-activations in float64, or with ``exact`` in rational
    arithmetic (a point where no pre-activation vanishes)."""
    jac = ws[0]
    h = [Fraction(float(v)) for v in x] if exact else x
    for w, w_next in zip(ws[:-1], ws[1:], strict=True):
        if exact:
            z = [sum((hi * Fraction(float(wij)) for hi, wij in zip(h, col, strict=True)),
                     Fraction(0)) for col in w.T]
            d = np.array([float(v > 0) for v in z])
            relu = [max(v, Fraction(0)) for v in z]
            h = {"relu": relu, "abs": [abs(v) for v in z],
                 "crelu": relu + [max(-v, Fraction(0)) for v in z]}[activation]
        else:
            z = h @ w
            h = _act(z, activation)
            d = (z > 0).astype(np.float64)
        jac = jac @ _through(w_next, d, activation)
    return jac


def _truth_full_rank(ws, p, activation):
    n = ws[0].shape[1]
    best = 0.0  # (dead units aside, W1 has full column rank: every pattern is a region)
    for bits in range(1 << n):
        d = ((bits >> np.arange(n)) & 1).astype(np.float64)
        best = max(best, np.linalg.norm(ws[0] @ _through(ws[1], d, activation), ORD[p]))
    return best


def _truth_plane(ws, p, activation):
    """Angular sweep: split the plane at every zero crossing, layer by layer, and take each
    sector's Jacobian at its bisector with the signs decided exactly (a crossing computed from
    two roundings of one line can leave a one-ulp sector: its bisector still lies in a region)."""
    axes = [np.array(v) for v in ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))]
    sectors = [(k * math.pi / 2, (k + 1) * math.pi / 2, axes[k], axes[(k + 1) % 4], ws[0])
               for k in range(4)]  # (angles, boundary directions, c): z = x @ c
    for w_next in ws[1:]:
        out = []
        for a, b, va, vb, c in sectors:
            cuts = [(a, va), (b, vb)]
            for k in range(c.shape[1]):
                for v in (np.array([c[1, k], -c[0, k]]), np.array([-c[1, k], c[0, k]])):
                    t = math.atan2(v[1], v[0]) % (2 * math.pi)
                    if np.any(v != 0) and a < t < b:
                        cuts.append((t, v / np.linalg.norm(v)))
            cuts.sort(key=lambda cut: cut[0])
            for (lo, vlo), (hi, vhi) in zip(cuts[:-1], cuts[1:], strict=True):
                if hi > lo:
                    mid = vlo + vhi
                    d = (mid @ c > 0).astype(np.float64)
                    out.append((lo, hi, vlo, vhi, c @ _through(w_next, d, activation)))
        sectors = out
    return max(np.linalg.norm(_jacobian_at(ws, va + vb, activation, exact=True), ORD[p])
               for _, _, va, vb, _ in sectors)


def _truth_line(ws, p, activation):
    return max(np.linalg.norm(_jacobian_at(ws, np.array([s]), activation), ORD[p])
               for s in (1.0, -1.0))


TRUTH = {"full-rank": _truth_full_rank, "plane": _truth_plane, "line": _truth_line}


@st.composite
def networks(draw, exact_duplicates=True):
    family = draw(st.sampled_from(sorted(FAMILIES)))
    dims = draw(st.sampled_from(FAMILIES[family]))
    activation = draw(st.sampled_from(["relu", "abs", "crelu"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([0.0, 0.0, 4.0, 8.0]))
    ws = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        rows = a * (2 if activation == "crelu" and i > 0 else 1)
        w = rng.normal(size=(rows, b)) * 10.0 ** rng.uniform(-spread, spread, size=(rows, b))
        ws.append(w)
    hidden = len(ws) - 1
    if family != "full-rank" and draw(st.booleans()):  # a duplicate unit in some layer
        layer = draw(st.integers(0, hidden - 1))
        n = ws[layer].shape[1]
        src, dst = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        factor = 2.0 ** draw(st.integers(-30, 30)) if exact_duplicates else 10.0 ** rng.uniform(
            -10, 10)
        if src != dst:
            ws[layer][:, dst] = ws[layer][:, src] * factor
    if draw(st.booleans()):  # a dead unit
        layer = draw(st.integers(0, hidden - 1))
        ws[layer][:, draw(st.integers(0, ws[layer].shape[1] - 1))] = 0.0
    live = ws[0][:, np.any(ws[0] != 0, axis=0)]  # a dead unit changes no pattern's Jacobian
    if family == "full-rank" and np.linalg.matrix_rank(live) < live.shape[1]:
        family = "plane" if dims[0] == 2 else "skip"
    return family, ws, activation


def _rescale(ws, activation, rng, span):
    """Same function: hidden unit k of layer l times s > 0, its outgoing rows divided by s."""
    out = [w.copy() for w in ws]
    c = 10.0 ** rng.uniform(-span, span)
    out[0], out[1] = out[0] * c, out[1] / c
    for layer in range(len(ws) - 1):
        s = 10.0 ** rng.uniform(-span, span, size=out[layer].shape[1])
        out[layer] = out[layer] * s
        out[layer + 1] = out[layer + 1] / np.tile(s, 2 if activation == "crelu" else 1)[:, None]
    return out


@given(networks(exact_duplicates=False), st.sampled_from([2, "inf", 1]),
       st.sampled_from([1.0, 10.0, 20.0]), st.integers(0, 2**32 - 1))
def test_rescaled_networks_have_the_same_constant(net, p, span, seed):
    family, ws, activation = net
    scaled = _rescale(ws, activation, np.random.default_rng(seed), span)
    a = exact_lipschitz(ws, p=p, activation=activation)
    b = exact_lipschitz(scaled, p=p, activation=activation)
    event(f"kinds {a.bound.kind}/{b.bound.kind}")
    if a.bound.kind == b.bound.kind == "exact":
        np.testing.assert_allclose(float(b), float(a), rtol=1e-9)
    else:  # an undecided sliver: the upper bound is never below the exact constant
        for u, e in ((a, b), (b, a)):
            if u.bound.kind == "upper" and e.bound.kind == "exact":
                assert float(u) >= float(e) * (1 - 1e-9)


@given(networks(), st.sampled_from([2, "inf", 1]), st.integers(0, 2**32 - 1))
def test_exact_matches_an_independent_truth(net, p, seed):
    family, ws, activation = net
    res = exact_lipschitz(ws, p=p, activation=activation)
    value = float(res)
    event(f"{family} {res.details['method']} {res.bound.kind}")
    # never below a Jacobian attained at random points (float64 brute force)
    xs = np.random.default_rng(seed).normal(size=(16, ws[0].shape[0]))
    attained = max(np.linalg.norm(_jacobian_at(ws, x, activation), ORD[p]) for x in xs)
    assert value >= attained * (1 - 1e-12)
    if family == "skip":
        return
    truth = TRUTH[family](ws, p, activation)
    if res.bound.kind == "exact":
        assert value >= truth * (1 - 1e-9)
        point = res.details["point"]
        if point is None:  # no float64 point of the region was found: value vs truth only
            event("exact without a float64 witness point")
            np.testing.assert_allclose(value, truth, rtol=1e-9)
            return
        # attained: the Jacobian at the witness point, its signs decided in rational arithmetic
        at_witness = np.linalg.norm(_jacobian_at(ws, point, activation, True), ORD[p])
        np.testing.assert_allclose(value, at_witness, rtol=1e-9)
        if value > truth * (1 + 1e-9):
            event("a region thinner than the reference's sweep resolves (witness checked)")
    else:
        assert res.bound.kind == "upper" and value >= truth * (1 - 1e-12)
