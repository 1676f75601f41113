"""LipSDP-Neuron (Fazlyab, Robey, Hassani, Morari, Pappas 2019): an SDP upper bound on the ℓ2
Lipschitz constant of x ↦ W_L φ(… φ(W_1 x)) with slope-restricted activations.

Column convention here (A_l = W_lᵀ for the flax ``(in, out)`` matrices W_l). Every activation
satisfies the incremental quadratic constraint (Δh − αΔz)(βΔz − Δh) ≥ 0 per neuron. With
T = diag(λ) ⪰ 0 over the N hidden neurons, A = [blkdiag(A_1, …, A_{L−1}), 0] (pre-activations
from [x; h]) and B = [0, I_N] (the hidden outputs), if

    M(ρ, λ) = [A; B]ᵀ [[−2αβT, (α+β)T], [(α+β)T, −2T]] [A; B]
              + blkdiag(−ρI_{n0}, 0, …, 0, A_Lᵀ A_L) ⪯ 0

then ‖f(x) − f(y)‖₂ ≤ √ρ ‖x − y‖₂. LipSDP minimizes ρ. Only diagonal multipliers are used
("LipSDP-Neuron"): the coupled "LipSDP-Network" variant can return values below the true
constant and is not implemented.

**Input-dimension reduction.** A_1 enters M only through A_1ᵀ(·)A_1 and A_1ᵀ(·) in the input
rows, i.e. M(A_1) = Pᵀ M(R) P + (−ρ)(I − QᵀQ)-terms with A_1 = R Q, R = (A_1 A_1ᵀ)^{1/2} and Q
with orthonormal rows: replacing A_1 (n1 × n0) by R (n1 × n1) keeps the optimum and shrinks the
LMI from n0 + N to n1 + N (784-20-10: 40 instead of 804).

**Soundness.** The solver only proposes λ. The returned bound is recomputed in float64 from
those multipliers: ρ from the Schur complement of the hidden block (which must be negative
definite), then raised until λ_max(M(ρ, λ)) ≤ −τ, τ a bound on the eigenvalue solver's backward
error, so that M(ρ, λ) ⪯ 0 holds for the exact matrix. Where the solver's optimum leaves the
hidden block singular (always for |·|, slopes (−1, 1): α + β = 0 splits the LMI into an input
block and a hidden block −2T + (A_Lᵀ A_L, 2A_{l+1}ᵀT_{l+1}A_{l+1} terms) that nothing pushes
inside), the SDP is solved again asking the hidden block to be ⪯ −m·I, m = 1e-7·‖W_L‖₂² and
larger if needed, which costs O(m) in the bound and leaves multipliers that certify.
Guarantee: ``upper``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from liplax.verify._common import SolverError, VerifierResult, as_bound, psd_sqrt, require
from liplax.verify.adapters import check_chain, weights_from_list

cp = require("cvxpy")

SOLVERS = ("SCS", "CLARABEL")
# SCS to tight tolerances: ~0.2 s on 784-20-10, where Clarabel's dense PSD scaling takes ~1 s.
_DEFAULT_OPTIONS = {"SCS": {"eps_abs": 1e-8, "eps_rel": 1e-8}, "CLARABEL": {}}


def _lmi_pieces(weights: list[np.ndarray], slopes: tuple[float, float], reduce: bool):
    """M(ρ, λ) = base + Σ_i λ_i F_i − ρ E as dense float64 arrays (F stacked on axis 0)."""
    alpha, beta = slopes
    cols = [w.T for w in weights]  # column-convention matrices A_l (out × in)
    if reduce:
        cols[0] = psd_sqrt(cols[0] @ cols[0].T)  # (A_1 A_1ᵀ)^{1/2}, n1 × n1
    n0 = cols[0].shape[1]
    hidden = [a.shape[0] for a in cols[:-1]]
    n_hid = sum(hidden)
    size = n0 + n_hid
    a = np.zeros((n_hid, size))  # pre-activations z = A [x; h]
    row, col = 0, 0
    for mat in cols[:-1]:
        a[row : row + mat.shape[0], col : col + mat.shape[1]] = mat
        row, col = row + mat.shape[0], col + mat.shape[1]
    b = np.zeros((n_hid, size))
    b[:, n0:] = np.eye(n_hid)
    # F_i = −2αβ a_i a_iᵀ + (α+β)(a_i b_iᵀ + b_i a_iᵀ) − 2 b_i b_iᵀ for neuron i.
    ab = a[:, :, None] * b[:, None, :]
    f = (
        -2.0 * alpha * beta * a[:, :, None] * a[:, None, :]
        + (alpha + beta) * (ab + np.swapaxes(ab, 1, 2))
        - 2.0 * b[:, :, None] * b[:, None, :]
    )
    base = np.zeros((size, size))
    last = cols[-1]
    base[size - hidden[-1] :, size - hidden[-1] :] = last.T @ last
    e = np.zeros((size, size))
    e[:n0, :n0] = np.eye(n0)
    return base, f, e, n0


def _certify(base, f, e, n0, lam):
    """The smallest ρ (rounded up) with base + Σλ_i F_i − ρE ⪯ 0 provably in float64, or None.

    A computed eigenvalue of a symmetric M is within τ = 4·n·u·‖M‖_F of an exact one (backward
    stability of the symmetric eigensolver), so λ_max computed ≤ −τ proves M ⪯ 0.
    """
    m0 = base + np.tensordot(lam, f, axes=1)
    size = m0.shape[0]
    unit = 4.0 * size * np.finfo(np.float64).eps

    def tau(m):
        return unit * max(float(np.linalg.norm(m)), np.finfo(np.float64).tiny)

    hid = m0[n0:, n0:]
    if np.linalg.eigvalsh(hid)[-1] >= -tau(hid):
        return None
    s = m0[:n0, :n0] - m0[:n0, n0:] @ np.linalg.solve(hid, m0[n0:, :n0])
    rho = max(float(np.linalg.eigvalsh((s + s.T) / 2.0)[-1]), 0.0)
    step = tau(m0 - rho * e)
    for _ in range(64):
        m = m0 - rho * e
        if np.linalg.eigvalsh(m)[-1] <= -tau(m):
            return rho
        rho, step = rho + step, 2.0 * step
    return None


# Margins (relative to ‖W_L‖₂²) asked of the hidden block, −margin·I, tried in turn. The optimum
# of LipSDP can sit where the hidden block is singular (for |·|, α + β = 0, the LMI splits into
# the input block and a hidden block with nothing pushing it inside), and a singular block cannot
# be certified in float64; a small margin moves the multipliers inside at a cost of O(margin).
_MARGINS = (0.0, 1e-7, 1e-5, 1e-3)


def _solve(base, f, e, margin, solver, options):
    """min ρ s.t. M(ρ, λ) + margin·blkdiag(0, I_N) ⪯ 0, λ ≥ 0; SolverError unless optimal."""
    size, n_hid = base.shape[0], f.shape[0]
    rho = cp.Variable(nonneg=True)
    lam = cp.Variable(n_hid, nonneg=True)
    shift = np.zeros((size, size))
    shift[size - n_hid :, size - n_hid :] = margin * np.eye(n_hid)
    affine = (base + shift).reshape(-1) + f.reshape(n_hid, -1).T @ lam - e.reshape(-1) * rho
    m = cp.reshape(affine, (size, size), order="C")
    problem = cp.Problem(cp.Minimize(rho), [(m + m.T) / 2.0 << 0])
    try:
        problem.solve(solver=solver, **options)
    except cp.error.SolverError as err:
        raise SolverError(f"lipsdp: solver {solver} failed: {err}") from err
    if problem.status != cp.OPTIMAL:
        raise SolverError(f"lipsdp: solver {solver} returned status {problem.status!r}; no bound")
    return problem, rho, lam


def lipsdp(
    weights,
    *,
    slopes: tuple[float, float] = (0.0, 1.0),
    solver: str = "SCS",
    reduce: bool | None = None,
    solver_options: dict | None = None,
) -> VerifierResult:
    """LipSDP-Neuron upper bound on the ℓ2 Lipschitz constant (see module docstring).

    Args:
      weights: ``[W1, …, W_L]`` in flax ``(in, out)`` layout, L ≥ 2 (biases play no role).
      slopes: (α, β), the activation's slope range: (0, 1) for ReLU, tanh, sigmoid·4, ...;
        (−1, 1) for |·|.
      solver: ``"SCS"`` (first order, run to tolerances 1e-8; default) or ``"CLARABEL"``
        (interior point; more accurate, slower on large LMIs).
      reduce: replace W1 by (W1ᵀW1)^{1/2} (same optimum, LMI of size n1 + N instead of n0 + N).
        ``None`` (default): only when it shrinks the LMI, n1 < n0 (on 20-64-1 reducing grows the
        LMI and took 125 s against 5 s).
      solver_options: keyword arguments for ``cvxpy.Problem.solve`` (they override the
        defaults above).

    Returns:
      :class:`VerifierResult` with an ``upper`` bound √ρ (ρ certified in float64 from the
      solver's multipliers), the solver status and ``details`` (``rho_solver``, ``multipliers``,
      ``lmi_size``, ``solve_time_s``, ``time_s``).

    Raises:
      SolverError: the solver did not report ``optimal`` (its status is in the message), or its
        multipliers do not certify any bound.
    """
    ws = weights_from_list(weights)
    check_chain(ws, "relu")
    alpha, beta = (float(v) for v in slopes)
    if not (math.isfinite(alpha) and math.isfinite(beta) and alpha <= beta):
        raise ValueError(f"slopes must be finite (α, β) with α ≤ β, got {slopes!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if reduce is None:
        reduce = ws[0].shape[1] < ws[0].shape[0]
    t0 = time.perf_counter()
    base, f, e, n0 = _lmi_pieces(ws, (alpha, beta), reduce)
    options = {**_DEFAULT_OPTIONS[solver], **(solver_options or {})}
    scale = max(float(np.linalg.eigvalsh(base)[-1]), np.finfo(np.float64).tiny)
    for margin in _MARGINS:  # the first that the float64 check certifies
        problem, rho, lam = _solve(base, f, e, margin * scale, solver, options)
        multipliers = np.clip(np.asarray(lam.value, dtype=np.float64), 0.0, None)
        certified = _certify(base, f, e, n0, multipliers)
        if certified is not None:
            break
    else:
        raise SolverError(
            f"lipsdp: solver {solver} reported {problem.status!r} but its multipliers do not "
            f"certify a bound (hidden block not negative definite, also with margins "
            f"{_MARGINS[1:]}·‖W_L‖²); try the other solver"
        )
    status = problem.status
    details = {
        "rho_solver": float(rho.value),
        "rho": certified,
        "multipliers": multipliers,
        "lmi_size": base.shape[0],
        "hidden_margin": margin * scale,
        "reduced": reduce,
        "solver": solver,
        "solve_time_s": problem.solver_stats.solve_time,
        "time_s": time.perf_counter() - t0,
    }
    return VerifierResult(as_bound(math.sqrt(certified), "upper"), status, details)
