"""Property-based soundness of every upper bound: never below the float64 truth.

Bounds: ``linalg.gram_bound``; ``conv.gram_bound`` for every padding and stride; ``conv.norm_inf``.
The truth is the float64 SVD (or max abs row-sum) of the explicit operator of the values actually
stored (tests/reference.py). Inputs: random shapes, rank-1, nearly rank-deficient, repeated top
singular values, scales 1e-30 and 1e30 in float32, kernels larger than the input, 1×1 inputs.

Profiles (tests/conftest.py): ``default`` runs ~50 examples per property, drawing the geometry from
a fixed pool so the JAX compilations stay few; ``HYPOTHESIS_PROFILE=fuzz`` runs 10,000 examples
per property and draws the geometry freely as well.
"""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

from liplax import conv, linalg
from tests import reference as ref
from tests._helpers import abs_sum_rtol, as_float, jitted, precision

WIDE = os.environ.get("HYPOTHESIS_PROFILE", "default") == "fuzz"
# float32 is where rounding can push a bound below the truth; float64 joins in the fuzz profile
# (and is covered by the matrix tests of test_linalg.py / test_conv.py in the default run).
DTYPE = st.sampled_from(["float32", "float64"]) if WIDE else st.just("float32")

SCALES = [1.0, 1e-30, 1e30, 1e-20, 1e20, 3.7e-12, 2.0**60]
MATRIX_KINDS = ["gaussian", "rank1", "near_rank_deficient", "repeated_top", "ternary", "one_entry"]
KERNEL_KINDS = [
    "gaussian",
    "rank1_channels",
    "separable",
    "one_tap",
    "constant",
    "ternary",
    "near_rank_deficient",
]


def _nonzero(x) -> bool:
    return bool(np.any(np.asarray(x) != 0))


def _check_upper(bound: float, truth: float, stored) -> None:
    note(f"bound={bound!r} truth={truth!r} ratio={bound / truth if truth else math.nan!r}")
    assert math.isfinite(bound), f"bound not finite: {bound!r}"
    assert bound >= truth, f"UNSOUND: bound {bound!r} < truth {truth!r}"
    if _nonzero(stored) and truth > 0:
        # A non-zero kernel can still be the zero operator (its taps only ever read padding);
        # a bound of 0 is then exact. What must not happen is a wrong zero for a non-zero map.
        assert bound > 0, f"bound is 0 for a non-zero operator (truth {truth!r})"


# ---------------------------------------------------------------------------------------------
# Matrices
# ---------------------------------------------------------------------------------------------

MATRIX_SHAPES = [(1, 1), (1, 6), (6, 1), (3, 7), (7, 3), (16, 16), (2, 30)]


@st.composite
def matrices(draw):
    if WIDE:
        shape = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    else:
        shape = draw(st.sampled_from(MATRIX_SHAPES))
    kind = draw(st.sampled_from(MATRIX_KINDS))
    scale = draw(st.sampled_from(SCALES))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(DTYPE)
    rng = np.random.default_rng(seed)
    m, n = shape
    r = min(m, n)
    if kind == "gaussian":
        w = rng.standard_normal(shape)
    elif kind == "rank1":
        w = np.outer(rng.standard_normal(m), rng.standard_normal(n))
    elif kind in ("near_rank_deficient", "repeated_top"):
        u, _ = np.linalg.qr(rng.standard_normal((m, r)))
        v, _ = np.linalg.qr(rng.standard_normal((n, r)))
        if kind == "near_rank_deficient":
            s = np.full(r, 1e-7)
            s[0] = 1.0
        else:
            s = np.linspace(1.0, 0.2, r)
            s[: min(3, r)] = 1.0  # repeated top singular value
        w = (u * s) @ v.T
    elif kind == "ternary":
        w = rng.integers(-1, 2, size=shape).astype(np.float64)
    else:  # one_entry
        w = np.zeros(shape)
        w[rng.integers(m), rng.integers(n)] = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2)
    w = w * scale
    stored = np.asarray(w, dtype=np.dtype(dtype))
    assume(np.all(np.isfinite(stored)))
    return stored, kind, scale


@given(matrices(), st.sampled_from([2, 6]) if not WIDE else st.integers(1, 12))
def test_linalg_gram_bound_is_sound(case, num_iters):
    w, kind, scale = case
    dtype = str(w.dtype)
    truth = ref.spectral_norm_truth(ref.dense_operator(w))
    note(f"shape={w.shape} dtype={dtype} kind={kind} scale={scale} num_iters={num_iters}")
    with precision(dtype):
        b = as_float(jitted(linalg.gram_bound)(w, num_iters=num_iters))
    _check_upper(b, truth, w)


# ---------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------

# (kernel hw, (cin, cout), input hw, strides, padding): every padding kind, strides that divide the
# input and strides that do not, kernels larger than the input, 1x1 inputs, rectangles.
CONV_GEOMETRIES = [
    ((3, 3), (3, 2), (6, 6), 2, "CIRCULAR"),
    ((5, 5), (2, 2), (3, 3), 1, "CIRCULAR"),  # kernel larger than the input
    ((3, 3), (1, 2), (1, 1), 1, "CIRCULAR"),  # 1x1 input
    ((3, 1), (2, 2), (5, 4), 2, "CIRCULAR"),  # stride does not divide
    ((3, 3), (3, 2), (9, 9), 2, "SAME"),
    ((5, 5), (2, 2), (2, 2), 1, "SAME"),  # kernel larger than the input
    ((1, 1), (2, 1), (1, 1), 2, "SAME"),  # 1x1 input and kernel
    ((2, 2), (2, 3), (7, 5), (2, 1), "VALID"),
    ((3, 3), (2, 2), (5, 6), 2, ((1, 2), (0, 3))),
    ((5, 3), (2, 2), (2, 2), 1, ((2, 2), (1, 1))),  # kernel larger than the input
    ((3, 3), (1, 1), (3, 3), 1, "VALID"),  # a single output pixel
]


