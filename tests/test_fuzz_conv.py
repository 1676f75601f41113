"""Fuzzed soundness of every convolution operator of ``liplax.conv`` on one shared draw.

On each drawn (kernel, input size, strides, padding): ``gram_bound`` (upper, every padding),
``norm_inf`` and ``norm_1`` (upper; exact up to a rounding-up factor for circular padding) and,
for circular padding with strides dividing the input, ``exact_spectral_norm`` (exact). Paddings:
CIRCULAR, SAME, VALID and explicit (lo, hi) pairs, asymmetric included; strides 1 to 3 (dividing
the input or not); kernels larger than the input; 1×1 inputs. Kernels come from the strategy of
``tests/test_properties.py`` (random, rank-1 across channels, separable, one tap, constant,
ternary, nearly rank-deficient; scales 1e-30 … 1e30). The truth is the float64 SVD / abs-sums of
the explicit operator of the stored values (``tests/reference.py``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from liplax import conv
from liplax.guarantee import gamma
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
from tests.test_properties import WIDE, _divides, _has_output, conv_geometries, kernels

# Default pool: strides up to 3, asymmetric explicit pads, kernels larger than the input, 1×1
# inputs; a few shared with tests/test_properties.py (their compilations are reused).
GEOMETRIES = [
    ((3, 3), (3, 2), (6, 6), 3, "CIRCULAR"),  # stride 3 divides
    ((2, 3), (2, 2), (6, 3), (3, 1), "CIRCULAR"),
    ((5, 5), (2, 2), (3, 3), 1, "CIRCULAR"),  # kernel larger than the input (taps alias)
    ((4, 4), (1, 2), (2, 2), 2, "CIRCULAR"),  # larger kernel and a stride
    ((3, 3), (1, 2), (1, 1), 1, "CIRCULAR"),  # 1x1 input
    ((3, 1), (2, 2), (5, 4), 2, "CIRCULAR"),  # stride does not divide
    ((3, 3), (2, 3), (7, 8), 3, "SAME"),
    ((5, 5), (2, 2), (2, 2), 1, "SAME"),  # kernel larger than the input
    ((1, 1), (2, 1), (1, 1), 2, "SAME"),  # 1x1 input and kernel
    ((2, 2), (2, 3), (7, 5), (3, 2), "VALID"),
    ((3, 3), (2, 2), (5, 6), 2, ((1, 2), (0, 3))),  # asymmetric explicit
    ((4, 2), (1, 2), (3, 5), 3, ((0, 2), (3, 0))),  # asymmetric, stride 3
    ((5, 3), (2, 2), (2, 2), 1, ((2, 2), (1, 1))),  # kernel larger than the input
]


@st.composite
def geometries(draw, pool=GEOMETRIES):
    return draw(conv_geometries() if WIDE else st.sampled_from(pool))


def budget(n: int):
    """Examples per test in the default profile (each new geometry or dtype compiles); the fuzz
    profile keeps its own count."""
    return settings(max_examples=n) if not WIDE else (lambda f: f)


def _operator_truths(k, n_hw, strides, padding) -> tuple[float, float, float]:
    op = ref.conv_operator(k, n_hw, strides, padding)
    return ref.spectral_norm_truth(op), ref.linf_truth(op), ref.l1_truth(op)


def _check_conv(k, geometry, num_iters: int, compute_dtype: str) -> None:
    kernel_hw, _, n_hw, strides, padding = geometry
    note(f"geometry={geometry} dtype={k.dtype} num_iters={num_iters}")
    assume(_has_output(geometry))  # layers with no output: refused, see test_bad_input.py
    circular = padding == "CIRCULAR"
    with precision(compute_dtype):
        kk = jnp.asarray(k)
        kw = dict(strides=strides, padding=padding)
        out = {
            "gram_bound": jitted(conv.gram_bound)(kk, n_hw, num_iters=num_iters, **kw),
            "norm_inf": jitted(conv.norm_inf)(kk, n_hw, **kw),
            "norm_1": jitted(conv.norm_1)(kk, n_hw, **kw),
        }
        if circular and _divides(strides, n_hw):
            out["exact"] = jitted(conv.exact_spectral_norm)(kk, n_hw, strides=strides)
    for v in out.values():
        check_result_dtype(v, str(k.dtype))
    got = {name: as_float(v) for name, v in out.items()}
    spec, linf, l1 = _operator_truths(k, n_hw, strides, padding)
    note(f"got {got} | truths spectral {spec!r} inf {linf!r} one {l1!r}")
    assert_upper(got["gram_bound"], spec, "conv.gram_bound")
    assert_upper(got["norm_inf"], linf, "conv.norm_inf")
    assert_upper(got["norm_1"], l1, "conv.norm_1")
    if spec > 0:  # a non-zero kernel may still be the zero operator (taps only read padding)
        assert min(got.values()) > 0, f"a wrong zero for a non-zero operator: {got}"
    if circular:
        # Documented exact for circular padding: rounded up by at most 3γ_terms, plus, where taps
        # alias (kernel larger than the input), the compensated-sum allowance 2γ_r²·Σ|k|.
        kh, kw_, cin, cout = k.shape
        r = math.ceil(kh / n_hw[0]) * math.ceil(kw_ / n_hw[1])
        alias = 4 * gamma(r, "float32") ** 2 * float(np.sum(np.abs(k.astype(np.float64))))
        sums = (("norm_inf", linf, kh * kw_ * cin), ("norm_1", l1, kh * kw_ * cout))
        for name, truth, terms in sums:
            rtol = abs_sum_rtol(terms, compute_dtype)
            allowed = truth * (1 + rtol) + (alias if r > 1 else 0.0)
            assert got[name] <= allowed, f"{name} {got[name]!r} above {truth!r} (> {allowed!r})"
    if "exact" in got:
        assert_exact(got["exact"], spec, compute_dtype, "conv.exact_spectral_norm")


@budget(7)
@given(st.data())
def test_conv_operators_match_the_float64_truth(data):
    geometry = data.draw(geometries())
    kernel_hw, channels = geometry[0], geometry[1]
    k, kind, scale = data.draw(kernels(kernel_hw, channels))
    num_iters = data.draw(st.integers(1, 10) if WIDE else st.sampled_from([2, 6]))
    note(f"kind={kind} scale={scale}")
    assume(np.any(k != 0))
    _check_conv(k, geometry, num_iters, str(k.dtype))


LOW = {"bfloat16": 1e30, "float16": 1e3}


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@budget(5)
@given(st.data())
def test_conv_low_precision_kernels_give_float32_bounds(data):
    geometry = data.draw(geometries(GEOMETRIES[::4]))  # default: 4 geometries, 2 dtypes
    kernel_hw, channels = geometry[0], geometry[1]
    k, kind, scale = data.draw(kernels(kernel_hw, channels))
    low = data.draw(st.sampled_from(sorted(LOW)))
    assume(scale <= LOW[low] and (low != "float16" or scale >= 1e-3))
    stored = np.asarray(jnp.asarray(k, dtype=getattr(jnp, low)))
    as64 = stored.astype(np.float64)
    assume(np.all(np.isfinite(as64)) and np.any(as64 != 0))
    note(f"{low} kind={kind} scale={scale}")
    _check_conv(stored, geometry, 6, "float32")


def test_conv_pool_covers_every_padding_kind_and_stride():
    """The default pool itself: CIRCULAR/SAME/VALID/explicit, asymmetric pads, strides 1-3,
    a kernel larger than the input, a 1×1 input (so the default run cannot silently narrow)."""
    pads = {g[4] if isinstance(g[4], str) else "explicit" for g in GEOMETRIES}
    assert pads == {"CIRCULAR", "SAME", "VALID", "explicit"}
    strides = {s for g in GEOMETRIES for s in ((g[3], g[3]) if isinstance(g[3], int) else g[3])}
    assert strides == {1, 2, 3}
    assert any(g[4] != "CIRCULAR" and not isinstance(g[4], str) and g[4][0][0] != g[4][0][1]
               for g in GEOMETRIES)
    assert any(g[0][0] > g[2][0] for g in GEOMETRIES if g[4] == "CIRCULAR")
    assert any(g[0][0] > g[2][0] for g in GEOMETRIES if g[4] != "CIRCULAR")
    assert any(g[2] == (1, 1) for g in GEOMETRIES)
    assert math.prod(ref.output_shape(GEOMETRIES[0][2], GEOMETRIES[0][0], 3, "CIRCULAR")) == 4
