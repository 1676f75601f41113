"""The exact Lipschitz constant of small bias-free piecewise-linear networks.

For x ↦ σ(… σ(x @ W1) …) @ W_L with σ ∈ {ReLU, |·|, CReLU} and no biases, the network is linear
on each activation region (an open polyhedral cone where every pre-activation has a fixed sign),
with Jacobian J = W1 · L1(D1) · … · L_{L−1}(D_{L−1}), where L_l(D) is the next weight seen
through the activation's derivative (ReLU: D·W; |·|: (2D−1)·W; CReLU: D·W⁺ − (I−D)·W⁻, W⁺/W⁻ the
rows acting on relu(z)/relu(−z)). The p→p constant is the largest ‖J‖_{p→p} over the regions
that exist (Jordan & Dimakis 2020 cast the local version as a MILP; Virmaux & Scaman 2018 note
the NP-hardness). Three methods:

- one hidden layer and W1 of full row rank (x ↦ x@W1 onto): every pattern is a region.
  ``"enumerate"``: all 2^n patterns, vectorized in float64; in ℓ2 each
  ‖W1 L(D)‖₂² = λ_max(L(D)ᵀ (W1ᵀW1) L(D)) (the same input reduction as LipSDP), in ℓ1/ℓ∞
  J(D) = W1 L(off) + Σ_k D_k W1[:,k] ⊗ (on − off)[k] split into high and low bits.
  ``"milp"`` (ℓ1/ℓ∞, for widths beyond enumeration): one MILP per output (ℓ∞) or input (ℓ1)
  over binary patterns δ and the dual-norm ball, with big-M products δ_k·y_k; HiGHS to a
  relative gap of 1e-9 (its big-M relaxation is weak: expect minutes at width 20).
- ``"regions"`` (any depth and rank): depth-first search over units, keeping the patterns
  whose cone is non-empty. A cone {u : σ_k c_k·u > 0} is non-empty iff {σ_k c_k·u ≥ 1} is
  feasible (it is a cone), an LP (HiGHS); a witness point of the parent decides one child
  without an LP. A unit whose pre-activation vanishes on the whole region changes nothing and
  is not branched on.

Guarantee: ``exact`` (up to float64 rounding, the MILP gap of 1e-9 and the LP tolerances deciding
that a region exists: every region counted has a witness point checked in float64).
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from liplax.nn import check_p
from liplax.verify._common import (
    SolverError,
    TooLarge,
    VerifierResult,
    as_bound,
    induced_norm,
    psd_sqrt,
    require,
)
from liplax.verify.adapters import check_chain, weights_from_list

require("scipy")
from scipy import optimize, sparse  # noqa: E402

# Derivative of each output component of σ(z) on z > 0 and on z < 0 (CReLU has two components,
# concatenated on the feature axis: (relu(z), relu(−z))).
_DERIVATIVES = {
    "relu": ((1.0,), (0.0,)),
    "abs": ((1.0,), (-1.0,)),
    "crelu": ((1.0, 0.0), (0.0, -1.0)),
}
_CHUNK = 1 << 14


def _on_off(weights: list[np.ndarray], activation: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each hidden layer, the next weight seen through σ' when a unit is on / off (n × n')."""
    on, off = _DERIVATIVES[activation]
    out = []
    for w, nxt in zip(weights[:-1], weights[1:], strict=True):
        n = w.shape[1]
        blocks = [nxt[c * n : (c + 1) * n] for c in range(len(on))]
        out.append((sum(r * b for r, b in zip(on, blocks, strict=True)),
                    sum(r * b for r, b in zip(off, blocks, strict=True))))
    return out


def _through(on_off: tuple[np.ndarray, np.ndarray], pattern: np.ndarray) -> np.ndarray:
    e_on, e_off = on_off
    return e_off + pattern[:, None] * (e_on - e_off)


def _bit_patterns(n: int, start: int, stop: int) -> np.ndarray:
    """Rows D with D[k] = bit k of each integer in [start, stop), as float64 (count, n)."""
    idx = np.arange(start, stop)
    return ((idx[:, None] >> np.arange(n)) & 1).astype(np.float64)


def _too_large(what: str, count: int, limit: int, widths: list[int]) -> TooLarge:
    return TooLarge(
        f"exact_lipschitz: {what} up to {count:,} activation patterns (hidden widths {widths}), "
        f"above max_patterns={limit:,}. Pass max_patterns={count} to run it anyway (time and "
        "memory grow with that count), or bound the constant with lipsdp (ℓ2) or lipopt (ℓ∞) "
        "instead."
    )


