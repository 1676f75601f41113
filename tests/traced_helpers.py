"""Float64 references for the traced bound: the Jacobian's induced norm, computed in x64."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def jacobian64(f, x) -> np.ndarray:
    """The Jacobian of ``f`` at ``x`` in float64 (parameters promoted), as an (out, in) matrix."""
    x = np.asarray(x, np.float64)
    with jax.enable_x64(True):
        jac = jax.jacfwd(f)(jnp.asarray(x, jnp.float64))
        jac = np.asarray(jac, np.float64)
    n_in = x.size
    return jac.reshape(-1, n_in)


def induced_norm(m: np.ndarray, p) -> float:
    """‖M‖_p for y = M x (rows: outputs): SVD for p = 2, max column / row abs sum for 1 / ∞."""
    if m.size == 0:
        return 0.0
    if p == 2:
        return float(np.linalg.svd(m, compute_uv=False)[0])
    if p == 1:
        return float(np.abs(m).sum(axis=0).max())
    return float(np.abs(m).sum(axis=1).max())


def jac_norm(f, x, p) -> float:
    """‖J_f(x)‖_p in float64: a lower bound on the Lipschitz constant of f."""
    return induced_norm(jacobian64(f, x), p)


def max_jac_norm(f, xs, p) -> float:
    return max(jac_norm(f, x, p) for x in xs)


PS = (1, 2, math.inf)
