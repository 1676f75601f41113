r"""Lipschitz constants of the composite activations, each with its proof.

All are c = sup_s |φ'(s)| (mean value theorem), the best constant.

- ``softplus`` log(1 + e^s): φ' = σ(s) ∈ (0, 1): c = 1. ``log_sigmoid`` = −softplus(−s): 1.
- ``soft_sign`` s/(1 + |s|): φ' = 1/(1 + |s|)² ≤ 1: c = 1.
- ``elu`` (α): φ' = 1 for s > 0, αe^s for s < 0, |αe^s| ≤ |α|: c = max(1, |α|).
  ``leaky_relu`` (a): slopes 1 and a: c = max(1, |a|). ``selu`` = λ·elu(·, α₀) with the fixed
  λ ≈ 1.0507, α₀ ≈ 1.6733: c = λα₀ (rounded up). ``celu`` (α > 0): φ' = e^{s/α} ≤ 1 for s ≤ 0:
  c = 1 (α ≤ 0: not Lipschitz, inf). ``hard_tanh``: slopes 0 and 1: c = 1.
  ``hard_silu`` s·relu6(s + 3)/6: φ' = (2s + 3)/6 on (−3, 3), 0 below, 1 above: c = 3/2.
- ``gelu`` (exact) s·Φ(s), ``gelu`` (tanh form) s·(1 + tanh(√(2/π)(s + 0.044715 s³)))/2 and
  ``silu`` s·σ(s) all have the form φ = s·S(s) with S non-decreasing, 0 ≤ S ≤ 1, so
  φ' = S(s) + s·S'(s) and |φ'| ≤ S(s) + |s|·S'(s). On an interval [a, b]:
  S(s) ≤ S(b) and |s|·S'(s) ≤ max(|a|, |b|)·W(a, b), W an upper bound of S' on [a, b] built from
  monotone pieces (Φ' = φ and σ' = 1/(4cosh²(s/2)) decrease in |s|; for the tanh form
  S' = c(1 + 3as²)sech²(u(s))/2 with the polynomial increasing and sech²(u) decreasing in |s|).
  :func:`sup_derivative` takes the maximum of these interval bounds over a grid of [−R, R]
  (R = 12, 96 000 intervals) in float64, relative slack 1e-9 for the float64 evaluation; for
  |s| ≥ R, |φ'| ≤ 1 + |s|S'(s) ≤ 1 + 1e-20 (each |s|S'(s) decreases for |s| ≥ 1 and is tiny at
  R), below the interior maximum. The results (≈ 1.1290, 1.1297 and 1.0999) are tested against a
  float64 search of max|φ'| (tests/test_traced.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

_R, _N = 12.0, 96_000
_C = math.sqrt(2.0 / math.pi)
_A = 0.044715
SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def _gelu_parts(a, b, m, big):
    return special.ndtr(b), np.exp(-0.5 * m * m) / math.sqrt(2.0 * math.pi)


def _gelu_tanh_parts(a, b, m, big):
    u = lambda s: _C * (s + _A * s**3)  # noqa: E731
    s_b = 0.5 * (1.0 + np.tanh(u(b)))
    w = _C * (1.0 + 3.0 * _A * big * big) / 2.0 / np.cosh(u(m)) ** 2
    return s_b, w


def _silu_parts(a, b, m, big):
    return special.expit(b), 1.0 / (4.0 * np.cosh(m / 2.0) ** 2)


_PARTS = {"gelu": _gelu_parts, "gelu_tanh": _gelu_tanh_parts, "silu": _silu_parts}


@functools.cache
def sup_derivative(name: str) -> float:
    """A rigorous upper bound on sup|φ'| for φ = s·S(s) (see the module docstring)."""
    edges = np.linspace(-_R, _R, _N + 1)
    a, b = edges[:-1], edges[1:]
    m = np.where((a <= 0) & (b >= 0), 0.0, np.minimum(np.abs(a), np.abs(b)))
    big = np.maximum(np.abs(a), np.abs(b))
    s_b, w = _PARTS[name](a, b, m, big)
    interior = float(np.max(s_b + big * w))
    return max(interior, 1.0 + 1e-20) * (1.0 + 1e-9)


def elu_constant(alpha):
    """max(1, |α|)."""
    import jax.numpy as jnp

    return jnp.maximum(1.0, jnp.abs(alpha))


def celu_constant(alpha):
    """1 for α > 0, inf otherwise (e^{s/α} is unbounded for s ≤ 0 when α < 0)."""
    import jax.numpy as jnp

    return jnp.where(alpha > 0, 1.0, jnp.inf)
