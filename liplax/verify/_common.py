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
from typing import Any, NamedTuple

import numpy as np

from liplax.guarantee import Bound
from liplax.nn import check_p
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

    λ_max of a symmetric matrix is computed with absolute error ≲ n·u·‖G‖ = n·u·σ₁², and forming
    the Gram adds k·u·σ₁² (k the inner dimension): a relative margin of 4·(n+k)·u covers both.
    """
    g = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    lam = float(np.linalg.eigvalsh(g)[-1])
    u = np.finfo(np.float64).eps / 2
    return math.sqrt(max(lam, 0.0) * (1.0 + 4.0 * sum(m.shape) * u))


def trivial_bound(weights, *, p: float | str = 2) -> Bound:
    """Π_l ‖W_l‖_{p→p}: the product of the layers' norms (activations 1-Lipschitz).

    Valid for ReLU, |·| and CReLU activations in every p-norm (each is 1-Lipschitz for ℓ1, ℓ2
    and ℓ∞). Guarantee: ``upper`` (the ℓ2 factors are rounded up past float64 error). Computed
    in float64 NumPy; see ``liplax.bounds`` for the bound of an NNX model inside JAX.
    """
    p = check_p(p, "trivial_bound")
    ws = weights_from_list(weights)
    if p == 2:
        value = math.prod(spectral_norm_upper(w) for w in ws)
    else:
        value = math.prod(induced_norm(w, p) for w in ws)
    return as_bound(value, "upper")