def _enumerate_l2(w1, on_off, *, max_patterns, widths):
    """max over all 2^n patterns D of ‖W1 L(D)‖₂ (W1 has full row rank: all are regions)."""
    n = w1.shape[1]
    total = 1 << n
    if total > max_patterns:
        raise _too_large("the ℓ2 pattern enumeration visits", total, max_patterns, widths)
    gram = w1.T @ w1
    e_on, e_off = on_off
    diff = e_on - e_off
    m = diff.shape[1]
    if m > n:  # use the n×n Gram R L Lᵀ R, R = (W1ᵀW1)^{1/2}
        root = psd_sqrt(gram)
    best, best_idx = -1.0, 0
    for start in range(0, total, _CHUNK):
        idx = np.arange(start, min(start + _CHUNK, total))
        patterns = _bit_patterns(n, start, idx[-1] + 1)
        k = e_off[None] + patterns[:, :, None] * diff[None]  # (B, n, m)
        if m == 1:
            sq = np.einsum("bi,ij,bj->b", k[:, :, 0], gram, k[:, :, 0])
        elif m <= n:
            sq = np.linalg.eigvalsh(np.swapaxes(k, 1, 2) @ (gram @ k))[:, -1]
        else:
            rk = root @ k
            sq = np.linalg.eigvalsh(rk @ np.swapaxes(rk, 1, 2))[:, -1]
        i = int(np.argmax(sq))
        if sq[i] > best:
            best, best_idx = float(sq[i]), int(idx[i])
    return [_bit_patterns(n, best_idx, best_idx + 1)[0]], {"patterns_visited": total}


def _enumerate_l1inf(w1, on_off, *, p, max_patterns, widths):
    """max over all 2^n patterns D of ‖W1 L(D)‖_{p→p}, p ∈ {1, ∞} (every pattern is a region).

    J(D) = W1 L(off) + Σ_k D_k Z_k with Z_k = W1[:, k] ⊗ (on − off)[k]. The low bits of D are
    enumerated as one block (at most ~2M numbers), the high bits in a loop: J = H[a] + Lo[b].
    """
    n = w1.shape[1]
    total = 1 << n
    if total > max_patterns:
        raise _too_large("the pattern enumeration visits", total, max_patterns, widths)
    e_on, e_off = on_off
    z = w1[:, :, None] * (e_on - e_off)[None]  # (d, n, m)
    d, _, m = z.shape
    low = min(n, max(0, int(math.log2(max(1.0, (1 << 21) / (d * m))))))
    sum_axis = 1 if p == math.inf else 2  # ℓ∞: column abs-sums (over inputs); ℓ1: row abs-sums
    lo = np.einsum("bk,ikj->bij", _bit_patterns(low, 0, 1 << low), z[:, :low])
    base = w1 @ e_off
    best, best_idx = -1.0, 0
    for a, hi in enumerate(_bit_patterns(n - low, 0, 1 << (n - low))):
        block = np.abs(base + np.einsum("k,ikj->ij", hi, z[:, low:]) + lo)
        values = block.sum(axis=sum_axis).max(axis=1)
        b = int(np.argmax(values))
        if values[b] > best:
            best, best_idx = float(values[b]), (a << low) | b
    return [_bit_patterns(n, best_idx, best_idx + 1)[0]], {"patterns_visited": total}


def _max_bilinear(a, alpha, beta, gap):
    """max over v ∈ [−1,1]^r, δ ∈ {0,1}^n of Σ_k α_k δ_k (v@a)_k + β·v, as a MILP (HiGHS).

    g_k = δ_k·y_k with y = v@a is linearized with M_k = Σ_i |a_ik| ≥ |y_k|:
    −M δ ≤ g ≤ M δ and y − M(1−δ) ≤ g ≤ y + M(1−δ).
    """
    r, n = a.shape
    big = np.abs(a).sum(axis=0)
    eye = sparse.identity(n, format="csr")
    zeros_v = sparse.csr_matrix((n, r))
    at = sparse.csr_matrix(a.T)
    diag_m = sparse.diags(big)
    rows = sparse.vstack([
        sparse.hstack([zeros_v, -diag_m, eye]),  # g − Mδ ≤ 0
        sparse.hstack([zeros_v, -diag_m, -eye]),  # −g − Mδ ≤ 0
        sparse.hstack([-at, diag_m, eye]),  # g − y + Mδ ≤ M
        sparse.hstack([at, diag_m, -eye]),  # −g + y + Mδ ≤ M
    ]).tocsr()
    upper = np.concatenate([np.zeros(2 * n), big, big])
    c = -np.concatenate([beta, np.zeros(n), alpha])
    integrality = np.concatenate([np.zeros(r), np.ones(n), np.zeros(n)])
    bounds = optimize.Bounds(
        np.concatenate([-np.ones(r), np.zeros(n), -big]),
        np.concatenate([np.ones(r), np.ones(n), big]),
    )
    res = optimize.milp(
        c,
        constraints=optimize.LinearConstraint(rows, -np.inf, upper),
        integrality=integrality,
        bounds=bounds,
        options={"mip_rel_gap": gap},
    )
    if res.status != 0:
        raise SolverError(f"exact_lipschitz: MILP status {res.status} ({res.message})")
    delta = np.round(res.x[r : r + n])
    dual = getattr(res, "mip_dual_bound", None)
    return delta, (-float(dual) if dual is not None else -float(res.fun))


