"""LipSDP against a direct cvxpy formulation of LipSDP-Neuron on the full input (no reduction)."""

import cvxpy as cp
import numpy as np
import pytest

from liplax.verify import SolverError, lipsdp
from tests.verify_helpers import random_weights as _net


def direct_lipsdp(weights, alpha=0.0, beta=1.0):
    """LipSDP-Neuron written block by block over [x, h_1, …, h_{L−1}], W_1 kept as it is."""
    a = [w.T for w in weights]  # column convention: z_l = A_l h_{l−1}
    sizes = [a[0].shape[1]] + [m.shape[0] for m in a[:-1]]
    nb = len(sizes)
    rho = cp.Variable(nonneg=True)
    lams = [cp.Variable(n, nonneg=True) for n in sizes[1:]]
    blocks = [[np.zeros((sizes[i], sizes[j])) for j in range(nb)] for i in range(nb)]
    blocks[0][0] = blocks[0][0] - rho * np.eye(sizes[0])
    for layer, lam in enumerate(lams, start=1):
        t = cp.diag(lam)
        w = a[layer - 1]
        i, j = layer - 1, layer
        blocks[i][i] = blocks[i][i] - 2 * alpha * beta * (w.T @ t @ w)
        blocks[i][j] = blocks[i][j] + (alpha + beta) * (w.T @ t)
        blocks[j][i] = blocks[j][i] + (alpha + beta) * (t @ w)
        blocks[j][j] = blocks[j][j] - 2 * t
    blocks[-1][-1] = blocks[-1][-1] + a[-1].T @ a[-1]
    m = cp.bmat(blocks)
    prob = cp.Problem(cp.Minimize(rho), [(m + m.T) / 2 << 0])
    prob.solve(solver="CLARABEL")
    assert prob.status == cp.OPTIMAL
    return float(np.sqrt(rho.value))


@pytest.mark.parametrize("dims", [[12, 8, 3], [7, 6, 5, 2], [16, 5, 1]])
def test_lipsdp_reproduces_direct_formulation(dims):
    ws = _net(0, dims)
    reference = direct_lipsdp(ws)
    for solver, rtol in (("SCS", 1e-5), ("CLARABEL", 1e-6)):
        res = lipsdp(ws, solver=solver)
        assert res.bound.kind == "upper" and res.status == "optimal"
        assert res.details["lmi_size"] == dims[1] + sum(dims[1:-1])  # input reduced to n1
        np.testing.assert_allclose(float(res), reference, rtol=rtol, err_msg=solver)
    np.testing.assert_allclose(float(lipsdp(ws, reduce=False)), reference, rtol=1e-5)


def test_lipsdp_reduces_the_input_only_when_it_shrinks_the_lmi():
    ws = _net(3, [4, 8, 2])  # n1 = 8 ≥ n0 = 4: the reduction would grow the LMI
    res = lipsdp(ws, solver="CLARABEL")
    assert res.details["lmi_size"] == 4 + 8 and res.details["reduced"] is False
    np.testing.assert_allclose(float(res), direct_lipsdp(ws), rtol=1e-6)


def test_lipsdp_other_slopes_match_direct_formulation():
    ws = _net(1, [9, 6, 2])
    np.testing.assert_allclose(
        float(lipsdp(ws, slopes=(0.1, 1.0), solver="CLARABEL")),
        direct_lipsdp(ws, 0.1, 1.0),
        rtol=1e-6,
    )


def test_lipsdp_certificate_is_a_valid_lmi():
    """The returned ρ makes M(ρ, λ) negative semidefinite with the returned multipliers."""
    ws = _net(2, [10, 7, 4, 3])
    res = lipsdp(ws)
    lam = res.details["multipliers"]
    a = [w.T for w in ws]
    n0, h1, h2 = a[0].shape[1], a[0].shape[0], a[1].shape[0]
    t1, t2 = np.diag(lam[:h1]), np.diag(lam[h1:])
    m = np.zeros((n0 + h1 + h2,) * 2)
    x, s1, s2 = slice(0, n0), slice(n0, n0 + h1), slice(n0 + h1, None)
    m[x, x] = -res.details["rho"] * np.eye(n0)
    m[x, s1], m[s1, x] = a[0].T @ t1, t1 @ a[0]
    m[s1, s1] = -2 * t1
    m[s1, s2], m[s2, s1] = a[1].T @ t2, t2 @ a[1]
    m[s2, s2] = -2 * t2 + a[2].T @ a[2]
    assert np.linalg.eigvalsh(m)[-1] <= 1e-9
    np.testing.assert_allclose(float(res) ** 2, res.details["rho"])


def test_lipsdp_is_exact_for_a_single_neuron():
    rng = np.random.default_rng(3)
    w1, w2 = rng.normal(size=(5, 1)), rng.normal(size=(1, 3))
    np.testing.assert_allclose(
        float(lipsdp([w1, w2])), np.linalg.norm(w1) * np.linalg.norm(w2), rtol=1e-6
    )


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_lipsdp_raises_when_the_solver_stops_early():
    with pytest.raises(SolverError, match="status|failed"):
        lipsdp(_net(4, [12, 8, 3]), solver_options={"max_iters": 3})


def test_lipsdp_argument_errors():
    ws = _net(5, [4, 3, 2])
    with pytest.raises(ValueError, match="slopes"):
        lipsdp(ws, slopes=(1.0, 0.0))
    with pytest.raises(ValueError, match="solver"):
        lipsdp(ws, solver="MOSEK")
    with pytest.raises(ValueError, match="inputs"):
        lipsdp([ws[0], ws[0]])


@pytest.mark.parametrize("solver", ["SCS", "CLARABEL"])
@pytest.mark.parametrize("dims", [[6, 5, 3], [5, 4, 4, 2], [3, 6, 2]])
def test_lipsdp_abs_slopes_bound_the_exact_constant(dims, solver):
    """slopes=(−1, 1) (|·|): the LMI decouples and its optimum sits on the boundary of the
    hidden block; the certificate must still give a bound ≥ the exact constant."""
    from liplax.verify import exact_lipschitz

    for seed in (2, 3):
        ws = _net(seed, dims)
        exact = exact_lipschitz(ws, p=2, activation="abs")
        res = lipsdp(ws, slopes=(-1.0, 1.0), solver=solver)
        assert res.bound.kind == "upper" and exact.bound.kind == "exact"
        assert float(res) >= float(exact)
        assert float(res) <= 1.5 * float(exact)  # and still a useful bound
