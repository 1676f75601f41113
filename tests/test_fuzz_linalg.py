"""Fuzzed soundness of every matrix operator of ``liplax.linalg`` on one shared draw.

``spectral_norm`` (exact), ``gram_bound`` (upper), ``norm_inf`` and ``norm_1`` (exact) run on the
same matrix, drawn by the strategy of ``tests/test_properties.py`` (random, rank-1, nearly
rank-deficient, repeated top singular values, ternary, a single entry; scales 1e-30 … 1e30;
1×1 and thin shapes). The truth is the float64 SVD / abs-sums of the stored values.
Upper bounds: never below the truth, no tolerance. Exact results: within the documented
rounding margin of the truth (SVD: EXACT_RTOL; an n-term abs-sum: 3γ_n), and a wrong zero
(0 for a non-zero matrix) is a failure whatever the margin.

Low-precision storage (bfloat16, float16): the results are float32 and still bound the
operator of the stored low-precision values.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from liplax import linalg
from tests import reference as ref
from tests._helpers import (
    abs_sum_rtol,
    as_float,
    assert_exact,
    assert_upper,
    check_result_dtype,
    jitted,
    precision,
)
from tests.test_properties import WIDE, matrices

GRAM_ITERS = st.integers(1, 12) if WIDE else st.sampled_from([1, 6])


def budget(n: int):
    """Examples per test in the default profile (each new shape or dtype compiles)."""
    return settings(max_examples=n) if not WIDE else (lambda f: f)


def _truths(w) -> tuple[float, float, float]:
    op = ref.dense_operator(w)
    return ref.spectral_norm_truth(op), ref.linf_truth(op), ref.l1_truth(op)


def _check_exact_sum(got: float, truth: float, n_terms: int, dtype: str, what: str) -> None:
    rtol = abs_sum_rtol(n_terms, dtype)
    assert np.isfinite(got), f"{what}: not finite: {got!r}"
    assert abs(got - truth) <= rtol * truth, (
        f"{what}: {got!r} vs truth {truth!r} (rel {abs(got - truth) / truth:.3e} > {rtol:.3e})"
    )


def _check_all(w, num_iters: int, compute_dtype: str) -> None:
    spec, linf, l1 = _truths(w)
    assume(spec > 0)  # every draw is non-zero by construction; a zero matrix has its own test
    with precision(compute_dtype):
        x = jnp.asarray(w)
        sn = jitted(linalg.spectral_norm)(x)
        gb = jitted(linalg.gram_bound)(x, num_iters=num_iters)
        ni = jitted(linalg.norm_inf)(x)
        n1 = jitted(linalg.norm_1)(x)
    for out in (sn, gb, ni, n1):
        check_result_dtype(out, str(w.dtype))
    sn, gb, ni, n1 = (as_float(v) for v in (sn, gb, ni, n1))
    note(f"spectral {sn!r} gram {gb!r} inf {ni!r} one {n1!r} | truths {spec!r} {linf!r} {l1!r}")
    assert_upper(gb, spec, f"gram_bound(num_iters={num_iters})")
    assert_exact(sn, spec, compute_dtype, "spectral_norm")
    _check_exact_sum(ni, linf, w.shape[0], compute_dtype, "norm_inf")
    _check_exact_sum(n1, l1, w.shape[1], compute_dtype, "norm_1")
    assert min(sn, ni, n1) > 0, "a wrong zero for a non-zero matrix"


@budget(15)
@given(matrices(), GRAM_ITERS)
def test_linalg_operators_match_the_float64_truth(case, num_iters):
    w, kind, scale = case
    note(f"shape={w.shape} dtype={w.dtype} kind={kind} scale={scale} num_iters={num_iters}")
    _check_all(w, num_iters, str(w.dtype))


LOW = {"bfloat16": 1e30, "float16": 1e3}  # largest scale each format holds with room to spare


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@budget(10)
@given(matrices(), st.sampled_from(sorted(LOW)), GRAM_ITERS)
def test_linalg_low_precision_inputs_give_float32_bounds(case, low, num_iters):
    w, kind, scale = case
    assume(scale <= LOW[low] and (low != "float16" or scale >= 1e-3))
    stored = np.asarray(jnp.asarray(w, dtype=getattr(jnp, low)))
    assume(np.all(np.isfinite(stored.astype(np.float64))))
    assume(np.any(stored.astype(np.float64) != 0))
    note(f"shape={w.shape} {low} kind={kind} scale={scale} num_iters={num_iters}")
    # the operators compute in float32; the truth is the float64 operator of the stored values
    _check_all(stored, num_iters, "float32")
