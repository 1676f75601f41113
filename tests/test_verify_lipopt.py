"""LiPopt: degree 2 against an independent McCormick LP; hierarchy, sparsity and ℓ1 relations."""

import numpy as np
import pytest
from scipy.optimize import linprog

from liplax.verify import TooLarge, exact_lipschitz, lipopt
from tests.verify_helpers import random_weights as _net


def mccormick(w1, w2):
    """max_j max Σ_ik W1[i,k] W2[k,j] m_ik, m_ik ∈ McCormick(t_i ∈ [−1,1], s_k ∈ [0,1])."""
    d, n = w1.shape
    best = -np.inf
    for j in range(w2.shape[1]):
        nv = d + n + d * n  # variables t, s, m (m_ik at d + n + i·n + k)
        rows, rhs = [], []
        for i in range(d):
            for k in range(n):
                # (t+1)s ≥ 0, (1−t)s ≥ 0, (t+1)(1−s) ≥ 0, (1−t)(1−s) ≥ 0, with m = t·s
                for ct, cs, cm, b in ((0, -1, -1, 0), (0, -1, 1, 0), (-1, 1, 1, 1), (1, 1, -1, 1)):
                    r = np.zeros(nv)
                    r[i], r[d + k], r[d + n + i * n + k] = ct, cs, cm
                    rows.append(r)
                    rhs.append(float(b))
        c = np.zeros(nv)
        c[d + n :] = -(w1 * w2[:, j]).ravel()
        res = linprog(c, A_ub=np.asarray(rows), b_ub=np.asarray(rhs),
                      bounds=[(-1, 1)] * d + [(0, 1)] * n + [(None, None)] * (d * n),
                      method="highs")
        assert res.status == 0
        best = max(best, -res.fun)
    return best


@pytest.mark.parametrize("dims", [[6, 5, 3], [4, 9, 2]])
def test_degree_two_is_mccormick(dims):
    ws = _net(0, dims)
    res = lipopt(ws, degree=2)
    assert res.bound.kind == "upper"
    np.testing.assert_allclose(float(res), mccormick(*ws), rtol=1e-7)
    np.testing.assert_allclose(float(lipopt(ws, degree=2, sparse=False)), float(res), rtol=1e-7)


def test_hierarchy_tightens_and_sparse_is_never_below_dense():
    ws = _net(1, [7, 7, 1])
    exact = float(exact_lipschitz(ws, p="inf"))
    d2, d3 = float(lipopt(ws, degree=2)), float(lipopt(ws, degree=3))
    d3_dense = float(lipopt(ws, degree=3, sparse=False))
    assert exact <= d3 * (1 + 1e-9) and d3 <= d2 * (1 + 1e-9)
    assert d3_dense <= d3 * (1 + 1e-9)
    assert d3 < d2  # degree 3 is strictly better on this network


def test_certificate_matches_the_lp_value():
    res = lipopt(_net(2, [6, 5, 4, 2]), degree=3)
    for j, value in res.details["per_output"].items():
        lp = res.details["lp_sizes"][j]["lp_value"]
        assert lp - 1e-9 <= value <= lp + 1e-7 * max(1.0, abs(lp))


def test_sparsity_shrinks_the_lp_and_keeps_it_sound():
    ws = _net(1, [8, 6, 6, 2], density=0.5)
    sparse, dense = lipopt(ws, degree=3), lipopt(ws, degree=3, sparse=False)
    j = next(iter(sparse.details["lp_sizes"]))  # the output with the largest path bound
    assert sparse.details["lp_sizes"][j]["rows"] < dense.details["lp_sizes"][j]["rows"] / 2
    exact = float(exact_lipschitz(ws, p="inf"))
    assert exact <= float(dense) * (1 + 1e-9)
    assert float(dense) <= float(sparse) * (1 + 1e-9)  # sparse products are a subset


def test_l1_is_linf_of_the_transposed_network():
    ws = _net(4, [5, 6, 3])
    transposed = [w.T for w in reversed(ws)]
    np.testing.assert_allclose(
        float(lipopt(ws, p=1, degree=2)), float(lipopt(transposed, degree=2)), rtol=1e-12
    )
    assert float(exact_lipschitz(ws, p=1)) <= float(lipopt(ws, p=1, degree=2)) * (1 + 1e-9)


def test_argument_errors_and_size_limit():
    ws = _net(5, [5, 4, 4, 2])
    with pytest.raises(ValueError, match="degree must be an int ≥ 3"):
        lipopt(ws, degree=2)
    with pytest.raises(ValueError, match="lipsdp"):
        lipopt(ws, degree=3, p=2)
    with pytest.raises(TooLarge, match="max_rows=100"):
        lipopt(ws, degree=3, max_rows=100)
