"""The exact Lipschitz constant of small bias-free piecewise-linear networks.

For x ↦ σ(… σ(x @ W1) …) @ W_L with σ ∈ {ReLU, |·|, CReLU} and no biases, the network is linear
on each activation region (an open polyhedral cone where every pre-activation has a fixed sign),
with Jacobian J = W1 · L1(D1) · … · L_{L−1}(D_{L−1}), where L_l(D) is the next weight seen
through the activation's derivative (ReLU: D·W; |·|: (2D−1)·W; CReLU: D·W⁺ − (I−D)·W⁻, W⁺/W⁻ the
rows acting on relu(z)/relu(−z)). The p→p constant is the largest ‖J‖_{p→p} over the regions
that exist (Jordan & Dimakis 2020 cast the local version as a MILP; Virmaux & Scaman 2018 note
the NP-hardness). Three methods:

First the network is put in a scale-free form, exactly (:mod:`liplax.verify._exact_prep`):
every hidden unit rescaled by a power of two (σ(c·z) = c·σ(z), c > 0; the factor moves into
the next layer), dead units (zero columns) removed, the overall scale 2^E kept apart. Nothing
below depends on how the layers or units were scaled (to float64 rounding of the scaling the
caller did).

- one hidden layer and W1 provably of full row rank (x ↦ x@W1 onto, shown from the SVD with a
  margin for its rounding): every pattern is a region.
  ``"enumerate"``: all 2^n patterns, vectorized in float64; in ℓ2 each
  ‖W1 L(D)‖₂² = λ_max(L(D)ᵀ (W1ᵀW1) L(D)) (the same input reduction as LipSDP), in ℓ1/ℓ∞
  J(D) = W1 L(off) + Σ_k D_k W1[:,k] ⊗ (on − off)[k] split into high and low bits.
  ``"milp"`` (ℓ1/ℓ∞, for widths beyond enumeration): one MILP per output (ℓ∞) or input (ℓ1)
  over binary patterns δ and the dual-norm ball, with big-M products δ_k·y_k; HiGHS to a
  relative gap of 1e-9 (its big-M relaxation is weak: expect minutes at width 20).
- ``"regions"`` (any depth and rank, :mod:`liplax.verify._exact_regions`): depth-first search
  over units, in exact integer arithmetic on the normalized weights. A region is counted when a
  point of it is checked exactly, dropped when a Gordan certificate (y ≥ 0, Σ y_i s_i c_i = 0)
  proves it empty, and otherwise kept as *uncertain* (LPs in float64 only propose points and
  certificates). A unit whose coefficient is exactly zero on a region is not branched on.

Guarantee: ``exact`` up to float64 rounding (of each region's Jacobian, formed exactly and
rounded once, and of its norm) and, for ``"milp"``, HiGHS's gap. Where an uncertain region's
Jacobian is larger than every counted one, or HiGHS stops short of its gap, the result is of
kind ``upper`` instead (the uncertain regions are included, so it is never below the truth).
Weights whose unit scales cannot be moved exactly within float64's exponent range are refused.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from liplax._checks import check_p
from liplax.verify._common import (
    SolverError,
    TooLarge,
    VerifierResult,
    as_bound,
    induced_norm,
    psd_sqrt,
    require,
)
from liplax.verify._exact_prep import (
    as_ints,
    full_column_rank,
    normalize,
    signs_match,
    to_float,
)
from liplax.verify._exact_prep import on_off_maps as _on_off
from liplax.verify._exact_prep import through as _through
from liplax.verify._exact_regions import search
from liplax.verify.adapters import check_chain, weights_from_list

require("scipy")
from scipy import optimize, sparse  # noqa: E402

_CHUNK = 1 << 14


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
    """ℓ∞: max_j max_{t,δ} t·(W1 L(δ))[:, j]; ℓ1: max_i max_{s,δ} (W1 L(δ))[i]·s; each a MILP.

    Each MILP is rescaled (y_k by its big-M, the objective to largest coefficient 1): HiGHS's
    tolerances are absolute. The value is recomputed from the pattern found; if it falls short of
    HiGHS's dual bound by more than the gap, the caller returns that bound as ``upper``.
    """
    e_on, e_off = on_off
    diff = e_on - e_off
    if p == math.inf:  # column j of W1 L(δ): Σ_k (t@W1)_k (δ_k diff_kj + off_kj)
        problems = [(w1, diff[:, j], w1 @ e_off[:, j]) for j in range(diff.shape[1])]
        caps = np.abs(w1).sum(axis=0) @ np.maximum(np.abs(e_on), np.abs(e_off))
    else:  # row i of W1 L(δ): Σ_k W1_ik (δ_k diff_k + off_k)·s
        problems = [(diff.T, w1[i], e_off.T @ w1[i]) for i in range(w1.shape[0])]
        caps = np.abs(w1) @ np.maximum(np.abs(e_on).sum(1), np.abs(e_off).sum(1))
    best, best_pattern, upper, solved = -1.0, np.zeros(w1.shape[1]), 0.0, 0
    for i in np.argsort(-caps, kind="stable"):
        if caps[i] <= best:  # a cheap cap on this output's (input's) value: nothing to gain
            break
        a, alpha, beta = problems[i]
        big = np.abs(a).sum(axis=0)  # y_k/M_k ∈ [−1, 1] and α_k·M_k: every big-M is 1
        big[big == 0] = 1.0
        a, alpha = a / big, alpha * big
        scale = max(float(np.abs(alpha).max()), float(np.abs(beta).max()))
        if scale == 0.0:
            continue
        delta, dual = _max_bilinear(a, alpha / scale, beta / scale, gap)
        solved += 1
        upper = max(upper, dual * scale)
        value = induced_norm(w1 @ _through(on_off, delta), p)
        if value > best:
            best, best_pattern = value, delta
    return [best_pattern], {"milps": solved, "milp_upper": max(upper, best, 0.0)}


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
      :class:`VerifierResult` with an ``exact`` bound (``upper`` where the region search could
      not decide a region whose Jacobian is the largest, or the MILP stopped short of its gap;
      see the module docstring); ``details`` has the maximizing ``patterns`` (one 0/1 array per
      hidden layer; dead units 0), a ``point`` x inside that region (None for an undecided
      region or a float64 point that its exact check put outside; every pre-activation of x has
      the pattern's sign), the method and its counts.

    Raises:
      TooLarge: the enumeration would exceed ``max_patterns`` (the message gives the count).
      SolverError: a MILP/LP did not reach optimality.
      ValueError: bad arguments, or unit scales beyond float64's exponent range.
    """
    p = check_p(p, "exact_lipschitz")
    ws_given = weights_from_list(weights)
    check_chain(ws_given, activation)
    if isinstance(max_patterns, bool) or not isinstance(max_patterns, int) or max_patterns < 1:
        raise ValueError(f"max_patterns must be a positive int, got {max_patterns!r}")
    norm = normalize(ws_given, activation)
    ws = norm.weights
    widths = [w.shape[1] for w in ws[:-1]]
    t0 = time.perf_counter()
    if min(widths) == 0:  # a layer of dead units: f is constant
        patterns = [np.zeros(w.shape[1]) for w in ws_given[:-1]]
        details = {"method": "dead", "patterns": patterns, "point": np.zeros(ws[0].shape[0]),
                   "time_s": 0.0, "full_row_rank": False}
        return VerifierResult(as_bound(0.0, "exact"), "optimal", details)
    on_off = _on_off(ws, activation)
    w1 = ws[0]
    n1 = w1.shape[1]
    full_rank = full_column_rank(w1)
    method = _choose_method(method, p, len(ws) == 2 and full_rank, n1, max_patterns)
    ints = [as_ints(w) for w in ws]
    kind, info = "exact", {}
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
        on_off_i = _on_off([m for m, _ in ints], activation)
        found, unsure, info = search(ws, on_off_i, [k for _, k in ints], p, full_rank)
        if found[1] is None and unsure[1] is None:
            raise SolverError("exact_lipschitz: the region search found no region")
        # a region neither shown to exist nor to be empty, with a larger Jacobian: upper bound
        if found[1] is None or unsure[0] > found[0] * (1.0 + 64 * np.finfo(np.float64).eps):
            kind, found = "upper", unsure
        _, patterns, u = found
        point = None if u is None else (_to_input(w1, u) if full_rank else u)
    if point is not None and not signs_match(ints, point, patterns, activation):
        point = None  # the float64 point missed the region (it is no part of the result)
    # the chosen region's Jacobian, formed exactly and rounded once
    k_total = sum(k for _, k in ints)
    jac = ints[0][0]
    for layer, pattern in zip(_on_off([m for m, _ in ints], activation), patterns, strict=True):
        jac = jac @ _through(layer, np.asarray(pattern, dtype=np.int64).astype(object))
    value = induced_norm(to_float(jac, k_total), p)
    if method == "milp" and value < info["milp_upper"] * (1.0 - 2.0 * mip_rel_gap) - 1e-300:
        # HiGHS stopped short of the gap: its dual bound (plus a margin for its tolerances)
        kind, value = "upper", info["milp_upper"] * (1.0 + 1e-6)
    value = float(np.ldexp(value, norm.exponent))
    if math.isnan(value):
        raise SolverError("exact_lipschitz: the constant evaluated to nan")
    if math.isinf(value):
        kind = "upper"
    details = {
        "method": method,
        "patterns": [_unpack(d, keep, w.shape[1])
                     for d, keep, w in zip(patterns, norm.live, ws_given[:-1], strict=True)],
        "point": point,
        "time_s": time.perf_counter() - t0,
        "full_row_rank": full_rank,
        **info,
    }
    return VerifierResult(as_bound(value, kind), "optimal", details)


def _to_input(w1: np.ndarray, z1: np.ndarray) -> np.ndarray:
    """x with x @ W1 ≈ z1 (W1 of full column rank), refined twice against rounding."""
    pinv = np.linalg.pinv(w1)
    x = z1 @ pinv
    for _ in range(2):
        x = x + (z1 - x @ w1) @ pinv
    return x


def _unpack(pattern: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """A pattern over the live units, spread over all n units (dead units: 0)."""
    out = np.zeros(n)
    out[keep] = pattern
    return out
