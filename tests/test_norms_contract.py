"""The contract of every norm routine of ``liplax.norms`` on every operator family it accepts.

For each routine in ``norms.ROUTINES`` and each operator (dense maps and convolutions with every
padding kind, strides that divide the input and strides that do not, aliased circular taps):

- the returned ``Bound.kind`` is the one the routine declares (``routine.guarantee[family]``);
- ``upper``/``exact`` values are ≥ the float64 truth of ``op.materialize()`` (SVD for ℓ2, max
  abs-sums for ℓ∞/ℓ1) with no tolerance below for ``upper`` and the documented rounding margin
  (``guarantee.exact_margin``) for ``exact``; an ``estimate`` is ≤ truth·(1 + 64u);
- ``jax.jit`` and ``jax.vmap`` (over a stacked batch of operators) agree with the eager call
  (one operator per kind in the default suite, every operator in ``make test-slow``);
- a routine that cannot give its kind for an operator refuses it with a clear error.

And for every operator: ``transpose`` is the adjoint (⟨Ax, y⟩ = ⟨x, Aᵀy⟩ in float64),
``materialize()`` is the independent NumPy reference matrix (tests/reference.py) and maps x to
``apply(x)``, and operators pass through ``jit``/``vmap`` as pytrees.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tests.reference as ref
from liplax import norms
from liplax.guarantee import Bound, exact_margin, unit_roundoff
from liplax.norms import ConvOperator, DenseOperator, exact, gram, induced, power

RNG = np.random.default_rng(20261201)
KEY = jax.random.key(7)


def _kernel(shape) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[:3]))).astype(np.float32)


# (name, constructor on a float array, parameter array): small shapes, each compiled once.
OPERATORS = {
    "dense-tall": (DenseOperator, (RNG.standard_normal((5, 3)) / 2).astype(np.float32), {}),
    "dense-wide": (DenseOperator, (RNG.standard_normal((3, 5)) / 2).astype(np.float32), {}),
    "conv-same": (ConvOperator, _kernel((3, 3, 2, 3)),
                  dict(input_shape=(5, 5), strides=1, padding="SAME")),
    "conv-valid-s2": (ConvOperator, _kernel((3, 3, 2, 3)),
                      dict(input_shape=(6, 6), strides=2, padding="VALID")),
    "conv-explicit": (ConvOperator, _kernel((2, 3, 3, 2)),
                      dict(input_shape=(5, 4), strides=(1, 2), padding=((1, 2), (0, 1)))),
    "conv-circular": (ConvOperator, _kernel((3, 3, 2, 3)),
                      dict(input_shape=(4, 4), strides=1, padding="CIRCULAR")),
    "conv-circular-s2": (ConvOperator, _kernel((3, 3, 3, 2)),
                         dict(input_shape=(6, 6), strides=2, padding="CIRCULAR")),
    "conv-circular-s2-nodiv": (ConvOperator, _kernel((3, 3, 2, 2)),
                               dict(input_shape=(5, 5), strides=2, padding="CIRCULAR")),
    "conv-circular-aliased": (ConvOperator, _kernel((5, 5, 1, 2)),
                              dict(input_shape=(3, 3), strides=1, padding="CIRCULAR")),
}


def make(name: str, dtype=np.float32):
    cls, array, kw = OPERATORS[name]
    return cls(jnp.asarray(array, dtype), **kw)


def accepts(routine, op) -> bool:
    """Whether ``routine`` can give its declared kind for ``op`` (else it must refuse)."""
    if op.family not in routine.guarantee:
        return False
    if routine is norms.spectral_norm and isinstance(op, ConvOperator):
        divides = all(n % s == 0 for n, s in zip(op.input_hw, op.strides, strict=True))
        return op.circular and divides
    return True


def call(routine, op):
    """The routine's Bound (power iteration: with a fixed key, its first output)."""
    if routine is norms.power_iteration:
        return routine(op, num_iters=200, key=KEY)[0]
    return routine(op)


