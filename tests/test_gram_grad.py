"""The closed-form gradient of the Gram bound (liplax.norms.gram_vjp) against reverse mode.

The reference is the implementation before it: the same value differentiated by JAX through
every Gram step (``reference_path`` swaps the custom rules out). Checked in
float64: the value is bit for bit the same, the gradient agrees to 1e-9 relative on dense
matrices and convolutions (circular, zero padding, strides, in ≠ out, aliasing, the materialized
small-input path), matches central finite differences, and passes jit, vmap and grad of vmap;
the backward pass costs a fraction of the forward pass (counted in matmul flops of the jaxpr);
a zero kernel gets a zero gradient and a non-finite one a NaN gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import bounds
from liplax.norms import ConvOperator, DenseOperator, gram, gram_vjp

RNG = np.random.default_rng(20261216)

# (name, kernel or matrix shape, operator kwargs or None for a dense matrix)
CASES = [
    ("dense-tall", (7, 4), None),
    ("dense-wide", (3, 6), None),
    ("circular", (3, 3, 3, 4), dict(input_shape=(6, 6), strides=1, padding="CIRCULAR")),
    ("circular-s2-in>out", (3, 3, 5, 2), dict(input_shape=(8, 6), strides=2, padding="CIRCULAR")),
    ("circular-s2-nodiv", (3, 3, 2, 2), dict(input_shape=(5, 5), strides=2, padding="CIRCULAR")),
    ("circular-aliased", (5, 4, 2, 3), dict(input_shape=(3, 3), strides=1, padding="CIRCULAR")),
    ("circular-1x1", (1, 1, 3, 2), dict(input_shape=(4, 4), strides=1, padding="CIRCULAR")),
    ("same-small-dense-path", (3, 3, 2, 3), dict(input_shape=(5, 5), strides=1, padding="SAME")),
    ("same-large", (3, 3, 4, 3), dict(input_shape=(20, 20), strides=1, padding="SAME")),
    ("valid-s2", (3, 2, 3, 2), dict(input_shape=(9, 8), strides=(2, 1), padding="VALID")),
    ("explicit", (2, 3, 2, 4), dict(input_shape=(24, 23), strides=(1, 2),
                                    padding=((1, 2), (0, 1)))),
]


def make_op(x, kw):
    return DenseOperator(x) if kw is None else ConvOperator(x, **kw)


reference_path = gram_vjp.reverse_mode_reference  # gram_bound as it was


def bound_fn(kw, num_iters=6):
    return lambda x: gram.gram_bound(make_op(x, kw), num_iters=num_iters).value


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


DEFAULT = ("dense-tall", "circular-s2-in>out")  # the rest (and the penalty) in make test-slow


@pytest.mark.parametrize(
    "name,shape,kw",
    [c if c[0] in DEFAULT else pytest.param(*c, marks=pytest.mark.slow) for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_value_bit_identical_and_gradient_equals_reverse_mode(name, shape, kw):
    """Also Euler's identity: the bound is 1-homogeneous in the weights (its margins are
    constants), so ⟨∇b, x⟩ = b up to the DFT error (≈1e-15 relative here)."""
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.standard_normal(shape))
        f = bound_fn(kw)
        value, grad = jax.jit(jax.value_and_grad(f))(x)
        plain = jax.jit(f)(x)
        with reference_path():
            g = bound_fn(kw)  # a new function: traced again under the reference path
            ref_value, ref_grad = jax.jit(jax.value_and_grad(g))(x)
        assert float(value) == float(plain) == float(ref_value)
        assert _rel(grad, ref_grad) <= 1e-9, name
        assert float(jnp.vdot(grad, x)) == pytest.approx(float(value), rel=1e-12), name


@pytest.mark.parametrize("name,shape,kw",
                         [CASES[0], pytest.param(*CASES[3], marks=pytest.mark.slow)],
                         ids=[CASES[i][0] for i in (0, 3)])
def test_gradient_matches_central_differences(name, shape, kw):
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.standard_normal(shape))
        f = jax.jit(bound_fn(kw))
        grad = jax.jit(jax.grad(bound_fn(kw)))(x)
        for _ in range(3):
            d = jnp.asarray(RNG.standard_normal(shape))
            h = 1e-6
            fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
            assert float(jnp.vdot(grad, d)) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_gram_iteration_complex_batch_gradient():
    """gram_iteration of a batch of complex matrices: d/d(Re, Im) against reverse mode."""
    with jax.enable_x64(True):
        re, im = (jnp.asarray(RNG.standard_normal((3, 6, 4))) for _ in range(2))
        ct = jnp.asarray([0.5, -1.0, 2.0])

        def f(re, im):
            return jnp.vdot(ct, gram.gram_iteration(lax_complex(re, im), 4))

        grads = jax.jit(jax.grad(f, argnums=(0, 1)))(re, im)
        with reference_path():
            ref = jax.jit(jax.grad(lambda a, b: f(a, b), argnums=(0, 1)))(re, im)
        for a, b in zip(grads, ref, strict=True):
            assert _rel(a, b) <= 1e-9


def lax_complex(re, im):
    return jax.lax.complex(re, im)


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_forward_mode_equals_reverse_mode():
    """The rules are custom JVPs: jax.jvp (and jacfwd) work and agree with the gradient."""
    with jax.enable_x64(True):
        for _, shape, kw in (CASES[0], CASES[3]):
            x, d = (jnp.asarray(RNG.standard_normal(shape)) for _ in range(2))
            f = bound_fn(kw, num_iters=3)
            tangent = jax.jit(lambda x, d, f=f: jax.jvp(f, (x,), (d,))[1])(x, d)
            assert float(tangent) == pytest.approx(float(jnp.vdot(jax.grad(f)(x), d)), rel=1e-12)


def test_jit_vmap_and_grad_of_vmap():
    with jax.enable_x64(True):
        kw = dict(input_shape=(4, 6), strides=(1, 2), padding="CIRCULAR")
        xs = jnp.asarray(RNG.standard_normal((3, 2, 3, 2, 3)))
        f = bound_fn(kw, num_iters=3)
        grad = jax.jit(jax.grad(f))
        one_by_one = jnp.stack([grad(x) for x in xs])
        vmapped = jax.jit(jax.vmap(jax.grad(f)))(xs)
        of_vmap = jax.jit(jax.grad(lambda xs: jnp.sum(jax.vmap(f)(xs))))(xs)
        assert _rel(vmapped, one_by_one) <= 1e-12
        assert _rel(of_vmap, one_by_one) <= 1e-12


@pytest.mark.parametrize("name,shape,kw",
                         [pytest.param(*CASES[0], marks=pytest.mark.slow), CASES[2]],
                         ids=[CASES[i][0] for i in (0, 2)])
def test_zero_gives_zero_gradient_and_nonfinite_gives_nan(name, shape, kw):
    f = jax.jit(jax.grad(bound_fn(kw)))
    zero = f(jnp.zeros(shape, jnp.float32))
    assert bool(jnp.all(zero == 0))
    x = jnp.asarray(RNG.standard_normal(shape), jnp.float32)
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        assert bool(jnp.all(jnp.isnan(f(x.at[(0,) * len(shape)].set(bad))))), bad
    assert bool(jnp.all(jnp.isfinite(f(x))))


def _dot_flops(jaxpr) -> float:
    """Multiply-adds ×2 of every dot_general in a jaxpr, scan bodies times their length."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs_contract = eqn.params["dimension_numbers"][0][0]
            lhs = eqn.invars[0].aval.shape
            k = math.prod(lhs[d] for d in lhs_contract)
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, tuple | list) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += times * _dot_flops(inner)
    return total


