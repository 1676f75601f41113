"""LiPopt (Latorre, Rolland, Cevher 2020): an LP upper bound on the ℓ∞ (or ℓ1) Lipschitz constant.

For f(x) = σ(… σ(x @ W1) …) @ W_L with activations whose derivative lies in [0, 1] (ReLU, tanh,
sigmoid, ...), the ℓ∞→ℓ∞ constant is at most max_j max_{t ∈ [−1,1]^d, s_l ∈ [0,1]^{n_l}} of the
*norm-gradient polynomial*

    p_j(t, s) = Σ_{i, k_1, …} t_i W1[i,k_1] s_1[k_1] W2[k_1,k_2] ⋯ s_{L−1}[k_{L−1}] W_L[k_{L−1}, j],

the derivative of output j along t at any point, with the activation slopes relaxed to boxes.
With t = 2τ − 1 every variable lives in [0, 1], and the maximum over the box is bounded by an LP:
the Sherali–Adams / Krivine–Handelman relaxation of degree k, whose constraints are the
linearized products Π_{v∈S} x_v^{a_v} (1 − x_v)^{1−a_v} ≥ 0 over sets S of k variables (each
monomial x^T replaced by a variable y_T, y_∅ = 1). Its LP dual is a certificate
γ − p = Σ λ_{S,a} Π(·) with λ ≥ 0 (Handelman), so the LP value bounds max p. Degree k must be at
least L, the degree of p; for one hidden layer degree 2 is McCormick's relaxation of t_i·s_k.

**Sparsity.** With ``sparse=True`` the products are restricted to the maximal cliques of a chordal
extension (minimum-degree elimination) of the graph joining variables that share a monomial of
p_j, i.e. the connections through non-zero weights (correlative sparsity). This is a subset of
the dense hierarchy's products, so its value is never below the dense one, but it is much
smaller: for 784-20-10 at degree 2, 16k products per output instead of 323k.

ℓ1→ℓ1 is the ℓ∞→ℓ∞ constant of the transposed network (W_Lᵀ, …, W1ᵀ), and is computed that way.

**Soundness.** The bound returned for each output is e_∅ + Σ_{T≠∅} max(e_T, 0), where
e = coefficients of p + Σ λ·products with λ ≥ 0 the LP's dual values: p ≤ p + Σλ·products = Σ_T
e_T x^T on the box, whatever the solver's accuracy; a float64 rounding margin is added.
Guarantee: ``upper``.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from liplax._checks import check_p
from liplax.verify._common import SolverError, TooLarge, VerifierResult, as_bound, require
from liplax.verify.adapters import check_chain, weights_from_list

require("scipy")
from scipy import optimize, sparse  # noqa: E402

_MAX_PATHS = 20_000_000


def _path_tensor(weights: list[np.ndarray], j: int) -> np.ndarray:
    """c[i, k1, …, k_{L−1}] = W1[i,k1] W2[k1,k2] ⋯ W_L[k_{L−1}, j]: the coefficients of p_j."""
    c = weights[0]
    for w in weights[1:-1]:
        c = c[..., None] * w
    return c * weights[-1][:, j]


def _edges(c: np.ndarray, offsets: list[int]) -> dict[int, set[int]]:
    """Adjacency of the variables sharing a monomial of p_j (a path through non-zero weights)."""
    mag = np.abs(c)
    adj: dict[int, set[int]] = {}
    for a, b in itertools.combinations(range(c.ndim), 2):
        other = tuple(ax for ax in range(c.ndim) if ax not in (a, b))
        ia, ib = np.nonzero(mag.sum(axis=other) > 0)
        for u, v in zip((ia + offsets[a]).tolist(), (ib + offsets[b]).tolist(), strict=True):
            adj.setdefault(u, set()).add(v)
            adj.setdefault(v, set()).add(u)
    return adj


def _chordal_cliques(adj: dict[int, set[int]]) -> list[list[int]]:
    """Maximal cliques of a chordal extension of the graph, by minimum-degree elimination.

    Eliminating v makes its remaining neighbours a clique; {v} ∪ N(v) is a clique of the
    extension, maximal unless it lies inside the clique of an earlier-eliminated vertex.
    """
    adj = {v: set(n) for v, n in adj.items()}
    within: dict[int, list[int]] = {v: [] for v in adj}  # earlier cliques holding v
    cliques: list[frozenset[int]] = []
    maximal: list[bool] = []
    while adj:
        v = min(adj, key=lambda u: (len(adj[u]), u))
        nbrs = adj.pop(v)
        clique = frozenset(nbrs | {v})
        maximal.append(not any(clique <= cliques[i] for i in within[v]))
        for u in nbrs:
            within[u].append(len(cliques))
            adj[u] |= nbrs - {u}
            adj[u].discard(v)
        cliques.append(clique)
    return [sorted(c) for c, keep in zip(cliques, maximal, strict=True) if keep]


def _product_sets(
    cliques: list[list[int]], degree: int, max_rows: int, hint: str
) -> list[np.ndarray]:
    """The distinct variable sets of the products, grouped by size (arrays (count, size))."""
    estimate = sum(math.comb(len(c), degree) << degree if len(c) > degree else 1 << len(c)
                   for c in cliques)
    if estimate > 8 * max_rows:
        raise TooLarge(
            f"lipopt: degree {degree} needs up to {estimate:,} product constraints per output "
            f"(cliques of sizes up to {max(map(len, cliques))}), above max_rows={max_rows:,}; "
            f"{hint}"
        )
    groups: dict[int, list[np.ndarray]] = {}
    for c in cliques:
        arr = np.asarray(c, dtype=np.int64)
        if len(c) <= degree:
            groups.setdefault(len(c), []).append(arr[None])
        else:
            comb = np.asarray(list(itertools.combinations(range(len(c)), degree)), np.int64)
            groups.setdefault(degree, []).append(arr[comb])
    return [np.unique(np.concatenate(g), axis=0) for _, g in sorted(groups.items())]


def _subset_table(q: int):
    """All (a, b, ±1) with a ⊆ b ⊆ {0..q−1} as bit masks: Π_{a} x Π_{S∖a} (1−x) = Σ_{b⊇a} ±x^b."""
    rows = [(a, b, (-1) ** (bin(b).count("1") - bin(a).count("1")))
            for a in range(1 << q) for b in range(1 << q) if a & b == a]
    return (np.asarray([r[i] for r in rows]) for i in range(3))


def _monomial_keys(rows: np.ndarray, base: int) -> np.ndarray:
    keys = np.zeros(rows.shape[0], dtype=np.int64)
    for col in range(rows.shape[1]):
        keys = keys * base + rows[:, col]
    return keys


def _padded_subsets(sets: np.ndarray, width: int, sentinel: int) -> np.ndarray:
    """(count, 2^q, width): for every set and mask b, the sorted subset, padded with sentinel."""
    count, q = sets.shape
    out = np.full((count, 1 << q, width), sentinel, dtype=np.int64)
    for b in range(1 << q):
        cols = [i for i in range(q) if b >> i & 1]
        out[:, b, : len(cols)] = sets[:, cols]
    return out


def _solve_output(weights, j, degree, use_sparsity, max_rows):
    c = _path_tensor(weights, j)
    widths = list(c.shape)
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    n_vars = int(sum(widths))
    adj = _edges(c, offsets)
    if not adj:
        return 0.0, {"rows": 0, "monomials": 0, "lp_value": 0.0}
    cliques = _chordal_cliques(adj) if use_sparsity else [sorted(adj)]
    hint = "lower the degree or raise max_rows" + ("" if use_sparsity else ", or use sparse=True")
    groups = _product_sets(cliques, degree, max_rows, hint)
    n_rows = sum(g.shape[0] << g.shape[1] for g in groups)
    if n_rows > max_rows:
        raise TooLarge(
            f"lipopt: degree {degree} needs {n_rows:,} product constraints for output {j}, "
            f"above max_rows={max_rows:,}; {hint}"
        )
    sentinel, width = n_vars, degree
    base = n_vars + 1
    if base ** width >= 2**62:
        raise TooLarge(f"lipopt: {n_vars} variables at degree {degree} overflow monomial keys")
    padded = [_padded_subsets(g, width, sentinel) for g in groups]
    keys = [_monomial_keys(s.reshape(-1, width), base).reshape(s.shape[:2]) for s in padded]
    all_keys, inverse = np.unique(np.concatenate([k.ravel() for k in keys]), return_inverse=True)
    n_mono = all_keys.size
    const = int(np.searchsorted(all_keys, _monomial_keys(np.full((1, width), sentinel), base)[0]))
    # Constraint matrix: one row per (set, sign mask a), entries ±1 on the monomials b ⊇ a.
    r_idx, c_idx, vals = [], [], []
    row0, pos = 0, 0
    for g, k in zip(groups, keys, strict=True):
        count, q = g.shape
        ids = inverse[pos : pos + k.size].reshape(k.shape)
        pos += k.size
        a, b, sign = _subset_table(q)
        set_idx = np.arange(count)[:, None]
        r_idx.append((row0 + set_idx * (1 << q) + a[None]).ravel())
        c_idx.append(ids[:, b].ravel())
        vals.append(np.broadcast_to(sign, (count, sign.size)).ravel().astype(np.float64))
        row0 += count << q
    mat = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(r_idx), np.concatenate(c_idx))),
        shape=(row0, n_mono),
    )
    # Objective: p_j = Σ c·(2τ_i − 1)·Π s = Σ 2c·τ_i Π s − Σ_i c·Π s.
    obj = np.zeros(n_mono)
    nz = np.nonzero(c)
    with_t = np.stack([idx + off for idx, off in zip(nz, offsets, strict=True)], axis=1)
    without_t = c.sum(axis=0)
    nz0 = np.nonzero(without_t)
    rest = np.stack([idx + off for idx, off in zip(nz0, offsets[1:], strict=True)], axis=1)
    for rows_, coef in ((with_t, 2.0 * c[nz]), (rest, -without_t[nz0])):
        pad = np.full((rows_.shape[0], width), sentinel, dtype=np.int64)
        pad[:, : rows_.shape[1]] = rows_
        where = np.searchsorted(all_keys, _monomial_keys(pad, base))
        if not np.all(all_keys[np.minimum(where, n_mono - 1)] == _monomial_keys(pad, base)):
            raise RuntimeError("lipopt: a monomial of the objective is missing from the LP")
        np.add.at(obj, where, coef)
    free = np.ones(n_mono, dtype=bool)
    free[const] = False
    a_free = mat[:, free]
    res = optimize.linprog(
        -obj[free],
        A_ub=-a_free,
        b_ub=mat[:, const].toarray().ravel(),
        bounds=(None, None),
        method="highs-ipm",  # interior point + crossover: ~8x faster than simplex here
    )
    if res.status != 0:
        raise SolverError(f"lipopt: LP for output {j} has status {res.status} ({res.message})")
    lam = np.clip(-np.asarray(res.ineqlin.marginals), 0.0, None)
    e = obj + mat.T @ lam  # coefficients of p + Σ λ·products, monomial by monomial
    e_const = e[const]
    e[const] = 0.0
    value = e_const + np.sum(np.clip(e, 0.0, None))
    # Rounding: each e_T sums at most k terms (k = most rows touching one monomial), the value
    # sums n_mono numbers: |error| ≤ γ_{k + n_mono} · (Σ |terms| + Σ |e_T|).
    terms = float((abs(mat).T @ lam + np.abs(obj)).sum()) + float(np.abs(e).sum())
    k = int(mat.getnnz(axis=0).max()) + n_mono + 2
    margin = 1.01 * k * np.finfo(np.float64).eps * terms
    info = {"rows": row0, "monomials": n_mono, "cliques": len(cliques), "lp_value": -res.fun}
    return float(value + margin), info


def lipopt(
    weights,
    *,
    degree: int = 2,
    p: float | str = "inf",
    sparse: bool = True,
    max_rows: int = 1_000_000,
) -> VerifierResult:
    """LiPopt upper bound on the ℓ∞ (or ℓ1) Lipschitz constant (see module docstring).

    Args:
      weights: ``[W1, …, W_L]`` in flax ``(in, out)`` layout; activations with derivative in
        [0, 1] (ReLU, tanh, sigmoid, ...); biases play no role.
      degree: the hierarchy's degree k ≥ L (the number of weight matrices).
      p: ``"inf"`` (ℓ∞→ℓ∞) or ``1`` (ℓ1→ℓ1, through the transposed network).
      sparse: restrict products to the cliques of the weights' sparsity graph (see above).
      max_rows: refuse (:class:`TooLarge`) an LP with more product constraints than this.

    Returns:
      :class:`VerifierResult` with an ``upper`` bound: the largest certified value over the
      outputs. Outputs whose |W|-path bound (1ᵀ|W1|⋯|W_L|)_j cannot exceed the best value so far
      are skipped (``details["skipped"]``), since that path bound already bounds them.

    Raises:
      SolverError: an LP did not reach optimality (status in the message).
      TooLarge: the LP would exceed ``max_rows``.
    """
    p = check_p(p, "lipopt")
    if p == 2:
        raise ValueError("lipopt bounds the ℓ∞ and ℓ1 constants (p='inf' or 1); use lipsdp for ℓ2")
    ws = weights_from_list(weights)
    check_chain(ws, "relu")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < len(ws):
        raise ValueError(
            f"degree must be an int ≥ {len(ws)} (the number of weight matrices: the "
            f"norm-gradient polynomial has that degree), got {degree!r}"
        )
    if p == 1:
        ws = [w.T for w in reversed(ws)]
    caps = np.abs(ws[0]).sum(axis=0)
    for w in ws[1:]:
        caps = caps @ np.abs(w)
    paths = ws[0].shape[0] * math.prod(w.shape[1] for w in ws[:-1])
    if paths > _MAX_PATHS:
        raise TooLarge(
            f"lipopt: the polynomial has {paths:,} path monomials per output, above "
            f"{_MAX_PATHS:,}"
        )
    t0 = time.perf_counter()
    best, per_output, skipped, sizes = 0.0, {}, [], {}
    for j in np.argsort(-caps, kind="stable").tolist():
        if caps[j] * (1.0 + 1e-12) <= best:
            skipped.append(j)
            continue
        value, info = _solve_output(ws, j, degree, sparse, max_rows)
        per_output[j], sizes[j] = value, info
        best = max(best, value)
    details = {
        "per_output": per_output,
        "skipped": skipped,
        "lp_sizes": sizes,
        "degree": degree,
        "sparse": sparse,
        "time_s": time.perf_counter() - t0,
    }
    return VerifierResult(as_bound(best, "upper"), "optimal", details)
