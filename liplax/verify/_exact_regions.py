"""The region search of :func:`liplax.verify.exact_lipschitz`, decided in exact arithmetic.

Depth-first over the hidden units, layer by layer. At a node the region is the open cone
R = {u : s_i·c_i·u > 0} over the units fixed so far (u = z1 = x@W1 when W1 is provably onto,
else u = x); c_i is the unit's pre-activation coefficient on R, an exact integer vector (the
normalized weights as integers, :func:`liplax.verify._exact_prep.as_ints`). Each child is:

- **exists**: a point u with every s_i·c_i·u > 0, checked in exact integer arithmetic (the
  parent's witness when it already has the child's sign, else the solution of the LP
  max t s.t. s_i·ĉ_i·u ≥ t, ‖u‖∞ ≤ 1, ĉ_i the unit-norm float64 direction of c_i);
- **empty**: by Gordan's theorem R = ∅ iff some y ≥ 0, y ≠ 0 has Σ y_i s_i c_i = 0; the LP's
  dual suggests the support, and y is found and checked in exact rational arithmetic;
- **uncertain**: neither could be shown. It is kept (so nothing that exists is ever dropped) and
  the regions below it count as uncertain unless a witness is found for them.

A unit whose coefficient is exactly zero on R has z ≡ 0 there and the same Jacobian either way;
it is not branched on. The Jacobian of each leaf is formed exactly and rounded once to float64.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from liplax.verify._common import induced_norm
from liplax.verify._exact_prep import as_ints, row_direction, through, to_float


def _lp(rows_f: np.ndarray):
    """max t s.t. rows_f @ u ≥ t, ‖u‖∞ ≤ 1, t ≤ 1: (t, u, dual y) or None if HiGHS fails."""
    from scipy import optimize

    m, n = rows_f.shape
    res = optimize.linprog(
        np.r_[np.zeros(n), -1.0],
        A_ub=np.c_[-rows_f, np.ones(m)],
        b_ub=np.zeros(m),
        bounds=[(-1.0, 1.0)] * n + [(None, 1.0)],
        method="highs",
    )
    if res.status != 0:
        return None
    return -float(res.fun), res.x[:n], -np.asarray(res.ineqlin.marginals, dtype=np.float64)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norms > 0, norms, 1.0)


def _equilibrate(a: np.ndarray, rounds: int = 4) -> np.ndarray:
    """Column scales s > 0 (u = s·v) making the rows of a·diag(s) of comparable entries.

    A region that is a sliver of the box ‖u‖∞ ≤ 1 only because the coordinates have very
    different scales is thick in the rescaled box; the cone itself is unchanged (s > 0).
    """
    s = np.ones(a.shape[1])
    mag = np.abs(a)
    for _ in range(rounds):
        m = _unit_rows(mag * s)
        hi = m.max(axis=0)
        lo = np.where(m > 0, m, np.inf).min(axis=0)
        ok = (hi > 0) & np.isfinite(lo)
        s[ok] /= np.sqrt(hi[ok] * lo[ok])
        s /= s.max()
    return s


def _holds(rows_i: list, u: np.ndarray) -> bool:
    """Every exact row has a strictly positive product with u (u exactly, as a dyadic vector)."""
    ui, _ = as_ints(u)
    return all(sum(int(a) * int(b) for a, b in zip(r, ui, strict=True)) > 0 for r in rows_i)


def _nullspace(cols: list[list[Fraction]], n: int) -> list[list[Fraction]]:
    """Basis of {y ∈ Q^n : Σ_j y_j cols[j] = 0}, cols given as n vectors (exact elimination)."""
    m = [list(r) for r in zip(*cols, strict=True)]  # equations × n
    pivots, row = [], 0
    for col in range(n):
        pr = next((r for r in range(row, len(m)) if m[r][col] != 0), None)
        if pr is None:
            continue
        m[row], m[pr] = m[pr], m[row]
        inv = 1 / m[row][col]
        m[row] = [v * inv for v in m[row]]
        for r in range(len(m)):
            if r != row and m[r][col] != 0:
                f = m[r][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[row], strict=True)]
        pivots.append(col)
        row += 1
    basis = []
    for free in (c for c in range(n) if c not in pivots):
        y = [Fraction(0)] * n
        y[free] = Fraction(1)
        for r, pc in enumerate(pivots):
            y[pc] = -m[r][free]
        basis.append(y)
    return basis


def _empty(rows_i: list, y: np.ndarray) -> bool:
    """Gordan: some exact y ≥ 0, y ≠ 0 with Σ y_i rows_i = 0 (support suggested by the LP)."""
    if not np.all(np.isfinite(y)) or y.max() <= 0:
        return False
    support = np.flatnonzero(y > 1e-9 * y.max())
    vecs = [[Fraction(int(v)) for v in rows_i[i]] for i in support]
    basis = _nullspace(vecs, len(support))
    if not basis:
        return False
    if len(basis) == 1:
        cand = basis[0]
    else:  # the exact combination nearest the LP's y, rounded to rationals
        b = np.array([[float(v) for v in vec] for vec in basis]).T
        lam = np.linalg.lstsq(b, y[support], rcond=None)[0]
        coef = [Fraction(float(v)).limit_denominator(1 << 40) for v in lam]
        cand = [sum((c * vec[i] for c, vec in zip(coef, basis, strict=True)), Fraction(0))
                for i in range(len(support))]
    if all(v <= 0 for v in cand):
        cand = [-v for v in cand]
    return all(v >= 0 for v in cand) and any(v > 0 for v in cand)


def search(weights, on_off_i, ks, p, full_rank):
    """Best exact-witnessed and best uncertain region (value, patterns, witness u) + counts.

    ``weights``: normalized float64 network; ``on_off_i``: its on/off next-layer matrices as
    exact integers (scale 2^−ks[l+1]); ``ks``: each layer's integer exponent.
    """
    w1 = weights[0]
    n1 = w1.shape[1]
    w1_i, k1 = as_ints(w1)
    basis = np.eye(n1, dtype=np.int64).astype(object) if full_rank else w1_i
    n_hidden = len(on_off_i)
    k_total = k1 + sum(ks[1:])
    stats = {"regions": 0, "uncertain_regions": 0, "lps": 0, "empty_certified": 0}
    best = {True: (-1.0, None, None), False: (-1.0, None, None)}  # keyed by "witnessed"

    def leaf(kmat, patterns, u):
        jac = to_float(w1_i @ kmat, k_total)
        value = induced_norm(jac, p)
        witnessed = u is not None
        stats["regions" if witnessed else "uncertain_regions"] += 1
        if value > best[witnessed][0]:
            best[witnessed] = (value, patterns, u)

    def child(rows_i, u, row, sign):
        """(status, witness) of the region rows ∧ sign·row > 0 (see module docstring)."""
        if u is not None:
            z = sum(int(a) * int(b) for a, b in zip(row, as_ints(u)[0], strict=True))
            if z * sign > 0:
                return "exists", u
        new = [*rows_i, [sign * v for v in row]]
        rows_f = np.stack([row_direction(np.asarray(r, dtype=object)) for r in new])
        for scale in (np.ones(rows_f.shape[1]), _equilibrate(rows_f)):
            stats["lps"] += 1
            out = _lp(_unit_rows(rows_f * scale))
            if out is None:
                continue
            t, v, y = out
            if t > 0 and _holds(new, v * scale):
                return "exists", v * scale
            if _empty(new, y):
                stats["empty_certified"] += 1
                return "empty", None
        return "uncertain", None

    def visit(layer, unit, prefix, coeffs, rows_i, u, current, done):
        if unit == coeffs.shape[1]:
            pattern = np.asarray(current, dtype=np.int64)
            kmat = prefix @ through(on_off_i[layer], pattern.astype(object))
            patterns = [*done, pattern.astype(np.float64)]
            if layer + 1 == n_hidden:
                leaf(kmat, patterns, u)
            else:
                visit(layer + 1, 0, kmat, basis @ kmat, rows_i, u, [], patterns)
            return
        c = coeffs[:, unit]
        if all(v == 0 for v in c):  # z ≡ 0 on this region: on/off give the same map
            visit(layer, unit + 1, prefix, coeffs, rows_i, u, [*current, 0], done)
            return
        for sign in (1, -1):
            if layer == 0 and full_rank:  # first-layer signs are independent coordinates
                v = (np.zeros(n1) if u is None else u.copy())
                v[unit] = float(sign)
                status = "exists"
            else:
                status, v = child(rows_i, u, c, sign)
            if status == "empty":
                continue
            new_rows = [*rows_i, [sign * x for x in c]]
            visit(layer, unit + 1, prefix, coeffs, new_rows, v, [*current, int(sign > 0)], done)

    eye = np.eye(n1, dtype=np.int64).astype(object)
    visit(0, 0, eye, basis, [], np.zeros(basis.shape[0]), [], [])
    return best[True], best[False], stats