def truth(routine, name: str) -> float:
    """The float64 truth from the float64 operator's materialized matrix M (x ↦ x @ M)."""
    with jax.enable_x64(True):
        m = np.asarray(make(name, np.float64).materialize(), np.float64)
    if routine is norms.norm_inf:  # A = Mᵀ acting on columns: max row abs-sum of A
        return float(np.abs(m).sum(axis=0).max())
    if routine is norms.norm_1:
        return float(np.abs(m).sum(axis=1).max())
    return float(np.linalg.svd(m, compute_uv=False)[0])


CASES = [(r, n) for r in norms.ROUTINES for n in OPERATORS]


def test_routines_are_every_declared_routine():
    """A new routine with a @guarantee in the package is covered here without further edits."""
    found = {
        f for mod in (exact, gram, induced, power) for f in vars(mod).values()
        if callable(f) and hasattr(f, "guarantee")
    }
    assert found == set(norms.ROUTINES)
    for routine in norms.ROUTINES:
        assert set(routine.guarantee) <= {"dense", "conv"}, routine.__name__
        assert next(iter(inspect.signature(routine).parameters)) == "op"


@pytest.mark.parametrize("routine,name", CASES, ids=[f"{r.__name__}-{n}" for r, n in CASES])
def test_routine_contract(routine, name):
    op = make(name)
    if not accepts(routine, op):
        with pytest.raises(ValueError, match="op must be a circular|strides .* must divide"):
            call(routine, op)
        return
    out = call(routine, op)
    kind = routine.guarantee[op.family]
    assert isinstance(out, Bound) and out.kind == kind
    assert out.value.shape == () and out.value.dtype == jnp.float32
    v, t = float(out.value), truth(routine, name)
    u = unit_roundoff(np.float32)
    if kind == "upper":
        assert v >= t, f"UNSOUND {routine.__name__} {name}: {v!r} < truth {t!r}"
    elif kind == "exact":
        margin = exact_margin(np.float32)
        assert t * (1 - margin) <= v <= t * (1 + margin), (routine.__name__, name, v, t)
    else:
        assert v <= t * (1 + 64 * u), (routine.__name__, name, v, t)
        assert v >= t * (1 - 1e-3), (routine.__name__, name, v, t)  # 200 steps converge here


# jit and vmap compile each routine twice more; the default suite checks them on a dense and a
# zero-padded conv operator (test_conv.py's jit/vmap test covers the exact circular norm by
# default), `make test-slow` on every operator.
TRANSFORMED_BY_DEFAULT = ("dense-tall", "conv-same")
TRANSFORM_CASES = [
    pytest.param(r, n, id=f"{r.__name__}-{n}",
                 marks=() if n in TRANSFORMED_BY_DEFAULT else pytest.mark.slow)
    for r, n in CASES if accepts(r, make(n))
]


@pytest.mark.parametrize("routine,name", TRANSFORM_CASES)
def test_jit_and_vmap_agree_with_the_eager_call(routine, name):
    op = make(name)
    out = call(routine, op)
    v, kind, u = float(out.value), out.kind, unit_roundoff(np.float32)
    jitted = jax.jit(lambda o: call(routine, o))(op)
    assert jitted.kind == kind
    np.testing.assert_allclose(float(jitted.value), v, rtol=4 * 64 * u)

    batch = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a, -a]), op)
    vm = jax.vmap(lambda o: call(routine, o))(batch)
    assert vm.kind == kind and vm.value.shape == (3,)
    np.testing.assert_allclose(np.asarray(vm.value), [v, 0.5 * v, v], rtol=4 * 64 * u)


def _compilations(fn) -> int:
    """How many XLA programs ``fn()`` compiles (JAX's backend-compile events)."""
    seen = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        jax.block_until_ready(fn())
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(seen)


