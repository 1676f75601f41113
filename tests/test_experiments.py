"""Experiments 2-5 in their quick configuration: the files they write and the findings they report.

Each experiment runs once (module fixture) into a temporary folder; the tests check the
mathematics of what it recorded, against independent recomputations where one is cheap (NumPy
float64 operators from ``tests/reference.py``, sorted-sample W1 in 1-D, the networks rebuilt
from their seeds).
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from experiments import conv_bounds, groupsort_abs, verifier_comparison, wasserstein
from tests import reference


def _run(module, tmp_path_factory):
    out = tmp_path_factory.mktemp(module.NAME)
    data = module.run(out, quick=True, seed=0)
    folder = out / module.NAME
    for ext in ("json", "png", "md"):
        path = folder / f"{module.NAME}.{ext}"
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"
    assert json.loads((folder / f"{module.NAME}.json").read_text()) == data
    assert (folder / f"{module.NAME}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / f"{module.NAME}.md").read_text().count("\n|") >= 3
    return data


# ----------------------------------------------------------------------------- groupsort_abs


@pytest.fixture(scope="module")
def abs_fit(tmp_path_factory):
    return _run(groupsort_abs, tmp_path_factory)


@pytest.mark.slow  # the quick run takes ~16 s; `make test-slow`
def test_groupsort_fits_abs_and_relu_cannot(abs_fit):
    nets = abs_fit["networks"]
    gs = nets["maxmin_bjorck"]
    assert gs["max_error"] < 0.05
    assert abs(gs["slope_near_plus_1"] - 1.0) < 0.05
    assert abs(gs["slope_near_minus_1"] + 1.0) < 0.05
    relus = [label for label in nets if label.startswith("relu")]
    assert "relu_bjorck" in relus
    for label in relus:
        relu = nets[label]
        # A 1-Lipschitz ReLU net with norm-constrained weights loses gradient norm: it cannot
        # reach slope ±1 on both sides, so it cannot fit |x| (Anil et al. 2019).
        assert relu["max_error"] > 3.0 * gs["max_error"]
        assert relu["rms_error"] > 3.0 * gs["rms_error"]
        assert max(relu["slope_near_plus_1"], -relu["slope_near_minus_1"]) < 0.9
    assert abs_fit["findings"]["maxmin_error_below_relu"]


@pytest.mark.slow  # the quick run takes ~16 s; `make test-slow`
def test_abs_fit_networks_are_certified_one_lipschitz(abs_fit):
    for label, r in abs_fit["networks"].items():
        assert r["bound_kind"] == "upper", label
        assert r["trivial_bound"] <= 1.0 + 1e-4, label
        # Every slope on the grid is attained by the network: never above its certificate.
        assert r["max_abs_slope"] <= r["trivial_bound"] * (1.0 + 1e-5), label


# ----------------------------------------------------------------------------- wasserstein


@pytest.fixture(scope="module")
def w1(tmp_path_factory):
    return _run(wasserstein, tmp_path_factory)


@pytest.mark.parametrize("case", ["point_vs_uniform", "gauss_vs_bimodal", "shift_1d"])
def test_true_w1_matches_sorted_samples(case):
    # In 1-D, W1 between two empirical measures of equal size is the mean |x_(i) − y_(i)| of the
    # sorted samples: an independent check of the closed forms and of the integration.
    xp, xq = wasserstein.sample(case, jax.random.key(7), 400_000)
    empirical = np.mean(np.abs(np.sort(np.asarray(xp)[:, 0]) - np.sort(np.asarray(xq)[:, 0])))
    assert abs(empirical - wasserstein.true_w1(case)) < 0.01 * wasserstein.true_w1(case)


@pytest.mark.slow  # the quick run takes ~16 s; `make test-slow`
def test_groupsort_critic_estimates_w1(w1):
    for case, entry in w1["cases"].items():
        r = entry["critics"]["maxmin_bjorck"]
        assert abs(r["estimate"] - entry["true_w1"]) < 0.05 * entry["true_w1"], case


@pytest.mark.slow  # the quick run takes ~16 s; `make test-slow`
def test_no_critic_exceeds_w1_and_relu_falls_short_at_a_kink(w1):
    for case, entry in w1["cases"].items():
        for critic, r in entry["critics"].items():
            assert r["bound_kind"] == "upper" and r["trivial_bound"] <= 1.0 + 1e-4
            # A certified L-Lipschitz critic gives E_P f − E_Q f ≤ L·W1 (up to sampling error).
            ceiling = r["trivial_bound"] * entry["true_w1"] + 5.0 * r["mc_standard_error"]
            assert r["estimate"] <= ceiling, (case, critic)
    kink = w1["cases"]["point_vs_uniform"]
    assert kink["critics"]["relu_bjorck"]["estimate"] < 0.8 * kink["true_w1"]


# ----------------------------------------------------------------------------- verifiers


@pytest.fixture(scope="module")
def verifiers(tmp_path_factory):
    return _run(verifier_comparison, tmp_path_factory)


def _entries(data):
    for sweep in ("width", "sparsity"):
        for i, e in enumerate(data[sweep]):
            yield sweep, i, e


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_verifier_chain_lower_exact_verifier_trivial(verifiers):
    slack = 1e-5  # the lower bound runs in float32
    for sweep, i, e in _entries(verifiers):
        for norm, verifier in (("l2", "lipsdp"), ("linf", "lipopt"), ("linf", "lipopt_dense")):
            r = e["results"][norm]
            lower, exact = r["lower"]["value"], r["exact"]["value"]
            upper, trivial = r[verifier]["value"], r["trivial"]["value"]
            assert exact is not None and upper is not None, (sweep, i, norm)  # small enough
            assert 0 < lower <= exact * (1 + slack), (sweep, i, norm)
            assert exact <= upper * (1 + 1e-9), (sweep, i, norm, verifier)
            assert upper <= trivial * (1 + 1e-9), (sweep, i, norm, verifier)
            assert r["chain"]["holds"]
    assert verifiers["chain_holds_everywhere"]


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_verifier_records_describe_the_stated_networks(verifiers):
    cfg = verifiers["config"]
    for sweep, i, e in _entries(verifiers):
        offset = 0 if sweep == "width" else 500
        ws = verifier_comparison.random_network(
            cfg["input_dim"], e["width"], e.get("sparsity", 0.0), offset + i
        )
        l2 = np.linalg.norm(ws[0], 2) * np.linalg.norm(ws[1], 2)
        linf = np.abs(ws[0]).sum(axis=0).max() * np.abs(ws[1]).sum(axis=0).max()
        assert math.isclose(e["results"]["l2"]["trivial"]["value"], l2, rel_tol=1e-12)
        assert math.isclose(e["results"]["linf"]["trivial"]["value"], linf, rel_tol=1e-12)
        # The exact ℓ∞ constant is at least the local gain ‖∇f(x)‖₁ at any point.
        x = np.random.default_rng(i).normal(size=(256, cfg["input_dim"]))
        active = (x @ ws[0] > 0).astype(float)
        jac_norms = np.abs((active * ws[1][:, 0]) @ ws[0].T).sum(axis=1)  # ℓ1 of ∇f = ℓ∞ gain
        assert jac_norms.max() <= e["results"]["linf"]["exact"]["value"] * (1 + 1e-9)


# ----------------------------------------------------------------------------- conv bounds


@pytest.fixture(scope="module")
def convs(tmp_path_factory):
    return _run(conv_bounds, tmp_path_factory)


def test_conv_truth_is_the_materialized_operator(convs):
    cfg = convs["config"]["small"]
    kernel = np.asarray(conv_bounds.random_kernel(cfg["kernel"], jax.random.fold_in(
        jax.random.key(0), 0)))
    for e in convs["tightness"]:
        m = reference.conv_operator(kernel, (e["n"], e["n"]), e["stride"], e["padding"])
        truth = reference.spectral_norm_truth(m)
        assert math.isclose(e["truth_float64"], truth, rel_tol=1e-9)


def test_gram_bound_above_truth_and_non_increasing(convs):
    for e in convs["tightness"]:
        truth, gram = e["truth_float64"], e["gram"]
        assert all(g >= truth for g in gram), e["padding"]  # no tolerance below the truth
        # Non-increasing up to the rounding margin the bound carries (it grows with t).
        slack = conv_bounds.GRAM_SLACK
        assert all(b <= a * (1 + slack) for a, b in zip(gram, gram[1:], strict=False))
        assert gram[-1] / truth < 1.01  # 6 steps: within 1% on these small layers
        assert e["zero_padding_bound"] >= truth * (1 - 1e-6)


def test_power_iteration_below_truth_and_converging(convs):
    for e in convs["tightness"]:
        power = np.asarray(e["power_over_truth"])
        assert np.all(power <= 1 + 1e-5)
        assert power[-1] > 0.99 and power[-1] >= power[0]
    for row in convs["timing"]:
        assert row["gram_circular_over_exact"] >= 1 - 1e-6
        assert row["power_circular_over_exact"] <= 1 + 1e-5
        assert row["gram_same_over_power_same"] >= 1 - 1e-5
        assert math.isclose(row["numpy_fft_svd"], row["exact_circular"], rel_tol=1e-4)
