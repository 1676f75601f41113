"""Shared pieces of the verifiers: the result type, errors, norms and the network convention.

Network convention (flax ``(in, out)`` layout, x a row vector, biases ignored)::

    f(x) = σ(… σ(σ(x @ W1) @ W2) …) @ W_L

Biases do not enter LipSDP or LiPopt (their bounds hold for every choice of biases).
:func:`~liplax.verify.exact_lipschitz` computes the constant of the bias-free network, which is
also a lower bound on the constant of the network with any biases (it is the limit of
f(t·x)/t as t → ∞, and Lipschitz constants do not increase under pointwise limits).
"""

from __future__ import annotations

import importlib
import math
import sys
from typing import Any, NamedTuple

import numpy as np

from liplax._checks import check_p
from liplax.guarantee import Bound, gamma
from liplax.verify.adapters import weights_from_list

EXTRA_HINT = "pip install 'liplax[verify]'"


def require(module: str):
    """Import an optional dependency of ``liplax.verify`` or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"liplax.verify needs the optional dependency {module!r}, part of the 'verify' extra: "
            f"{EXTRA_HINT}"
        ) from e


class SolverError(RuntimeError):
    """A solver did not reach optimality (the message carries its status); no bound is given."""


class TooLarge(ValueError):
    """The network is too large for the requested computation; the message says what it needs."""


class VerifierResult(NamedTuple):
    """A verifier's answer.

    Attributes:
      bound: the Lipschitz constant with its guarantee (``upper`` for LipSDP/LiPopt, ``exact``
        for :func:`~liplax.verify.exact_lipschitz`); ``bound.value`` is a float64 NumPy scalar.
      status: the solver's final status (``"optimal"``).
      details: solver figures (times, problem sizes, multipliers, witnesses).
    """

    bound: Bound
    status: str
    details: dict[str, Any]

    def __float__(self) -> float:
        return float(self.bound.value)


def as_bound(value: float, kind: str) -> Bound:
    return Bound(np.asarray(value, dtype=np.float64), kind)


def induced_norm(m: np.ndarray, p: float) -> float:
    """The p→p norm of x ↦ x @ m (x a row vector): ℓ∞ max column abs-sum, ℓ1 max row abs-sum."""
    if p == 2:
        return float(np.linalg.norm(m, 2))
    if p == math.inf:
        return float(np.max(np.sum(np.abs(m), axis=0)))
    return float(np.max(np.sum(np.abs(m), axis=1)))


def psd_sqrt(g: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semidefinite matrix (eigenvalues clipped at 0)."""
    lam, vec = np.linalg.eigh(g)
    return (vec * np.sqrt(np.clip(lam, 0.0, None))) @ vec.T


def spectral_norm_upper(m: np.ndarray) -> float:
    """σ₁(m) from the eigenvalues of the smaller Gram matrix, rounded up past float64 error.

    m is first divided by a power of two 2^e near max|m_ij| (exact), so the Gram matrix neither
    underflows (1e-200 entries) nor overflows (1e200); σ₁(m) = 2^e·σ₁(m/2^e). λ_max of a
    symmetric matrix is computed with absolute error ≲ n·u·‖G‖ = n·u·σ₁², and forming the Gram
    adds k·u·σ₁² (k the inner dimension): a relative margin of 4·(n+k)·u covers both; the
    square root and the final scaling add ≤ 2u, covered by one more 4u. Entries so small that
    m/2^e is subnormal lose ≤ 2^-1022 relative to max|m| each, far inside the margin.
    """
    big = float(np.max(np.abs(m))) if m.size else 0.0
    if big == 0.0 or not math.isfinite(big):
        return big
    e = math.frexp(big)[1]
    m = np.ldexp(m, -e)
    g = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    lam = float(np.linalg.eigvalsh(g)[-1])
    u = np.finfo(np.float64).eps / 2
    return _round_up_product([math.sqrt(max(lam, 0.0) * (1.0 + 4.0 * sum(m.shape) * u))],
                             4.0 * u, exponent=e)


def induced_norm_upper(m: np.ndarray, p: float) -> float:
    """:func:`induced_norm` for p = 1 or ∞ rounded up past its summation error.

    The abs-sums have n = m.shape[0] (ℓ∞, columns) or m.shape[1] (ℓ1, rows) non-negative
    terms: whatever the order NumPy adds them in, the computed sum ŝ ≥ (1 − γ_{n−1})·s
    (Higham, *Accuracy and Stability*, §4.2), so s ≤ ŝ·(1 + 2γ_{n−1}) once rounded up."""
    n = m.shape[0] if p == math.inf else m.shape[1]
    return _round_up_product([induced_norm(m, p)], 2.0 * gamma(max(n - 1, 1), np.float64))


def _round_up_product(factors, margin: float, *, exponent: int = 0) -> float:
    """Π factors · (1 + margin) · 2^exponent in float64, rounded up past its own arithmetic.

    Mantissas and exponents are multiplied and added separately (math.frexp/ldexp, exact), so
    no partial product under- or overflows; each of the L products and the margin's product
    round by ≤ u, covered by a further 2(L + 1)u. A non-zero result below the smallest normal
    number is that number; one past the largest finite number is inf; exactly 0 only when a
    factor is 0; NaN for a NaN factor or 0·inf."""
    factors = [float(f) for f in factors]
    if any(math.isnan(f) for f in factors):
        return math.nan
    if any(math.isinf(f) for f in factors):
        return math.nan if 0.0 in factors else math.inf
    if 0.0 in factors:
        return 0.0
    u = np.finfo(np.float64).eps / 2
    mant, expo = 1.0, exponent
    for f in factors:
        fm, fe = math.frexp(f)
        mant, me = math.frexp(mant * fm)
        expo += fe + me
    mant *= 1.0 + margin + 2.0 * (len(factors) + 1) * u
    try:
        value = math.ldexp(mant, expo)
    except OverflowError:
        return math.inf
    return max(value, sys.float_info.min)


def trivial_bound(weights, *, p: float | str = 2) -> Bound:
    """Π_l ‖W_l‖_{p→p}: the product of the layers' norms (activations 1-Lipschitz).

    Valid for ReLU, |·| and CReLU activations in every p-norm (each is 1-Lipschitz for ℓ1, ℓ2
    and ℓ∞). Guarantee: ``upper``, rounding included: every factor is rounded up past its own
    float64 error (:func:`spectral_norm_upper` for ℓ2, :func:`induced_norm_upper` for the n-term
    abs-sums of ℓ1/ℓ∞) and their product past its multiplications (:func:`_round_up_product`:
    no partial product under- or overflows, never 0 unless a layer is 0, inf past the range).
    Computed in float64 NumPy; see ``liplax.bounds`` for the bound of an NNX model inside JAX.
    """
    p = check_p(p, "trivial_bound")
    ws = weights_from_list(weights)
    if p == 2:
        factors = [spectral_norm_upper(w) for w in ws]
    else:
        factors = [induced_norm_upper(w, p) for w in ws]
    return as_bound(_round_up_product(factors, 0.0), "upper")