def _milp_one_hidden(w1, on_off, p, gap):
    """ℓ∞: max_j max_{t,δ} t·(W1 L(δ))[:, j]; ℓ1: max_i max_{s,δ} (W1 L(δ))[i]·s; each a MILP."""
    e_on, e_off = on_off
    diff = e_on - e_off
    if p == math.inf:  # column j of W1 L(δ): Σ_k (t@W1)_k (δ_k diff_kj + off_kj)
        problems = [(w1, diff[:, j], w1 @ e_off[:, j]) for j in range(diff.shape[1])]
        caps = np.abs(w1).sum(axis=0) @ np.maximum(np.abs(e_on), np.abs(e_off))
    else:  # row i of W1 L(δ): Σ_k W1_ik (δ_k diff_k + off_k)·s
        problems = [(diff.T, w1[i], e_off.T @ w1[i]) for i in range(w1.shape[0])]
        caps = np.abs(w1) @ np.maximum(np.abs(e_on).sum(1), np.abs(e_off).sum(1))
    best, best_pattern, upper, solved = -1.0, None, 0.0, 0
    for i in np.argsort(-caps, kind="stable"):
        if caps[i] <= best:  # a cheap cap on this output's (input's) value: nothing to gain
            break
        delta, dual = _max_bilinear(*problems[i], gap)
        solved += 1
        upper = max(upper, dual)
        value = induced_norm(w1 @ _through(on_off, delta), p)
        if value > best:
            best, best_pattern = value, delta
    return [best_pattern], {"milps": solved, "milp_upper": max(upper, best)}


def _region_lp(rows: list[np.ndarray]) -> np.ndarray | None:
    """A point u with rows @ u ≥ 1 (HiGHS), or None when there is none."""
    a = np.asarray(rows)
    res = optimize.linprog(
        np.zeros(a.shape[1]),
        A_ub=-a,
        b_ub=-np.ones(a.shape[0]),
        bounds=[(None, None)] * a.shape[1],
        method="highs",
    )
    if res.status == 2:
        return None
    if res.status != 0:
        raise SolverError(f"exact_lipschitz: region LP status {res.status} ({res.message})")
    if np.min(a @ res.x) <= 0.5:
        raise SolverError("exact_lipschitz: region LP returned a point outside its cone")
    return res.x


def _enumerate_regions(w1, on_off, p, full_rank):
    """Depth-first search over the activation regions that exist (see module docstring)."""
    n1 = w1.shape[1]
    if full_rank:
        basis = np.eye(n1)  # u = z1 = x @ W1 ranges over all of R^n1
    else:
        _, s, vt = np.linalg.svd(w1, full_matrices=False)
        basis = vt[: int(np.sum(s > s[0] * max(w1.shape) * np.finfo(np.float64).eps))]
    gram = w1.T @ w1
    n_hidden = len(on_off)
    tiny = 1e-12 * max(1.0, float(np.abs(w1).max()))
    stats = {"regions": 0, "lps": 0}
    best = {"sq": -1.0, "patterns": None, "u": None}

    def score(k: np.ndarray) -> float:
        if p == 2:
            return float(np.linalg.eigvalsh(k.T @ gram @ k)[-1])
        return induced_norm(w1 @ k, p)

    def visit(layer, unit, prefix, coeffs, rows, u, current, done):
        width = coeffs.shape[1]
        if unit == width:
            pattern = np.asarray(current, dtype=np.float64)
            k = prefix @ _through(on_off[layer], pattern)
            if layer + 1 == n_hidden:
                stats["regions"] += 1
                sq = score(k)
                if sq > best["sq"]:
                    best.update(sq=sq, patterns=[*done, pattern], u=u)
                return
            visit(layer + 1, 0, k, basis @ k, rows, u, [], [*done, pattern])
            return
        c = coeffs[:, unit]
        if np.linalg.norm(c) <= tiny:  # z ≡ 0 on this region: on/off give the same map
            visit(layer, unit + 1, prefix, coeffs, rows, u, [*current, 0.0], done)
            return
        side = float(c @ u)
        for sign in (1.0, -1.0):
            new_rows = [*rows, sign * c]
            if layer == 0 and full_rank:
                v = u.copy()
                v[unit] = sign  # first-layer signs are independent coordinates
            elif sign * side > 0:
                v = u * max(1.0, 1.0 / (sign * side))  # the parent's witness, scaled
            else:
                stats["lps"] += 1
                v = _region_lp(new_rows)
                if v is None:
                    continue
            visit(layer, unit + 1, prefix, coeffs, new_rows, v, [*current, float(sign > 0)], done)

    visit(0, 0, np.eye(n1), basis, [], np.zeros(basis.shape[0]), [], [])
    return best["patterns"], best["u"] @ basis, stats


