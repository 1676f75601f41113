"""Routines, float64 truths and checks shared by tests/test_scales.py and test_fuzz_scales.py.

Every bound routine of liplax.linalg / liplax.conv is run on arrays whose entries span the whole
range of their dtype (subnormal to near-overflow) or hold NaN/inf. The truth is computed on the
float64 copy of the stored values (exact for float32/bfloat16/float16 storage) after an exact
power-of-two scaling in NumPy (which does not flush subnormals): truth = 2^k·t_s with t_s the
float64 norm of x·2^{-k}. A result b is compared as b·2^{-k} against t_s, so truths far outside
the result dtype's range are compared exactly.

Contract checked (:func:`check`):
- a NaN entry gives NaN; an infinite entry gives a non-finite result;
- otherwise b ≥ truth, an ``exact`` result allowed below by EXACT_ULPS·u (guarantee.py);
- b is finite when the truth is safely inside the range, and inf is the only answer beyond it;
- b is not absurdly above: ≤ max(truth·(1 + rtol), tiny, 1e-4·Σ|x|), rtol = 1e-5 (exact) or
  0.5 (upper), tiny being the smallest normal number (the floor for a non-zero bound) and the
  last term the rounding of a DFT or SVD when taps cancel (it is relative to the entries).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from liplax import conv, linalg
from liplax.guarantee import exact_margin
from tests import reference as ref
from tests._helpers import jitted

KERNEL = (3, 3, 2, 2)
MATRIX = (4, 3)


@dataclass(frozen=True)
class Routine:
    """A bound routine on one array shape, its guarantee and its float64 truth."""

    name: str
    fn: Callable
    kind: str  # "exact" or "upper"
    truth: Callable[[np.ndarray], float]  # on a float64 array of order one
    shape: tuple[int, ...]

    def __call__(self, x):
        return self.fn(x)


def _mat(name, kind, truth):
    fn = jitted(getattr(linalg, name))
    return Routine(f"linalg.{name}", fn, kind, lambda w: truth(ref.dense_operator(w)), MATRIX)


def _conv(name, kind, truth, hw, strides=1, padding="SAME", shape=KERNEL):
    base = jitted(getattr(conv, name))
    kw = {} if name == "exact_spectral_norm" else {"padding": padding}

    def fn(k):
        return base(k, hw, strides=strides, **kw)

    pad = "CIRCULAR" if name == "exact_spectral_norm" else padding

    def t(k):
        return truth(ref.conv_operator(k, hw, strides, pad))

    return Routine(f"conv.{name}[{hw},{strides},{padding}]", fn, kind, t, shape)


ROUTINES = (
    _mat("spectral_norm", "exact", ref.spectral_norm_truth),
    _mat("gram_bound", "upper", ref.spectral_norm_truth),
    _mat("norm_inf", "exact", ref.linf_truth),
    _mat("norm_1", "exact", ref.l1_truth),
    _conv("exact_spectral_norm", "exact", ref.spectral_norm_truth, (4, 4), 1),
    _conv("exact_spectral_norm", "exact", ref.spectral_norm_truth, (4, 4), 2),
    _conv("exact_spectral_norm", "exact", ref.spectral_norm_truth, (2, 2), 1),  # taps alias
    _conv("gram_bound", "upper", ref.spectral_norm_truth, (2, 2), 1, "CIRCULAR"),  # taps alias
    _conv("gram_bound", "upper", ref.spectral_norm_truth, (5, 5), 1, "SAME"),
    _conv("gram_bound", "upper", ref.spectral_norm_truth, (5, 5), 2, "VALID"),
    _conv("gram_bound", "upper", ref.spectral_norm_truth, (4, 4), 1, "CIRCULAR"),
    _conv("gram_bound", "upper", ref.spectral_norm_truth, (5, 5), 2, "CIRCULAR"),
    _conv("gram_bound", "upper", ref.spectral_norm_truth, (5, 4), (1, 2), ((1, 0), (2, 1))),
    _conv("norm_inf", "upper", ref.linf_truth, (5, 5), 1, "SAME"),
    _conv("norm_inf", "upper", ref.linf_truth, (5, 5), 2, "VALID"),
    _conv("norm_inf", "upper", ref.linf_truth, (2, 2), 1, "CIRCULAR"),  # taps alias
    _conv("norm_1", "upper", ref.l1_truth, (5, 4), (2, 1), ((0, 2), (1, 1))),
    _conv("norm_1", "upper", ref.l1_truth, (2, 2), 1, "CIRCULAR"),
    _conv("norm_1", "upper", ref.l1_truth, (4, 4), 2, "CIRCULAR"),
)
"""Every certified routine, covering all paddings (SAME, VALID, CIRCULAR, explicit), strides
that divide and that do not, aliased circular taps, and the dense-operator path of conv.gram_bound
(all inputs here are below its DENSE_LIMIT) and the DFT path (circular, dividing strides)."""

SCALES = {
    "float32": (1e-45, 3e-42, 1e-40, 1e-38, 1.0, 1e30, 1e37, 3e38),
    "float64": (5e-324, 1e-315, 1e-308, 1.0, 1e300, 1.7e308),
    "bfloat16": (1e-40, 1e-38, 1.0, 1e30, 3e38),
    "float16": (6e-8, 1e-5, 1.0, 6e4),
}
"""Largest magnitude of a drawn array, per storage dtype: subnormal, smallest normal, order one,
large, near overflow."""


def result_dtype(dtype: str) -> np.dtype:
    return np.dtype("float64" if dtype == "float64" else "float32")


def store(x64: np.ndarray, dtype: str) -> np.ndarray:
    """``x64`` rounded to ``dtype`` (a NumPy array: the truth sees the stored values)."""
    if dtype == "bfloat16":
        return np.array(jnp.asarray(x64, jnp.bfloat16))  # a writable copy
    return x64.astype(np.dtype(dtype))


def draw(rng: np.random.Generator, shape, top: float, dtype: str, mixed: bool = False):
    """Normal entries scaled so the largest is ``top``; ``mixed``: magnitudes log-uniform over
    every decade of the dtype (subnormal to ``top``), random signs."""
    if mixed:
        fi = np.finfo(result_dtype(dtype) if dtype in ("float32", "float64") else np.float32)
        lo = math.log10(float(fi.smallest_subnormal)) if dtype != "float16" else -7.5
        hi = math.log10(top)
        mag = 10.0 ** rng.uniform(lo, hi, size=shape)
        x = mag * rng.choice([-1.0, 1.0], size=shape)
    else:
        x = rng.standard_normal(shape)
        x = x / np.max(np.abs(x)) * top
    return store(x, dtype)


def _split(x64: np.ndarray) -> tuple[np.ndarray, int]:
    """(x·2^{-k}, k) with max|x·2^{-k}| in [0.5, 1): exact in NumPy."""
    m = float(np.max(np.abs(x64)))
    if m == 0.0:
        return x64, 0
    _, k = math.frexp(m)
    return np.ldexp(x64, -k), k


def truth_split(routine: Routine, x: np.ndarray) -> tuple[float, int]:
    """The float64 truth as (t_s, k): truth = t_s·2^k."""
    xs, k = _split(np.asarray(x, np.float64))
    return float(routine.truth(xs)), k


def check(routine: Routine, x: np.ndarray, dtype: str, what: str = "") -> None:
    """Run ``routine`` on ``x`` (stored in ``dtype``) and check the contract above."""
    what = f"{routine.name} {dtype} {what}"
    b = float(np.asarray(routine(jnp.asarray(x))))
    x64 = np.asarray(x, np.float64)
    if np.isnan(x64).any():
        assert math.isnan(b), f"{what}: NaN entry gave {b!r}, expected NaN"
        return
    if np.isinf(x64).any():
        assert not math.isfinite(b), f"{what}: infinite entry gave finite {b!r}"
        return
    assert not math.isnan(b), f"{what}: NaN for a finite input"
    t_s, k = truth_split(routine, x64)
    fi = np.finfo(result_dtype(dtype))
    ulps = exact_margin(fi.dtype) if routine.kind == "exact" else 0.0
    # math.ldexp is exact in the normal range and |k| < 1100 keeps these there.
    b_s = math.ldexp(b, -k) if math.isfinite(b) else b
    assert b_s >= t_s * (1.0 - ulps), (
        f"{what}: UNSOUND {b!r} < truth {t_s!r}·2^{k} (rel {(t_s - b_s) / t_s:.3e} below)"
    )
    log2_max = math.log2(float(fi.max))
    t_log2 = math.log2(t_s) + k if t_s > 0 else -math.inf
    if t_log2 < log2_max - 1e-3:
        assert math.isfinite(b), f"{what}: truth {t_s!r}·2^{k} is in range but got {b!r}"
        rtol = 1e-5 if routine.kind == "exact" else 0.5
        # Rounding of the DFT / SVD is relative to the entries, not to a truth that cancels.
        entries = 1e-4 * float(np.sum(np.abs(np.ldexp(x64, -k))))
        ceiling = max(t_s * (1.0 + rtol), math.ldexp(float(fi.tiny), -k), entries)
        assert b_s <= ceiling, f"{what}: {b!r} far above truth {t_s!r}·2^{k}"
    xs = np.ldexp(x64, -k)
    if t_s == 0.0 and np.count_nonzero(xs) == np.count_nonzero(x64):
        # (entries below 2^-1074 after the split are 0 in the reference: then "0" is not exact)
        assert b == 0.0, f"{what}: a zero operator gave {b!r}"