FLOP_CASES = [
    ((32, 16), None, 2.1),
    ((3, 3, 16, 16), dict(input_shape=(8, 8), strides=1, padding="CIRCULAR"), 1.15),
    ((3, 3, 8, 8), dict(input_shape=(24, 24), strides=1, padding="SAME"), 1.15),
]


@pytest.mark.parametrize("shape,kw,limit", FLOP_CASES, ids=["dense", "circular", "same"])
def test_backward_costs_a_fraction_of_the_forward(shape, kw, limit):
    """Reverse mode through T steps costs 2T products after the forward pass's T (value and
    gradient ≈ 3× the value alone). The closed form costs T products (dense: ≈ 2×), and for a
    convolution T steps and T products of ONE frequency matrix (≈ 1.1× at 16 channels)."""
    x = jnp.zeros(shape, jnp.float32)
    f = bound_fn(kw)
    fwd = _dot_flops(jax.make_jaxpr(f)(x).jaxpr)
    both = _dot_flops(jax.make_jaxpr(jax.value_and_grad(f))(x).jaxpr)
    assert both <= limit * fwd, both / fwd


@pytest.mark.slow
def test_penalty_gradient_of_a_zero_padded_cnn():
    """The certified ℓ2 penalty of a CNN uses the Gram bound of its zero-padded convolution."""
    with jax.enable_x64(True):
        model = ln.Sequential(
            ln.Conv(2, 4, 3, input_size=(6, 6), padding="SAME", rngs=nnx.Rngs(3),
                    param_dtype=jnp.float64),
            ln.MaxMin(), ln.Flatten(), ln.Dense(144, 2, rngs=nnx.Rngs(4), param_dtype=jnp.float64),
        )
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        shape = (6, 6, 2)

        def make():
            def pen(params):
                m = nnx.merge(graphdef, params, rest)
                return bounds.trivial_bound_penalty(m, shape, fast=False)
            return jax.jit(jax.value_and_grad(pen))

        value, grads = make()(params)
        with reference_path():
            ref_value, ref_grads = make()(params)
        assert float(value) == float(ref_value)
        conv_grad = jax.tree.leaves(grads)
        for a, b in zip(conv_grad, jax.tree.leaves(ref_grads), strict=True):
            assert _rel(a, b) <= 1e-9
