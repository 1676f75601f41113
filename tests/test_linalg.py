"""liplax.linalg against the float64 NumPy reference (SVD / explicit abs-sums are the truth).

Contract: matrices follow flax's ``nnx.Linear`` layout ``(in, out)``; the layer is ``x @ w``, so
the operator acting on column vectors is ``w.T``. ``norm_inf`` is the induced l_inf norm of that
layer (max over outputs of the abs-sum over inputs = max abs-sum of a column of ``w``) and
``norm_1`` the induced l_1 norm (max abs-sum of a row of ``w``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax import linalg
from tests import reference as ref
from tests._helpers import (
    DTYPES,
    as_float,
    assert_exact,
    assert_upper,
    cast,
    check_result_dtype,
    jitted,
    names_argument,
    precision,
    seed_of,
    split_slow,
    value,
)

KEY = jax.random.key(0)  # cold starts: the contract takes a key (reproducible runs)

SHAPES = [(1, 1), (1, 5), (5, 1), (3, 7), (7, 3), (16, 16), (64, 10), (10, 64), (2, 50)]


def _matrix(shape, dtype, seed=0, kind="gaussian"):
    rng = np.random.default_rng(seed_of(shape, dtype, seed, kind))
    w = rng.standard_normal(shape)
    if kind == "rank1":
        w = np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1]))
    elif kind == "gap":  # well separated top singular value
        u, _, vt = np.linalg.svd(w, full_matrices=False)
        s = np.linspace(1.0, 0.1, min(shape))
        s[0] = 2.0
        w = (u * s) @ vt
    return cast(w, dtype)


def _truth(w) -> float:
    return ref.spectral_norm_truth(ref.dense_operator(w))


def _schatten(w, p: float) -> float:
    s = ref.singular_values(ref.dense_operator(w))
    s = s / s[0]
    return float(ref.singular_values(ref.dense_operator(w))[0] * np.sum(s**p) ** (1.0 / p))


# ---------------------------------------------------------------------------------------------
# Values against the truth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,dtype",
    split_slow(
        [((1, 1), "float32"), ((7, 3), "float64"), ((10, 64), "float32"), ((1, 5), "float64")]
        + [(shape, dt) for shape in SHAPES for dt in DTYPES],
        4,
    ),
)
def test_spectral_norm_exact(shape, dtype):
    w = _matrix(shape, dtype)
    with precision(dtype):
        out = linalg.spectral_norm(w)
        check_result_dtype(out, dtype)
        assert_exact(as_float(out, "exact"), _truth(w), dtype, f"spectral_norm {shape} {dtype}")


GRAM_CASES = [
    ((7, 3), "gaussian", "float32"),
    ((10, 64), "gaussian", "float64"),
    ((1, 1), "gaussian", "float32"),
    ((16, 16), "rank1", "float32"),
    ((1, 5), "gap", "float64"),
    ((64, 10), "gaussian", "float32"),
    # slow from here
    *[(shape, "gaussian", dt) for shape in SHAPES for dt in DTYPES],
    *[
        (shape, kind, dt)
        for shape in ((7, 3), (16, 16), (1, 5), (10, 64))
        for kind in ("rank1", "gap")
        for dt in DTYPES
    ],
]


@pytest.mark.parametrize("shape,kind,dtype", split_slow(GRAM_CASES, 4))
def test_gram_bound_sound_and_is_the_schatten_norm(shape, kind, dtype):
    """gram_bound(num_iters=T) is ≥ the truth (no tolerance below) for every T, and (Gram iteration,
    design §norms) no larger than the Schatten 2^(T+1) norm up to a small rounding margin."""
    w = _matrix(shape, dtype, kind=kind)
    truth = _truth(w)
    margin = 1e-3 if dtype == "float32" else 1e-9
    gb = jitted(linalg.gram_bound)
    with precision(dtype):
        previous = math.inf
        for t in (1, 6, 10):
            out = gb(w, num_iters=t)
            check_result_dtype(out, dtype)
            b = as_float(out, "upper")
            assert_upper(b, truth, f"gram_bound {shape} {dtype} {kind} num_iters={t}")
            schatten = _schatten(w, 2.0 ** (t + 1))
            assert b <= schatten * (1 + margin), (
                f"gram_bound {shape} {dtype} {kind} num_iters={t}: {b} > Schatten-2^{t + 1} "
                f"norm {schatten} (+{margin})"
            )
            assert b <= previous * (1 + margin), f"not non-increasing in num_iters at t={t}"
            previous = b
            if t == 6:
                # min(m, n)^(1/128): the default 6 iterations are within 4% of σ1 for rank ≤ 64.
                assert b <= truth * min(shape) ** (2.0**-7) * (1 + margin)


@pytest.mark.parametrize("dtype", split_slow(["float32", "float64"], 1))
def test_gram_bound_plain_call_default_iterations(dtype):
    w = _matrix((9, 4), dtype)
    with precision(dtype):
        plain = as_float(linalg.gram_bound(w), "upper")
        six = as_float(jitted(linalg.gram_bound)(w, num_iters=6))
    assert plain == pytest.approx(six, rel=1e-6)
    assert_upper(plain, _truth(w), "gram_bound plain call")


PI_CASES = [((7, 3), "float32"), ((10, 64), "float64"), ((1, 1), "float32"), ((1, 5), "float64")]
PI_CASES += [(shape, dt) for shape in SHAPES for dt in DTYPES if (shape, dt) not in PI_CASES]


@pytest.mark.parametrize("shape,dtype", split_slow(PI_CASES, 4))
def test_power_iteration_estimate_from_below_and_converges(shape, dtype):
    w = _matrix(shape, dtype)
    truth = _truth(w)
    pi = jitted(linalg.power_iteration)
    with precision(dtype):
        for n in (5,):
            est, u = pi(w, num_iters=n, key=KEY)
            check_result_dtype(est, dtype)
            e = as_float(est, "estimate")
            assert math.isfinite(e) and e > 0
            assert e <= truth * (1 + 1e-5), f"estimate {e} above truth {truth} (n={n})"
        est, _ = pi(w, num_iters=500, key=KEY)
        e = as_float(est, "estimate")
        assert truth * 0.99 <= e <= truth * (1 + 1e-5)


def test_power_iteration_plain_call_default_iterations():
    w = _matrix((9, 4), "float32")
    est, u = linalg.power_iteration(w, key=KEY)
    assert 0 < as_float(est, "estimate") <= _truth(w) * (1 + 1e-5)
    assert np.all(np.isfinite(np.asarray(value(u))))


@pytest.mark.parametrize("dtype", split_slow(["float32", "float64"], 1))
def test_power_iteration_warm_start(dtype):
    # Singular values 1, 0.95, 0.9, ...: a cold start with few iterations is visibly off.
    rng = np.random.default_rng(7)
    u0, _ = np.linalg.qr(rng.standard_normal((40, 30)))
    v0, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    s = 0.95 ** np.arange(30)
    w = cast((u0 * s) @ v0.T, dtype)
    truth = _truth(w)
    pi = jitted(linalg.power_iteration)
    with precision(dtype):
        cold, _ = pi(w, num_iters=3, key=KEY)
        cold = as_float(cold)
        _, state = pi(w, num_iters=400, key=KEY)
        warm, state2 = pi(w, state, num_iters=3)
        warm = as_float(warm)
        assert np.shape(value(state2)) == np.shape(value(state))
        assert abs(warm - truth) <= 1e-5 * truth, (warm, truth)
        assert abs(warm - truth) < abs(cold - truth), (warm, cold, truth)
        # keyword form
        warm_kw, _ = pi(w, u=state, num_iters=3)
        assert as_float(warm_kw) == pytest.approx(warm, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_iteration_key_gives_a_valid_start(dtype):
    w = _matrix((12, 9), dtype)
    truth = _truth(w)
    with precision(dtype):
        for seed in range(3):
            est, _ = jitted(linalg.power_iteration)(w, num_iters=300, key=jax.random.key(seed))
            assert truth * 0.99 <= as_float(est) <= truth * (1 + 1e-5)


@pytest.mark.parametrize(
    "shape,dtype",
    split_slow(
        [((7, 3), "float32"), ((1, 5), "float64"), ((64, 10), "float32"), ((5, 1), "float64")]
        + [(shape, dt) for shape in SHAPES for dt in DTYPES],
        4,
    ),
)
def test_norm_inf_and_norm_1_exact(shape, dtype):
    w = _matrix(shape, dtype)
    op = ref.dense_operator(w)  # acts on column vectors: y = wᵀ x
    with precision(dtype):
        ninf, n1 = linalg.norm_inf(w), linalg.norm_1(w)
        check_result_dtype(ninf, dtype)
        check_result_dtype(n1, dtype)
        assert_exact(as_float(ninf, "exact"), ref.linf_truth(op), dtype, f"norm_inf {shape}")
        assert_exact(as_float(n1, "exact"), ref.l1_truth(op), dtype, f"norm_1 {shape}")


def test_norm_inf_layout_is_in_out():
    # w (in=2, out=3): the layer x @ w. Output j sums |w[:, j]|. Column sums: 1+10, 2+20, 3+30.
    w = np.array([[1.0, -2.0, 3.0], [10.0, 20.0, -30.0]], np.float32)
    assert as_float(linalg.norm_inf(w)) == pytest.approx(33.0)  # max column abs-sum
    assert as_float(linalg.norm_1(w)) == pytest.approx(60.0)  # max row abs-sum
    x = np.array([1.0, -1.0], np.float32)  # ||x||_inf = 1, ||x @ w||_inf = 33
    assert np.abs(x @ w).max() == pytest.approx(33.0)


# ---------------------------------------------------------------------------------------------
# Gradients (float64)
# ---------------------------------------------------------------------------------------------


def _fd_directional(f, w, d, h=1e-6):
    return (float(f(w + h * d)) - float(f(w - h * d))) / (2 * h)


@pytest.mark.parametrize(
    "name,shape",
    split_slow(
        [
            ("gram_bound", (5, 3)),
            ("spectral_norm", (3, 5)),
            ("gram_bound", (1, 4)),
            ("spectral_norm", (8, 8)),
            ("gram_bound", (3, 5)),
            ("gram_bound", (8, 8)),
            ("spectral_norm", (5, 3)),
            ("spectral_norm", (1, 4)),
        ],
        2,
    ),
)
def test_gradients_match_finite_differences(name, shape):
    fn = getattr(linalg, name)
    with jax.enable_x64(True):
        w = _matrix(shape, "float64", kind="gap")

        def f(x):
            return value(fn(x))

        g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(w)))
        assert g.shape == w.shape and g.dtype == np.float64
        assert np.all(np.isfinite(g))
        rng = np.random.default_rng(11)
        for _ in range(4):
            d = rng.standard_normal(shape)
            fd = _fd_directional(jax.jit(f), jnp.asarray(w), jnp.asarray(d))
            assert np.sum(g * d) == pytest.approx(fd, rel=1e-6, abs=1e-9)
        if name == "spectral_norm":
            u, _, vt = np.linalg.svd(w)
            np.testing.assert_allclose(g, np.outer(u[:, 0], vt[0]), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["gram_bound", "spectral_norm"])
def test_gradient_finite_in_float32(name):
    w = _matrix((6, 4), "float32", kind="gap")
    g = jax.jit(jax.grad(lambda x: value(getattr(linalg, name)(x))))(jnp.asarray(w))
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("shape", split_slow([((6, 4),), ((4, 6),), ((9, 9),)], 1))
def test_power_iteration_gradient_is_u1_v1(shape):
    """Once converged, d(estimate)/dw = u1 v1ᵀ (singular vectors of w, held fixed)."""
    with jax.enable_x64(True):
        w = _matrix(shape, "float64", kind="gap")
        u, _, vt = np.linalg.svd(w)
        want = np.outer(u[:, 0], vt[0])

        def f(x):
            return value(linalg.power_iteration(x, num_iters=300, key=KEY)[0])

        g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(w)))
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, want, atol=1e-8)
        # also from a converged warm state with one more iteration
        _, state = jitted(linalg.power_iteration)(w, num_iters=300, key=KEY)
        g2 = np.asarray(
            jax.jit(jax.grad(lambda x: value(linalg.power_iteration(x, state, num_iters=1)[0])))(
                jnp.asarray(w)
            )
        )
        np.testing.assert_allclose(g2, want, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# jit / vmap / dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", split_slow(["float32", "float64"], 1))
def test_jit_and_vmap_match_single_calls(dtype):
    rng = np.random.default_rng(5)
    ws = cast(rng.standard_normal((4, 7, 5)), dtype)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    with precision(dtype):
        for name in ("spectral_norm", "gram_bound", "norm_inf", "norm_1"):
            fn = getattr(linalg, name)
            single = np.array([float(value(jitted(fn)(w))) for w in ws])
            plain = float(value(fn(ws[1])))
            batched = np.asarray(value(jax.jit(jax.vmap(fn))(jnp.asarray(ws))))
            assert batched.shape == (4,)
            np.testing.assert_allclose(plain, single[1], rtol=rtol, err_msg=name)
            np.testing.assert_allclose(batched, single, rtol=rtol, err_msg=name)
            for b, w in zip(batched, ws, strict=True):
                if name == "gram_bound":
                    assert_upper(float(b), _truth(w), f"vmapped gram_bound {dtype}")
        pi = jitted(linalg.power_iteration)
        ests, states = jax.jit(
            jax.vmap(lambda w: linalg.power_iteration(w, num_iters=200, key=KEY))
        )(jnp.asarray(ws))
        ests = np.asarray(value(ests))
        assert ests.shape == (4,)
        singles = [as_float(pi(w, num_iters=200, key=KEY)[0]) for w in ws]
        np.testing.assert_allclose(ests, singles, rtol=1e-5)
        for e, w in zip(ests, ws, strict=True):
            t = _truth(w)
            assert t * 0.99 <= float(e) <= t * (1 + 1e-5)
        # vmapped warm start
        ests2, _ = jax.jit(jax.vmap(lambda w, s: linalg.power_iteration(w, s, num_iters=2)))(
            jnp.asarray(ws), states
        )
        np.testing.assert_allclose(np.asarray(value(ests2)), ests, rtol=1e-4)


@pytest.mark.parametrize("name", ["spectral_norm", "gram_bound", "norm_inf", "norm_1"])
def test_bfloat16_input_computed_in_float32(name):
    w = _matrix((9, 6), "bfloat16")
    w64 = np.asarray(w, dtype=np.float64)  # the values actually stored
    out = getattr(linalg, name)(jnp.asarray(w, dtype=jnp.bfloat16))
    check_result_dtype(out, "bfloat16")
    b = as_float(out)
    if name == "gram_bound":
        assert_upper(b, _truth(w64), "bf16 gram_bound")
    elif name == "spectral_norm":
        assert_exact(b, _truth(w64), "float32", "bf16 spectral_norm")
    elif name == "norm_inf":
        assert_exact(b, ref.linf_truth(ref.dense_operator(w64)), "float32", "bf16 norm_inf")
    else:
        assert_exact(b, ref.l1_truth(ref.dense_operator(w64)), "float32", "bf16 norm_1")
    est, _ = jitted(linalg.power_iteration)(
        jnp.asarray(w, dtype=jnp.bfloat16), num_iters=200, key=KEY
    )
    check_result_dtype(est, "bfloat16")
    assert as_float(est) <= _truth(w64) * (1 + 1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

FUNCS = {
    "spectral_norm": lambda w: linalg.spectral_norm(w),
    "gram_bound": lambda w: linalg.gram_bound(w),
    "power_iteration": lambda w: linalg.power_iteration(w, key=KEY),
    "norm_inf": lambda w: linalg.norm_inf(w),
    "norm_1": lambda w: linalg.norm_1(w),
}


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), (), (1, 2, 3, 4)], ids=str)
def test_matrix_not_rank_2_is_refused(name, shape):
    with pytest.raises(ValueError) as e:
        FUNCS[name](np.ones(shape, np.float32))
    assert names_argument(e, "w"), str(e.value)


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize(
    "arr",
    [
        np.ones((3, 2), np.int32),
        np.ones((3, 2), np.int64),
        np.ones((3, 2), np.bool_),
        np.ones((3, 2), np.complex64),
        np.ones((3, 2), np.complex128),
    ],
    ids=lambda a: str(a.dtype),
)
def test_integer_and_complex_dtypes_are_refused(name, arr):
    with pytest.raises((TypeError, ValueError)) as e:
        FUNCS[name](arr)
    assert names_argument(e, "w"), str(e.value)


@pytest.mark.parametrize("name", list(FUNCS))
def test_bad_input_also_refused_under_jit(name):
    with pytest.raises(ValueError) as e:
        jax.jit(FUNCS[name])(jnp.ones((2, 3, 4)))
    assert names_argument(e, "w"), str(e.value)
