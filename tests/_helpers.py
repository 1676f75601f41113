"""Small helpers shared by the liplax operator-norm tests (not a reference: no mathematics here)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float32", "float64")

# Relative tolerance of an `exact` result against the float64 truth.
EXACT_RTOL = {"float32": 1e-5, "float64": 1e-10}


STATIC_NAMES = ("input_shape", "strides", "padding", "num_iters")


@functools.cache
def jitted(fn):
    """``jax.jit(fn)`` with the contract's static arguments static (cached, so every test that
    calls the same function on the same shapes compiles once)."""
    params = inspect.signature(fn).parameters
    return jax.jit(fn, static_argnames=[n for n in STATIC_NAMES if n in params])


def value(out, kind: str | None = None):
    """The numeric value of a bound function's result (a bare array or a liplax ``Bound``).

    When the result is a ``Bound``, its ``kind`` must be ``kind`` (the contract's guarantee)."""
    if hasattr(out, "kind") and hasattr(out, "value"):
        if kind is not None:
            assert out.kind == kind, f"expected a bound of kind {kind!r}, got {out.kind!r}"
        return out.value
    return out


def rotate(xs, ys, xid=str, yid=str) -> list:
    """pytest params over the product xs × ys: by default each x once, with y cycling through ys
    (so each y also appears); every pair under -m slow. Each element is a value or a tuple."""
    import pytest

    out = []
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            vals = (*(x if isinstance(x, tuple) else (x,)), *(y if isinstance(y, tuple) else (y,)))
            marks = () if j == i % len(ys) else (pytest.mark.slow,)
            out.append(pytest.param(*vals, id=f"{xid(x)}-{yid(y)}", marks=marks))
    return out


def thin(params, every: int, ids=None) -> list:
    """pytest params: every ``every``-th one (starting with the first) runs by default, the others
    only under -m slow; spread over the whole list so the default run still sees each kind of case.
    ``params``: values, tuples of values or ``pytest.param``s (their marks and ids are kept);
    ``ids``: a list or a function of the value."""
    import pytest

    out = []
    for i, p in enumerate(params):
        slow = () if i % every == 0 else (pytest.mark.slow,)
        if isinstance(p, type(pytest.param(0))):
            out.append(pytest.param(*p.values, id=p.id, marks=(*p.marks, *slow)))
            continue
        vals = p if isinstance(p, tuple) else (p,)
        if ids is None:
            pid = str(p).replace(" ", "")
        else:
            pid = ids(p) if callable(ids) else ids[i]
        out.append(pytest.param(*vals, id=pid, marks=slow))
    return out


def as_float(out, kind: str | None = None) -> float:
    v = np.asarray(value(out, kind))
    assert v.shape == (), f"expected a scalar, got shape {v.shape}"
    return float(v)


@contextlib.contextmanager
def precision(dtype: str):
    """float64 runs under ``jax.enable_x64(True)``; float32 runs in the default mode."""
    if dtype == "float64":
        with jax.enable_x64(True):
            yield
    else:
        yield


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` stored in ``dtype`` (a NumPy array, so the truth sees exactly the stored values)."""
    if dtype == "bfloat16":
        return np.asarray(jnp.asarray(x, dtype=jnp.bfloat16))
    return np.asarray(x, dtype=np.dtype(dtype))


def check_result_dtype(out, dtype: str) -> None:
    want = "float32" if dtype in ("float32", "bfloat16", "float16") else "float64"
    got = np.asarray(value(out)).dtype
    assert got == np.dtype(want), f"result dtype {got}, expected {want} for {dtype} input"


def assert_upper(bound: float, truth: float, what: str) -> None:
    """Soundness: never below the float64 truth, no tolerance below; finite."""
    assert math.isfinite(bound), f"{what}: bound is not finite: {bound!r}"
    assert bound >= truth, (
        f"{what}: UNSOUND upper bound {bound!r} < truth {truth!r} "
        f"(rel {(truth - bound) / truth if truth else float('inf'):.3e} below)"
    )


def assert_exact(got: float, truth: float, dtype: str, what: str) -> None:
    rtol = EXACT_RTOL[dtype]
    assert math.isfinite(got), f"{what}: not finite: {got!r}"
    assert abs(got - truth) <= rtol * abs(truth) + (1e-30 if truth == 0 else 0.0), (
        f"{what}: exact value {got!r} vs truth {truth!r}, rel err "
        f"{abs(got - truth) / abs(truth) if truth else float('inf'):.3e} > {rtol}"
    )


def abs_sum_rtol(n_terms: int, dtype: str) -> float:
    """Relative tolerance of an `exact` sum of ``n_terms`` absolute values (an induced l_inf/l_1
    norm) computed in ``dtype``: the larger of the `exact` tolerance and 3·γ_n, γ_n = n·u/(1 − n·u)
    being the standard bound on the rounding error of an n-term sum (Higham, Accuracy and
    Stability of Numerical Algorithms, §4.2); a sound result may sit above the truth by about
    that much. Below the truth no tolerance applies to an upper bound."""
    dt = "float32" if dtype in ("float32", "bfloat16", "float16") else "float64"
    u = float(np.finfo(np.dtype(dt)).eps) / 2
    gamma = n_terms * u / (1 - n_terms * u)
    return max(EXACT_RTOL[dt], 3 * gamma)


def names_argument(excinfo, *names: str) -> bool:
    """Whether the error (a pytest ExceptionInfo or an exception) names one of ``names``."""
    msg = str(getattr(excinfo, "value", excinfo))
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg) for n in names)


def pairwise_cover(factors: dict[str, list], is_allowed=None, seed_order=True) -> list[dict]:
    """A deterministic all-pairs covering subset of the product of ``factors``.

    Every pair of values of two different factors appears in at least one returned case
    (among allowed combinations). Greedy; small enough for the default test run."""
    names = list(factors)
    all_cases = [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*factors.values())
    ]
    if is_allowed is not None:
        all_cases = [c for c in all_cases if is_allowed(c)]

    def pairs(case):
        idx = {n: factors[n].index(case[n]) for n in names}
        return {(a, idx[a], b, idx[b]) for a, b in itertools.combinations(names, 2)}

    case_pairs = [pairs(c) for c in all_cases]
    uncovered = set().union(*case_pairs)
    chosen = []
    while uncovered:
        best = max(range(len(all_cases)), key=lambda i: len(case_pairs[i] & uncovered))
        gain = case_pairs[best] & uncovered
        if not gain:
            break
        chosen.append(all_cases[best])
        uncovered -= gain
    return chosen


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}".replace(" ", "") for k, v in case.items())


def seed_of(*parts) -> int:
    """A stable seed from printable parts (Python's hash() of str is salted per process)."""
    import zlib

    return zlib.crc32(repr(parts).encode())


def split_slow(params, default_count: int) -> list:
    """pytest params: the first ``default_count`` run by default, the rest only under -m slow."""
    import pytest

    out = []
    for i, p in enumerate(params):
        vals = p if isinstance(p, tuple) else (p,)
        marks = () if i < default_count else (pytest.mark.slow,)
        out.append(pytest.param(*vals, id=str(p).replace(" ", ""), marks=marks))
    return out