@st.composite
def conv_geometries(draw):
    if not WIDE:
        return draw(st.sampled_from(CONV_GEOMETRIES))
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    ch = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    n_hw = (draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(
        st.one_of(
            st.sampled_from(["CIRCULAR", "SAME", "VALID"]),
            st.tuples(
                st.tuples(st.integers(0, 4), st.integers(0, 4)),
                st.tuples(st.integers(0, 4), st.integers(0, 4)),
            ),
        )
    )
    return (kh, kw), ch, n_hw, strides, padding


@st.composite
def kernels(draw, kernel_hw, channels):
    kind = draw(st.sampled_from(KERNEL_KINDS))
    scale = draw(st.sampled_from(SCALES))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(DTYPE)
    rng = np.random.default_rng(seed)
    shape = (*kernel_hw, *channels)
    if kind == "gaussian":
        k = rng.standard_normal(shape)
    elif kind == "rank1_channels":
        k = np.einsum(
            "pq,i,o->pqio",
            rng.standard_normal(kernel_hw),
            rng.standard_normal(channels[0]),
            rng.standard_normal(channels[1]),
        )
    elif kind == "separable":
        k = np.einsum(
            "p,q,io->pqio",
            rng.standard_normal(kernel_hw[0]),
            rng.standard_normal(kernel_hw[1]),
            rng.standard_normal(channels),
        )
    elif kind == "one_tap":
        k = np.zeros(shape)
        k[rng.integers(kernel_hw[0]), rng.integers(kernel_hw[1])] = rng.standard_normal(channels)
    elif kind == "constant":  # every tap equal: all the energy at frequency 0
        k = np.broadcast_to(rng.standard_normal(channels), shape).copy()
    elif kind == "ternary":
        k = rng.integers(-1, 2, size=shape).astype(np.float64)
    else:  # near_rank_deficient across channels
        k = np.einsum(
            "pq,i,o->pqio",
            rng.standard_normal(kernel_hw),
            rng.standard_normal(channels[0]),
            rng.standard_normal(channels[1]),
        )
        k = k + 1e-7 * rng.standard_normal(shape)
    k = k * scale
    stored = np.asarray(k, dtype=np.dtype(dtype))
    assume(np.all(np.isfinite(stored)))
    return stored, kind, scale


def _has_output(geometry) -> bool:
    kernel_hw, _, n_hw, strides, padding = geometry
    try:
        ref.output_shape(n_hw, kernel_hw, strides, padding)
    except ValueError:
        return False
    return True


def _divides(strides, n_hw) -> bool:
    s = ref._pair(strides)
    return n_hw[0] % s[0] == 0 and n_hw[1] % s[1] == 0


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@given(st.data())
def test_conv_gram_bound_is_sound(data):
    geometry = data.draw(conv_geometries())
    kernel_hw, channels, n_hw, strides, padding = geometry
    k, kind, scale = data.draw(kernels(kernel_hw, channels))
    dtype = str(k.dtype)
    num_iters = data.draw(st.just(6) if not WIDE else st.integers(1, 10))
    note(f"geometry={geometry} kind={kind} scale={scale} dtype={dtype} num_iters={num_iters}")
    with precision(dtype):
        kk = jnp.asarray(k)
        call = jitted(conv.gram_bound)
        if not _has_output(geometry):
            try:
                call(kk, n_hw, strides=strides, padding=padding, num_iters=num_iters)
            except ValueError:
                return
            raise AssertionError("no ValueError for a layer with no output")
        try:
            b = as_float(call(kk, n_hw, strides=strides, padding=padding, num_iters=num_iters))
        except ValueError:
            # only a circular conv whose stride does not divide the input may be refused
            assert padding == "CIRCULAR" and not _divides(strides, n_hw), "unexpected ValueError"
            return
    truth, _ = ref.conv_truths(k, n_hw, strides, padding)
    _check_upper(b, truth, k)
    if padding == "CIRCULAR" and _divides(strides, n_hw):
        # the exact method on the same draw: matches the truth, and never exceeds the bound
        with precision(dtype):
            ex = as_float(jitted(conv.exact_spectral_norm)(kk, n_hw, strides=strides))
        rtol = 1e-5 if dtype == "float32" else 1e-10
        assert math.isfinite(ex) and abs(ex - truth) <= rtol * truth, f"exact {ex!r} vs {truth!r}"


@given(st.data())
def test_conv_norm_inf_is_sound(data):
    geometry = data.draw(conv_geometries())
    kernel_hw, channels, n_hw, strides, padding = geometry
    k, kind, scale = data.draw(kernels(kernel_hw, channels))
    dtype = str(k.dtype)
    note(f"geometry={geometry} kind={kind} scale={scale} dtype={dtype}")
    with precision(dtype):
        kk = jnp.asarray(k)
        call = jitted(conv.norm_inf)
        if not _has_output(geometry):
            try:
                call(kk, n_hw, strides=strides, padding=padding)
            except ValueError:
                return
            raise AssertionError("no ValueError for a layer with no output")
        b = as_float(call(kk, n_hw, strides=strides, padding=padding))
    _, linf = ref.conv_truths(k, n_hw, strides, padding)
    _check_upper(b, linf, k)
    if padding == "CIRCULAR":  # documented exact for circular padding
        rtol = abs_sum_rtol(int(np.prod(k.shape[:3])), dtype)
        assert b <= linf * (1 + rtol), f"norm_inf (circular) {b!r} above truth {linf!r} (> {rtol})"