@pytest.mark.parametrize("routine", norms.ROUTINES, ids=lambda r: r.__name__)
def test_an_eager_call_is_one_compiled_program(routine):
    """Called on concrete arrays a routine compiles one program per shape (the guarantee
    wrapper's ``jax.jit``), not one per primitive as op-by-op execution would; a static
    argument (``num_iters``) selects a new program, a new array of the same shape does not."""
    w = RNG.standard_normal((11, 13)).astype(np.float32)  # a shape no other test compiles
    op = DenseOperator(jnp.asarray(w))
    kw = dict(key=KEY) if routine is norms.power_iteration else {}
    assert _compilations(lambda: routine(op, **kw)) <= 2  # the program (+ a key or a cast)
    assert _compilations(lambda: routine(DenseOperator(jnp.asarray(2 * w)), **kw)) == 0
    if "num_iters" in inspect.signature(routine).parameters:
        a = routine(op, num_iters=2, **kw)
        b = routine(op, num_iters=3, **kw)
        a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))
        assert float(a.value) != float(b.value)  # the static argument is honoured


@pytest.mark.parametrize("routine", norms.ROUTINES, ids=lambda r: r.__name__)
def test_routines_refuse_what_is_not_an_operator(routine):
    with pytest.raises(TypeError, match="op must be a liplax operator"):
        routine(np.ones((3, 3), np.float32))


@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_transpose_materialize_and_pytree(name):
    with jax.enable_x64(True):
        op = make(name, np.float64)
        m = np.asarray(op.materialize())
        assert m.dtype == np.float64
        d_in, d_out = int(np.prod(op.in_shape)), int(np.prod(op.out_shape))
        assert m.shape == (d_in, d_out)
        _, array, kw = OPERATORS[name]
        if isinstance(op, ConvOperator):  # the independent NumPy layer (column convention)
            want = ref.conv_operator(array.astype(np.float64), **kw).T
        else:
            want = array.astype(np.float64)
        np.testing.assert_allclose(m, want, rtol=0, atol=1e-12)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, *op.in_shape))
        y = rng.standard_normal((2, *op.out_shape))
        ax, aty = np.asarray(op.apply(x)), np.asarray(op.transpose(y))
        assert ax.shape == y.shape and aty.shape == x.shape
        np.testing.assert_allclose(ax.reshape(2, -1), x.reshape(2, -1) @ m, rtol=1e-12,
                                   atol=1e-12)
        lhs = np.sum(ax * y, axis=tuple(range(1, y.ndim)))
        rhs = np.sum(x * aty, axis=tuple(range(1, x.ndim)))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
        # a single example (no batch axis) is the batch of one
        np.testing.assert_allclose(np.asarray(op.apply(x[0])), ax[0], rtol=1e-14, atol=0)
        np.testing.assert_allclose(np.asarray(op.transpose(y[0])), aty[0], rtol=1e-14, atol=0)
    op = make(name)
    leaves, treedef = jax.tree.flatten(op)
    assert len(leaves) == 1 and leaves[0] is op.array
    again = jax.tree.unflatten(treedef, leaves)
    assert type(again) is type(op) and again.in_shape == op.in_shape
    assert again.out_shape == op.out_shape
    got = jax.jit(lambda o, x: o.apply(x))(op, jnp.ones(op.in_shape, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), np.asarray(op.apply(jnp.ones(op.in_shape))),
                               rtol=1e-6)


def test_conv_operator_resolves_its_arguments_once():
    op = ConvOperator(jnp.ones((3, 3, 2, 4)), (7, 6), strides=2, padding="SAME")
    assert op.strides == (2, 2) and op.pads == ((1, 1), (0, 1)) and op.out_shape == (4, 3, 4)
    circ = ConvOperator(jnp.ones((3, 3, 2, 4)), (7, 6), strides=(2, 3), padding="circular")
    assert circ.pads == "CIRCULAR" and circ.out_shape == (4, 2, 4)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        ConvOperator(jnp.ones((3, 3, 2, 4)), (7, 6), padding=((1, -1), (0, 0)))
    with pytest.raises(ValueError, match="x has 3 channels"):
        circ.apply(jnp.ones((7, 6, 3)))
    with pytest.raises(ValueError, match="y must have shape"):
        circ.transpose(jnp.ones((7, 6, 4)))