METHODS = ("auto", "enumerate", "milp", "regions")


def _choose_method(method, p, one_hidden_full_rank, n1, max_patterns):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("enumerate", "milp") and not one_hidden_full_rank:
        raise ValueError(
            f"method={method!r} needs one hidden layer and a first weight of full row rank "
            "(every pattern a region); use method='regions' (or 'auto')"
        )
    if method == "milp" and p == 2:
        raise ValueError("method='milp' computes ℓ1/ℓ∞ constants; ℓ2 uses 'enumerate'/'regions'")
    if method != "auto":
        return method
    if not one_hidden_full_rank:
        return "regions"
    if p != 2 and (1 << n1) > max_patterns:
        return "milp"
    return "enumerate"


def exact_lipschitz(
    weights,
    *,
    p: float | str = 2,
    activation: str = "relu",
    method: str = "auto",
    max_patterns: int = 1 << 22,
    mip_rel_gap: float = 1e-9,
) -> VerifierResult:
    """The exact p→p Lipschitz constant of a small bias-free network (see module docstring).

    Args:
      weights: ``[W1, …, W_L]``, flax ``(in, out)`` layout (x ↦ σ(x@W1) … @ W_L), L ≥ 2.
      p: ``2``, ``1`` or ``math.inf`` (or ``"inf"``).
      activation: ``"relu"``, ``"abs"`` or ``"crelu"`` (the same in every hidden layer).
      method: ``"auto"`` (default): with one hidden layer and W1 of full row rank,
        ``"enumerate"`` all 2^n patterns (vectorized float64), or for ℓ1/ℓ∞ beyond
        ``max_patterns`` the ``"milp"``; otherwise ``"regions"`` (LP-pruned search over the
        regions that exist). Naming one forces it.
      max_patterns: refuse (:class:`TooLarge`) an enumeration that may visit more patterns
        than this: 2^n for one hidden layer of width n, 2^(Σ widths) for the region search.
      mip_rel_gap: relative optimality gap asked of the MILP.

    Returns:
      :class:`VerifierResult` with an ``exact`` bound; ``details`` has the maximizing
      ``patterns`` (one 0/1 array per hidden layer), a witness ``point`` x inside that region
      (first-layer pre-activations x@W1 of magnitude ≥ 1), the method and its counts.

    Raises:
      TooLarge: the enumeration would exceed ``max_patterns`` (the message gives the count).
      SolverError: a MILP/LP did not reach optimality.
    """
    p = check_p(p, "exact_lipschitz")
    ws = weights_from_list(weights)
    check_chain(ws, activation)
    if isinstance(max_patterns, bool) or not isinstance(max_patterns, int) or max_patterns < 1:
        raise ValueError(f"max_patterns must be a positive int, got {max_patterns!r}")
    on_off = _on_off(ws, activation)
    w1 = ws[0]
    n1 = w1.shape[1]
    widths = [w.shape[1] for w in ws[:-1]]
    full_rank = int(np.linalg.matrix_rank(w1)) == n1
    method = _choose_method(method, p, len(ws) == 2 and full_rank, n1, max_patterns)
    t0 = time.perf_counter()
    if method == "enumerate":
        enumerate_ = _enumerate_l2 if p == 2 else functools.partial(_enumerate_l1inf, p=p)
        patterns, info = enumerate_(w1, on_off[0], max_patterns=max_patterns, widths=widths)
        point = (2.0 * patterns[0] - 1.0) @ np.linalg.pinv(w1)
    elif method == "milp":
        patterns, info = _milp_one_hidden(w1, on_off[0], p, mip_rel_gap)
        point = (2.0 * patterns[0] - 1.0) @ np.linalg.pinv(w1)
    else:
        worst = 1 << sum(widths)
        if worst > max_patterns:
            raise _too_large("the region search may visit", worst, max_patterns, widths)
        patterns, z1, info = _enumerate_regions(w1, on_off, p, full_rank)
        point = z1 @ np.linalg.pinv(w1)
    jac = w1
    for layer, pattern in zip(on_off, patterns, strict=True):
        jac = jac @ _through(layer, pattern)
    value = induced_norm(jac, p)
    if math.isnan(value):
        raise SolverError("exact_lipschitz: the constant evaluated to nan")
    details = {
        "method": method,
        "patterns": patterns,
        "point": point,
        "time_s": time.perf_counter() - t0,
        "full_row_rank": full_rank,
        **info,
    }
    return VerifierResult(as_bound(value, "exact"), "optimal", details)
