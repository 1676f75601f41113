"""``ConvOperator.transpose``: the adjoint convolution on an HWIO kernel, equal to the reference.

The adjoint is one ``lax.conv_general_dilated`` on the kernel flipped in space with its in/out
axes swapped, materialized in HWIO order (``docs/design.md §operators``). The reference is
``jax.linear_transpose`` of the layer written directly with ``lax.conv_general_dilated`` (and
``jnp.pad(mode="wrap")`` for circular padding), which reads the kernel in HWOI order: a layout
XLA's CPU backend runs several times slower than the layer. Checked here for every padding kind,
strides that divide the input and strides that do not, cin ≠ cout, kernels larger than the input
(aliased circular taps), explicit padding wider than the kernel, under ``jit``, ``vmap`` and
``grad``; and in float64 against the independent NumPy matrix (tests/reference.py).

Tolerance in float32: both sides compute each output as a sum of the same T = kh·kw·out products
in some order, so |got − ref| ≤ 2γ_T·(|A|ᵀ|y|) + 2T·tiny elementwise (Higham §3.1; ``tiny`` covers
products flushed to zero), with |A|ᵀ|y| the adjoint of the layer on |k| applied to |y|.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import tests.reference as ref
from liplax.guarantee import gamma
from liplax.norms import ConvOperator

DIMS = ("NHWC", "HWIO", "NHWC")

# (kernel (kh, kw, in, out), input (H, W), strides, padding): every padding kind, strides that
# divide and strides that do not, cin ≠ cout both ways, non-square kernels and inputs.
CASES = {
    "same": ((3, 3, 2, 3), (5, 5), 1, "SAME"),
    "same-s2-odd": ((3, 3, 3, 2), (7, 6), 2, "SAME"),
    "valid-s2": ((3, 3, 2, 3), (6, 7), 2, "VALID"),
    "valid-s3-uneven": ((2, 3, 3, 2), (8, 7), (3, 2), "VALID"),
    "explicit": ((2, 3, 3, 2), (5, 4), (1, 2), ((1, 2), (0, 1))),
    "explicit-wider-than-kernel": ((3, 2, 2, 3), (4, 5), (2, 1), ((5, 4), (3, 0))),
    "int-padding": ((3, 3, 1, 4), (4, 4), 2, 2),
    "one-by-one-s2": ((1, 1, 3, 2), (5, 5), 2, "VALID"),
    "circular": ((3, 3, 2, 3), (4, 4), 1, "CIRCULAR"),
    "circular-s2": ((3, 3, 3, 2), (6, 6), 2, "CIRCULAR"),
    "circular-s2-nodiv": ((4, 3, 2, 2), (5, 7), (2, 3), "CIRCULAR"),
    "circular-aliased": ((5, 4, 1, 2), (3, 2), 1, "CIRCULAR"),
}


def _case(name: str, dtype=np.float32, seed: int = 0):
    kshape, hw, strides, padding = CASES[name]
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal(kshape).astype(dtype)
    op = ConvOperator(kernel, hw, strides, padding)
    y = rng.standard_normal((2, *op.out_shape)).astype(dtype)
    return op, kernel, y


def reference_layer(kernel, x, op: ConvOperator):
    """The layer on a batch, written directly with ``lax`` (independent of liplax's helpers)."""
    kh, kw = kernel.shape[:2]
    if op.pads == "CIRCULAR":
        pads = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode="wrap")
        padding = ((0, 0), (0, 0))
    else:
        padding = op.pads
    return lax.conv_general_dilated(x, kernel, op.strides, padding, dimension_numbers=DIMS,
                                    precision=lax.Precision.HIGHEST)


def reference_transpose(kernel, y, op: ConvOperator):
    """``jax.linear_transpose`` of :func:`reference_layer`: the adjoint lax derives itself."""
    shape = jax.ShapeDtypeStruct((y.shape[0], *op.in_shape), y.dtype)
    return jax.linear_transpose(lambda x: reference_layer(kernel, x, op), shape)(y)[0]


def rounding_tolerance(kernel, y, op: ConvOperator) -> np.ndarray:
    """2γ_T·(|A|ᵀ|y|) + 2T·tiny elementwise, T = kh·kw·out (see the module docstring)."""
    kh, kw, _, cout = kernel.shape
    terms = kh * kw * cout
    dtype = jnp.asarray(kernel).dtype
    abs_adj = reference_transpose(jnp.abs(kernel), jnp.abs(y), op)
    g = float(gamma(terms, dtype))
    return 2.0 * g * np.asarray(abs_adj, np.float64) + 2.0 * terms * float(jnp.finfo(dtype).tiny)


