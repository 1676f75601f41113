"""Fuzzed soundness of every certified matrix and convolution routine across the dtype's range.

Generators (values from a NumPy generator seeded by hypothesis; shapes fixed so each routine
compiles once per dtype): subnormal entries only, near-overflow entries (max/10 … max), magnitudes
log-uniform over every decade from the smallest subnormal to the largest finite number, order-one
or randomly scaled entries with a few subnormal ones, the same with conv taps that cancel exactly
where they alias on a 2×2 circular input, and NaN/±inf entries at random positions; zeros
sprinkled at random. Routines: tests/scale_helpers.ROUTINES (linalg spectral_norm,
gram_bound, norm_inf, norm_1; conv exact_spectral_norm, gram_bound, norm_inf, norm_1 over SAME,
VALID, CIRCULAR and explicit padding, dividing and non-dividing strides, aliased taps). Storage
dtypes float32, float64, bfloat16, float16. The contract is :func:`tests.scale_helpers.check`.

The ℓ1-ball projection of LinfDense is fuzzed at scales 1e-3 … 3e38 against exact rational
arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from liplax.nn.linf import project_l1_ball
from tests._helpers import precision
from tests.scale_helpers import ROUTINES, check, store

MODES = ("subnormal", "near_overflow", "mixed", "scaled", "nonfinite", "cancel")
DTYPES = ("float32", "float64", "bfloat16", "float16")
_MATRIX = [r for r in ROUTINES if r.name.startswith("linalg.")]
_CONV = [r for r in ROUTINES if r.name.startswith("conv.")]


def _range(dtype: str) -> tuple[float, float, float]:
    """(smallest subnormal, smallest normal, largest finite) of the storage dtype."""
    if dtype == "bfloat16":
        return 2.0**-133, 2.0**-126, 3.3895313892515355e38
    fi = np.finfo(np.dtype(dtype))
    return float(fi.smallest_subnormal), float(fi.tiny), float(fi.max)


def values(rng: np.random.Generator, shape, mode: str, dtype: str) -> np.ndarray:
    """An array of ``shape`` stored in ``dtype``, drawn by ``mode`` (see the module docstring)."""
    sub, tiny, big = _range(dtype)
    sign = rng.choice([-1.0, 1.0], size=shape)
    if mode == "subnormal":
        mag = np.exp(rng.uniform(math.log(sub), math.log(tiny), size=shape))
    elif mode == "near_overflow":
        mag = rng.uniform(big / 10, big, size=shape)
    elif mode == "mixed":
        mag = np.exp(rng.uniform(math.log(sub), math.log(big), size=shape))
    else:
        top = math.exp(rng.uniform(math.log(tiny), math.log(big)))
        mag = np.abs(rng.standard_normal(shape)) * (top / 4)
        few = rng.random(shape) < 0.2
        mag = np.where(few, np.exp(rng.uniform(math.log(sub), math.log(tiny), size=shape)), mag)
    x = np.where(rng.random(shape) < 0.15, 0.0, sign * mag)
    x = store(np.minimum(np.abs(x), big) * np.sign(x), dtype)
    if mode == "cancel" and len(shape) == 4:
        # Taps p and p + 2 alias on a 2-wide circular input: make them cancel exactly and give
        # the centre tap subnormal-scale entries, lost to the scaling but the whole truth.
        x[2] = -x[0]
        x[:, 2] = -x[:, 0]
        centre = np.exp(rng.uniform(math.log(sub), math.log(tiny), size=shape[2:]))
        x[1, 1] = store(sign[1, 1] * centre, dtype)
    if mode == "nonfinite":
        flat = x.reshape(-1)
        for _ in range(int(rng.integers(1, 4))):
            flat[rng.integers(flat.size)] = rng.choice([np.nan, np.inf, -np.inf])
        x = flat.reshape(shape)
    return x


def _check_one(routines, which: int, dtype: str, mode: str, seed: int) -> None:
    routine = routines[which % len(routines)]
    x = values(np.random.default_rng(seed), routine.shape, mode, dtype)
    note(f"{routine.name} {dtype} {mode} seed={seed}\n{x!r}")
    with precision(dtype):
        check(routine, x, dtype, f"{mode} seed={seed}")


@given(
    which=st.integers(0, len(_MATRIX) - 1),
    dtype=st.sampled_from(DTYPES),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**32 - 1),
)
def test_fuzz_matrix_scales(which, dtype, mode, seed):
    _check_one(_MATRIX, which, dtype, mode, seed)


@given(
    which=st.integers(0, len(_CONV) - 1),
    dtype=st.sampled_from(("float32", "float64", "bfloat16")),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**32 - 1),
)
def test_fuzz_conv_scales(which, dtype, mode, seed):
    _check_one(_CONV, which, dtype, mode, seed)


def _project_exact(v: np.ndarray) -> list[Fraction]:
    f = [Fraction(float(x)) for x in v]
    if sum(abs(x) for x in f) <= 1:
        return f
    mu, css, theta = sorted((abs(x) for x in f), reverse=True), Fraction(0), Fraction(0)
    for j, m in enumerate(mu, 1):
        css += m
        if m - (css - 1) / j > 0:
            theta = (css - 1) / j
    return [(1 if x > 0 else -1) * max(abs(x) - theta, Fraction(0)) for x in f]


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@given(log_top=st.floats(-3, 38.5), seed=st.integers(0, 2**32 - 1), ties=st.booleans())
def test_fuzz_linf_projection(log_top, seed, ties):
    """Π(W) has every column in the unit ℓ1 ball (up to rounding) and is the exact projection up
    to a few u of absolute error (its entries are order one whatever the scale of W)."""
    rng = np.random.default_rng(seed)
    top = min(10.0**log_top, 3.4e38)
    w = (rng.standard_normal((6, 3)) / 3 * top).clip(-3.4e38, 3.4e38).astype(np.float32)
    if ties:
        w[1:3, :] = w[0:1, :]
    got = np.asarray(project_l1_ball(jnp.asarray(w))).astype(np.float64)
    u = float(np.finfo(np.float32).eps) / 2
    for j in range(3):
        want = np.asarray([float(x) for x in _project_exact(w[:, j])])
        err = np.max(np.abs(got[:, j] - want))
        assert err <= 16 * u * max(1.0, np.abs(want).max()), (j, got[:, j], want)
        assert np.abs(got[:, j]).sum() <= 1.0 + 8 * w.shape[0] * u, (j, got[:, j])
