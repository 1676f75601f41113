"""Scale-free form of a bias-free ReLU/|·|/CReLU network for :mod:`liplax.verify.exact`.

**Per-unit normalization.** σ ∈ {ReLU, |·|, CReLU} is positively homogeneous, σ(c·z) = c·σ(z)
for c > 0, so scaling column k of W_l by 1/c and the row(s) it feeds in W_{l+1} by c gives the
same function. Every hidden column is scaled so that its largest entry lies in [1/2, 1), the
last matrix so that its largest entry does, and the constant is that of the normalized network
times 2^E. All factors are powers of two, so the normalized network is exactly the given one
(each rescaled entry is checked to round-trip): no threshold below depends on how the layers
are scaled. A column of zeros is a dead unit (σ(0) = 0 whatever x is) and is removed exactly.

**Exact arithmetic.** Every float64 is a dyadic rational, so a matrix is an integer matrix
times 2^−K. :func:`as_ints` gives that integer matrix (Python ints, any size): products of
such matrices are exact, which lets the region search decide signs of pre-activations, and
prove regions empty, without rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Derivative of each output component of σ(z) on z > 0 and on z < 0 (CReLU has two components,
# concatenated on the feature axis: (relu(z), relu(−z))).
_DERIVATIVES = {
    "relu": ((1,), (0,)),
    "abs": ((1,), (-1,)),
    "crelu": ((1, 0), (0, -1)),
}


def on_off_maps(weights: list[np.ndarray], activation: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each hidden layer, the next weight seen through σ' when a unit is on / off (n × n')."""
    on, off = _DERIVATIVES[activation]
    out = []
    for w, nxt in zip(weights[:-1], weights[1:], strict=True):
        n = w.shape[1]
        blocks = [nxt[c * n : (c + 1) * n] for c in range(len(on))]
        out.append((sum(r * b for r, b in zip(on, blocks, strict=True)),
                    sum(r * b for r, b in zip(off, blocks, strict=True))))
    return out


def through(on_off: tuple[np.ndarray, np.ndarray], pattern: np.ndarray) -> np.ndarray:
    e_on, e_off = on_off
    return e_off + pattern[:, None] * (e_on - e_off)


class Normalized(NamedTuple):
    weights: list[np.ndarray]  # the normalized network (dead units removed)
    exponent: int  # the constant of the given network is 2^exponent times this one's
    live: list[np.ndarray]  # per hidden layer: indices of the kept (live) units


def _exponent(x: np.ndarray) -> np.ndarray:
    """e with |x| ∈ [2^(e−1), 2^e) for x ≠ 0 (NumPy's frexp exponent), an int64 array."""
    return np.frexp(x)[1].astype(np.int64)


def _shift(w: np.ndarray, shifts: np.ndarray, what: str) -> np.ndarray:
    """w · 2^shifts entrywise, refused unless exact (no entry under- or overflows)."""
    out = np.ldexp(w, shifts)
    if not np.array_equal(np.ldexp(out, -shifts), w) or not np.all(np.isfinite(out)):
        raise ValueError(
            f"exact_lipschitz: {what} spans too many orders of magnitude to be rescaled exactly "
            "in float64 (an entry would under- or overflow after moving the unit scales)"
        )
    return out


def normalize(weights: list[np.ndarray], activation: str) -> Normalized:
    """The per-unit normalized network (see module docstring); exact or a ValueError."""
    reps = 2 if activation == "crelu" else 1
    ws = [w.copy() for w in weights]
    live = []
    row_exp = np.zeros(ws[0].shape[0], dtype=np.int64)  # rows of W_l carry 2^row_exp
    for layer in range(len(ws)):
        w = ws[layer]
        mags = np.where(w != 0, _exponent(w) + row_exp[:, None], np.iinfo(np.int64).min)
        if layer == len(ws) - 1:
            top = int(mags.max()) if np.any(w != 0) else 0
            ws[layer] = _shift(w, row_exp[:, None] - top, f"weights[{layer}]")
            return Normalized(ws, top, live)
        keep = np.flatnonzero(np.any(w != 0, axis=0))
        live.append(keep)
        col_exp = mags[:, keep].max(axis=0)
        ws[layer] = _shift(w[:, keep], row_exp[:, None] - col_exp[None, :], f"weights[{layer}]")
        n = w.shape[1]
        rows = np.concatenate([keep + c * n for c in range(reps)])
        ws[layer + 1] = ws[layer + 1][rows]
        row_exp = np.tile(col_exp, reps)
    raise AssertionError("unreachable")  # pragma: no cover


def as_ints(m: np.ndarray) -> tuple[np.ndarray, int]:
    """(A, K) with m = A · 2^−K exactly, A an object array of Python ints."""
    flat = m.reshape(-1)
    ratios = [float(v).as_integer_ratio() for v in flat]
    k = max((d.bit_length() - 1 for _, d in ratios), default=0)
    ints = np.empty(flat.size, dtype=object)
    ints[:] = [n << (k - d.bit_length() + 1) for n, d in ratios]
    return ints.reshape(m.shape), k


def to_float(a: np.ndarray, k: int) -> np.ndarray:
    """a · 2^−k correctly rounded to float64 (Python's int / int is correctly rounded)."""
    den = 1 << k
    out = np.empty(a.shape, dtype=np.float64)
    out.reshape(-1)[:] = [int(v) / den for v in a.reshape(-1)]
    return out


def row_direction(row: np.ndarray) -> np.ndarray:
    """A float64 vector along an exact integer row, of unit ℓ2 norm (for an LP's conditioning)."""
    bits = max(int(abs(v)).bit_length() for v in row)
    out = to_float(row, max(bits - 1, 0))
    return out / np.linalg.norm(out)


def full_column_rank(w: np.ndarray) -> bool:
    """True only if w (float64, n0 × n1) provably has rank n1 (x ↦ x @ w is onto R^n1).

    The computed singular values are those of w + E with ‖E‖₂ ≤ c·max(n0, n1)·u·‖w‖₂ (backward
    stability of the SVD); σ_min computed above 100× that bound proves σ_min(w) > 0 (Weyl).
    """
    n0, n1 = w.shape
    if n1 > n0:
        return False
    s = np.linalg.svd(w, compute_uv=False)
    return bool(s[-1] > 100.0 * max(n0, n1) * np.finfo(np.float64).eps * s[0])


def signs_match(ints: list[tuple[np.ndarray, int]], x: np.ndarray, patterns, activation: str):
    """Whether x lies in the region of ``patterns``: every pre-activation of the (integer)
    network at x, computed exactly, is > 0 where the pattern is 1 and ≤ 0 where it is 0 (= 0
    only for units that vanish on the whole region, which the search records as 0)."""
    h, _ = as_ints(np.asarray(x, dtype=np.float64))
    for (w, _), d in zip(ints[:-1], patterns, strict=True):
        z = h @ w
        if any((v > 0) != bool(di) or (v < 0 and di) for v, di in zip(z, d, strict=True)):
            return False
        relu = [max(v, 0) for v in z]
        h = np.array({"relu": relu, "abs": [abs(v) for v in z],
                      "crelu": relu + [max(-v, 0) for v in z]}[activation], dtype=object)
    return True
