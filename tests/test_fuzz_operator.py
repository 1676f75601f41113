"""Fuzz: ``ConvOperator.transpose`` (the HWIO adjoint convolution) against ``jax.linear_transpose``
of the layer, and the adjoint identity, over values and scales (subnormal products to near
overflow) on a fixed set of shapes (each compiled once).

Properties (``tests/test_operator_adjoint.py`` gives the tolerance):
- ``adjoint_matches_reference``: |Aᵀy − ref(y)| ≤ 2γ_T·(|A|ᵀ|y|) + 2T·tiny elementwise;
- ``adjoint_identity``: |⟨Ax, y⟩ − ⟨x, Aᵀy⟩| ≤ the rounding of both inner products, computed in
  float64 from the float32 results.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from liplax.guarantee import gamma
from liplax.norms import ConvOperator
from tests.test_operator_adjoint import reference_transpose

SHAPES = [  # (kernel, input, strides, padding): one zero-padded, one circular, one aliased
    ((3, 3, 2, 3), (5, 6), 2, "SAME"),
    ((2, 3, 3, 2), (4, 5), (1, 2), "CIRCULAR"),
    ((4, 3, 1, 2), (3, 2), 1, "CIRCULAR"),
    ((3, 2, 2, 2), (4, 4), (2, 1), ((4, 0), (1, 3))),
]
TINY = float(jnp.finfo(jnp.float32).tiny)


@functools.cache
def _fns(i: int):
    kshape, hw, strides, padding = SHAPES[i]
    op = ConvOperator(np.zeros(kshape, np.float32), hw, strides, padding)

    def both(k, x, y):
        o = op.replace(k)
        abs_adj = reference_transpose(jnp.abs(k), jnp.abs(y)[None], o)[0]
        return o.transpose(y), reference_transpose(k, y[None], o)[0], abs_adj, o.apply(x)

    return op, jax.jit(both)


def _draw(data, shape, exponent: int) -> np.ndarray:
    n = int(np.prod(shape))
    vals = data.draw(st.lists(st.floats(-4.0, 4.0, width=32), min_size=n, max_size=n))
    return (np.asarray(vals, np.float32) * np.float32(2.0**exponent)).reshape(shape)


def _case(data):
    i = data.draw(st.integers(0, len(SHAPES) - 1))
    op, fn = _fns(i)
    # kernel and vector scales: products from subnormal (2^-150) up to 2^110 (sums stay finite)
    ek = data.draw(st.integers(-75, 55))
    ey = data.draw(st.integers(-75, 55))
    k = _draw(data, SHAPES[i][0], ek)
    x = _draw(data, op.in_shape, ey)
    y = _draw(data, op.out_shape, ey)
    return op, k, x, y, fn(k, x, y)


@given(st.data())
def test_adjoint_matches_reference(data):
    op, k, _, y, (got, want, abs_adj, _) = _case(data)
    kh, kw, _, cout = k.shape
    terms = kh * kw * cout
    tol = 2 * gamma(terms, jnp.float32) * np.asarray(abs_adj, np.float64) + 2 * terms * TINY
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert np.all(err <= tol), (float(np.max(err - tol)), op)


@given(st.data())
def test_adjoint_identity(data):
    op, k, x, y, (got, _, abs_adj, ax) = _case(data)
    kh, kw, cin, cout = k.shape
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    lhs = float(np.sum(np.asarray(ax, np.float64) * y64))
    rhs = float(np.sum(x64 * np.asarray(got, np.float64)))
    # |fl(Ax) − Ax| ≤ γ_{kh·kw·in}|A||x| (+ underflow), likewise for Aᵀy; both pair with the
    # other vector in float64 (exact enough: 2^-53 relative per term).
    scale = float(np.sum(np.abs(x64) * np.asarray(abs_adj, np.float64)))
    g = gamma(kh * kw * max(cin, cout), jnp.float32) + 4 * 2.0**-53 * x.size
    under = 2 * kh * kw * max(cin, cout) * TINY * (np.sum(np.abs(x64)) + np.sum(np.abs(y64)))
    assert abs(lhs - rhs) <= 2 * g * scale + under, (lhs, rhs, op)
