"""Fuzzed contract of the operator-level norm routines (``liplax.norms``) and of the operators.

The operators are those of tests/test_norms_contract.py (fixed shapes, so each routine compiles
once per operator); hypothesis varies the values: the seed, the scale (1e-30 … 1e30) and a
random set of zeroed entries. Per draw, against the float64 matrix of the float32 parameters
(the NumPy reference for convolutions, w itself for dense maps):

- every routine that accepts the operator returns its declared kind; ``upper`` is ≥ the truth
  (no tolerance), ``exact`` within ``guarantee.exact_margin``, ``estimate`` ≤ truth·(1 + 64u);
- ``transpose`` is the adjoint in float32 up to the rounding of the two inner products:
  |⟨Ax, y⟩ − ⟨x, Aᵀy⟩| ≤ 4(d_in + d_out)·u·|x|ᵀ|M||y|.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import tests.reference as ref
from liplax import norms
from liplax.guarantee import exact_margin, unit_roundoff
from liplax.norms import ConvOperator
from tests.test_norms_contract import OPERATORS, accepts, call, make

U = unit_roundoff(np.float32)
SCALES = [1e-30, 1e-3, 1.0, 1e3, 1e30]


@functools.cache
def _base(name: str):
    return make(name)


@functools.cache
def _routine(routine, name: str):
    base = _base(name)
    return jax.jit(lambda a: call(routine, base.replace(a)))


@functools.cache
def _adjoint(name: str):
    base = _base(name)

    def inner(a, x, y):
        op = base.replace(a)
        return jnp.vdot(op.apply(x), y), jnp.vdot(x, op.transpose(y))

    return jax.jit(inner)


def _matrix(name: str, array: np.ndarray) -> np.ndarray:
    """M (in, out) with x ↦ x @ M, in float64, from the float32 parameters."""
    _, _, kw = OPERATORS[name]
    a64 = array.astype(np.float64)
    if isinstance(_base(name), ConvOperator):
        return ref.conv_operator(a64, **kw).T
    return a64


def _draw(name: str, seed: int, scale: float, zero_frac: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = OPERATORS[name][1].shape
    a = rng.standard_normal(shape) * scale
    a[rng.random(shape) < zero_frac] = 0.0
    return a.astype(np.float32)


def _truth(routine, m: np.ndarray) -> float:
    if routine is norms.norm_inf:
        return float(np.abs(m).sum(axis=0).max())
    if routine is norms.norm_1:
        return float(np.abs(m).sum(axis=1).max())
    return float(np.linalg.svd(m, compute_uv=False)[0])


DRAW = dict(
    name=st.sampled_from(sorted(OPERATORS)),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from(SCALES),
    zero_frac=st.sampled_from([0.0, 0.3, 0.9]),
)


@given(**DRAW)
def test_every_routine_keeps_its_declared_kind_and_guarantee(name, seed, scale, zero_frac):
    array = _draw(name, seed, scale, zero_frac)
    m = _matrix(name, array)
    for routine in norms.ROUTINES:
        if not accepts(routine, _base(name)):
            continue
        out = _routine(routine, name)(jnp.asarray(array))
        kind = routine.guarantee[_base(name).family]
        assert out.kind == kind
        v, t = float(out.value), _truth(routine, m)
        what = (routine.__name__, name, seed, scale, zero_frac, v, t)
        if kind == "upper":
            assert v >= t, what
        elif kind == "exact":
            margin = exact_margin(np.float32)
            assert t * (1 - margin) <= v <= t * (1 + margin), what
        else:
            assert v <= t * (1 + 64 * U), what


@given(**DRAW)
def test_transpose_is_the_adjoint(name, seed, scale, zero_frac):
    array = _draw(name, seed, scale, zero_frac)
    base = _base(name)
    rng = np.random.default_rng(seed ^ 0x5EED)
    x = rng.standard_normal(base.in_shape).astype(np.float32)
    y = rng.standard_normal(base.out_shape).astype(np.float32)
    lhs, rhs = _adjoint(name)(jnp.asarray(array), jnp.asarray(x), jnp.asarray(y))
    m = _matrix(name, array)
    s = np.abs(x.reshape(-1)) @ np.abs(m) @ np.abs(y.reshape(-1))
    d = m.shape[0] + m.shape[1]
    exact = x.reshape(-1).astype(np.float64) @ m @ y.reshape(-1).astype(np.float64)
    if not np.isfinite(s) or s > 1e36:  # products beyond float32's range: not this property
        return
    tol = 4 * d * U * s + 1e-37
    assert abs(float(lhs) - exact) <= tol and abs(float(rhs) - exact) <= tol, (
        name, seed, scale, float(lhs), float(rhs), exact, tol)
