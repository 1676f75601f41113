"""Fuzzed contracts of what the package split shares: tightness, the value checks, the data order.

- :func:`liplax.certify.tightness_ratio` is the one definition of tightness (training report,
  ``model_sweep``, ``certify.tightness``): on host numbers it is the float64 quotient exactly, on
  JAX arrays the quotient in their dtype; ≥ 1 whenever upper ≥ lower > 0; inf when nothing was
  found (lower = 0 < upper), 1 for a constant map (0/0), nan when either is nan or both are
  infinite. Values from subnormal to overflow, zeros, infinities and nan.
- ``_checks.positive_int`` / ``_checks.real_scalar`` (the checks the data pipeline and the losses
  now share): they accept exactly the values their contract names and return them unchanged.
- ``training.step.chunk_batch_indices`` (permutations drawn once per chunk) equals
  ``training.data.batch_indices`` step by step, for starts and chunk lengths that straddle epochs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from liplax import _checks
from liplax.certify import tightness_ratio
from liplax.training import data
from liplax.training.step import chunk_batch_indices

SPECIAL = [0.0, 5e-324, 1e-310, 1.1754944e-38, 1.0, 3.4028235e38, 1.7976931348623157e308,
           math.inf, math.nan]
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-3, max_value=1e3),
)


TINY32 = float(np.finfo(np.float32).tiny)


def expected(upper: float, lower: float) -> float:
    """Tightness by cases, in float64 (the documented definition)."""
    if math.isnan(upper) or math.isnan(lower):
        return math.nan
    if lower > 0:
        return upper / lower
    if upper == 0:
        return 1.0
    return math.inf


def same(got: float, want: float) -> bool:
    return (math.isnan(got) and math.isnan(want)) or got == want


@given(VALUES, VALUES)
def test_tightness_ratio_on_host_numbers_is_the_float64_definition(upper, lower):
    got = float(tightness_ratio(upper, lower))
    want = expected(upper, lower)
    assert same(got, want), (upper, lower, got, want)
    if upper >= lower > 0 and not math.isinf(lower):
        assert got >= 1.0


_JIT_RATIO = jax.jit(tightness_ratio)


@given(st.lists(st.tuples(VALUES, VALUES), min_size=8, max_size=8))
def test_tightness_ratio_on_jax_arrays_is_the_definition_in_their_dtype(pairs):
    with np.errstate(over="ignore"):  # float32 storage: rounds, may overflow to inf
        up = np.array([u for u, _ in pairs], np.float32)
        lo = np.array([v for _, v in pairs], np.float32)
    eager = np.asarray(tightness_ratio(jnp.asarray(up), jnp.asarray(lo)))
    jitted = np.asarray(_JIT_RATIO(jnp.asarray(up), jnp.asarray(lo)))
    assert eager.dtype == np.float32
    for i in range(8):
        u, v = float(up[i]), float(lo[i])
        allowed = allowed_f32(u, v)
        for got in (float(eager[i]), float(jitted[i])):
            assert any(same(got, w) for w in allowed), (u, v, got, allowed)
            if u >= v > 0 and not math.isinf(v):
                assert got >= 1.0, (u, v, got)


def allowed_f32(u: float, v: float) -> list[float]:
    """The definition on float32 values: the float32 quotient where lower > 0. XLA on CPU may
    flush subnormal inputs and results to 0, so each subnormal may also count as 0."""
    def flush(x: float) -> list[float]:
        return [x, 0.0] if 0 < abs(x) < TINY32 else [x]

    out = []
    for uu in flush(u):
        for vv in flush(v):
            want = expected(uu, vv)
            if vv > 0 and math.isfinite(want):
                with np.errstate(over="ignore", under="ignore"):
                    want = float(np.float32(uu) / np.float32(vv))
            out += flush(want)
    return out


@given(st.one_of(st.integers(-5, 10**12), st.booleans(), st.floats(allow_nan=True),
                 st.sampled_from([np.int32(3), np.int64(0), np.uint8(7), "3", None])))
def test_positive_int_accepts_exactly_the_ints_from_one(v):
    ok = (isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)
          and int(v) >= 1)
    if ok:
        out = _checks.positive_int(v, "n")
        assert out == int(v) and type(out) is int
    else:
        with pytest.raises(ValueError, match="n must be a positive int"):
            _checks.positive_int(v, "n")


@given(st.one_of(VALUES, st.floats(), st.integers(-3, 3), st.sampled_from([-0.0, -1e-300])),
       st.booleans())
def test_real_scalar_accepts_exactly_the_finite_non_negative_numbers(v, positive):
    ok = math.isfinite(v) and v >= 0 and not (positive and v == 0)
    if ok:
        assert _checks.real_scalar(v, "margin", positive=positive) is v
    else:
        with pytest.raises(ValueError, match="margin must be a finite number"):
            _checks.real_scalar(v, "margin", positive=positive)


# A few static (n, batch size, chunk length) triples: each compiles once; starts vary freely.
SHAPES = [(103, 10, 30), (7, 7, 3), (64, 5, 13), (50, 16, 1)]
_CHUNKS = {s: jax.jit(chunk_batch_indices, static_argnums=(1, 2, 4)) for s in SHAPES}
_SINGLE = jax.jit(data.batch_indices, static_argnums=(1, 2))


@given(st.sampled_from(SHAPES), st.integers(0, 10**6), st.integers(0, 2**31 - 1))
def test_chunk_batches_equal_the_per_step_data_order(shape, start, seed):
    n, bs, steps = shape
    key = jax.random.key(seed)
    got = np.asarray(_CHUNKS[shape](key, n, bs, jnp.int32(start), steps))
    assert got.shape == (steps, bs)
    for t in range(steps):
        want = np.asarray(_SINGLE(key, n, bs, jnp.int32(start + t)))
        np.testing.assert_array_equal(got[t], want)