def _conv_rhs_specs(jaxpr) -> list[tuple[int, ...]]:
    specs = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            specs.append(tuple(eqn.params["dimension_numbers"].rhs_spec))
        for param in eqn.params.values():  # nested jaxprs (pjit, custom rules)
            sub = getattr(param, "jaxpr", param)
            if hasattr(sub, "eqns"):
                specs += _conv_rhs_specs(sub)
    return specs


@pytest.mark.parametrize("name", ["same", "valid-s2", "explicit", "circular", "circular-s2"])
def test_adjoint_reads_its_kernel_in_hwio_order(name):
    # The slow path of the old code: linear_transpose's convolution reads the kernel with its
    # in/out axes swapped (rhs_spec (2, 3, 0, 1), HWOI), which XLA's CPU backend does not hand to
    # its fast convolution; the adjoint must convolve with an HWIO kernel (rhs_spec (3, 2, 0, 1)).
    op, _, y = _case(name)
    jaxpr = jax.make_jaxpr(op.transpose)(jnp.asarray(y))
    specs = _conv_rhs_specs(jaxpr.jaxpr)
    assert specs == [(3, 2, 0, 1)], specs


@pytest.mark.parametrize("name", list(CASES))
def test_transpose_equals_linear_transpose_of_the_layer(name):
    op, kernel, y = _case(name)
    got = np.asarray(op.transpose(y), np.float64)
    want = np.asarray(reference_transpose(jnp.asarray(kernel), jnp.asarray(y), op), np.float64)
    assert got.shape == want.shape == (2, *op.in_shape)
    tol = rounding_tolerance(kernel, y, op)
    assert np.all(np.abs(got - want) <= tol), np.max(np.abs(got - want) - tol)
    # jit of the operator as a pytree, and a single example (no batch axis)
    jitted = np.asarray(jax.jit(lambda o, v: o.transpose(v))(op, y), np.float64)
    assert np.all(np.abs(jitted - want) <= tol)
    np.testing.assert_array_equal(np.asarray(op.transpose(y[1])), np.asarray(op.transpose(y))[1])


@pytest.mark.parametrize("name", list(CASES))
def test_transpose_is_the_float64_matrix_transpose(name):
    with jax.enable_x64(True):
        op, kernel, y = _case(name, np.float64, seed=3)
        kshape, hw, strides, padding = CASES[name]
        m = ref.conv_operator(kernel, hw, strides, padding)  # (d_out, d_in), column convention
        got = np.asarray(op.transpose(y)).reshape(2, -1)
        want = y.reshape(2, -1) @ m
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["circular-s2-nodiv", "explicit-wider-than-kernel"])
def test_transpose_under_vmap_and_grad_matches_the_reference(name):
    op, kernel, y = _case(name)
    kshape, hw, strides, padding = CASES[name]
    rng = np.random.default_rng(5)
    kernels = rng.standard_normal((3, *kshape)).astype(np.float32)
    ys = rng.standard_normal((3, *op.out_shape)).astype(np.float32)

    def fast(k, v):
        return ConvOperator(k, hw, strides, padding).transpose(v)

    def slow(k, v):
        return reference_transpose(k, v[None], op)[0]

    got = np.asarray(jax.vmap(fast)(kernels, ys), np.float64)
    for i in range(3):
        want = np.asarray(slow(jnp.asarray(kernels[i]), jnp.asarray(ys[i])), np.float64)
        tol = rounding_tolerance(kernels[i], ys[i][None], op)[0]
        assert np.all(np.abs(got[i] - want) <= tol)
    # the gradient with respect to the kernel of ⟨w, Aᵀy⟩ = ⟨Aw, y⟩: the same bilinear form
    w = jnp.asarray(rng.standard_normal(op.in_shape).astype(np.float32))
    g_fast = jax.grad(lambda k: jnp.sum(w * fast(k, jnp.asarray(y[0]))))(jnp.asarray(kernel))
    g_slow = jax.grad(lambda k: jnp.sum(w * slow(k, jnp.asarray(y[0]))))(jnp.asarray(kernel))
    scale = float(jnp.max(jnp.abs(g_slow)))
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_slow), rtol=0,
                               atol=64 * float(jnp.finfo(jnp.float32).eps) * scale)
    # and with respect to y: the gradient of a linear map is the map itself
    g_y = jax.grad(lambda v: jnp.sum(w * fast(jnp.asarray(kernel), v)))(jnp.asarray(y[0]))
    np.testing.assert_allclose(np.asarray(g_y), np.asarray(op.apply(w)), rtol=1e-5, atol=1e-5)

