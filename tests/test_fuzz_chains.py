"""Fuzz: deep chains of tiny and huge layers never get a bound below their constant.

Linear chains x ↦ x·W_1⋯W_L (+ biases), depth up to 60, per-layer scales 10^±30 (down to
subnormal float32 weights), three families: random Gaussian, rank-1 aligned (the trivial bound
equals the constant up to rounding) and scaled identities alternating tiny/huge. The reference
is the float64 constant of the product, carried as (matrix, log scale) so that 10^±1800 neither
under- nor overflows. Properties, for p = 1, 2, ∞:

- ``bounds.trivial_bound``/``log_trivial_bound``/``model_sweep`` ≥ the constant, and 0 only when
  a layer is exactly 0; ``verify.trivial_bound`` (float64 weights, scales to 10^±300) likewise;
- ``certify.certified_radius`` ≤ margin/(c·L_true) for the chain's own logits, and for random
  (margin, L, scale) triples over the whole float32 range it is ≤ the exact rational radius.

Shapes come from a small set (JAX compiles once per model structure); the rest are values.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import liplax.nn as ln
from liplax import bounds, certify, verify
from liplax.guarantee import Bound, exact_margin, unit_roundoff
from liplax.nn.walk import bound_of, log_bound_of
from liplax.sweep import _bounds_fn, model_sweep, sweep
from tests.nn_helpers import rngs

WIDTH = 3
# Compiling a 51- or 60-layer chain (three programs per p) takes minutes on 2 cores: the default
# profile draws chains up to depth 20 (the 0.1^51 chain itself is tests/test_chain_rounding.py);
# the fuzz profile (make fuzz) draws every depth.
FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
DEPTHS = (1, 2, 7, 51, 60) if FUZZ else (1, 2, 7, 20)
PS = (1, 2, math.inf)
F32 = np.float32
REF_SLACK = 1e-12  # relative error of the float64 reference (a few ulps per layer, 60 layers)

_COMPILED: dict = {}


def _compiled(depth: int):
    """(model, graphdef, fns) per depth, bias on every fifth layer; the fns are the code paths
    of ``bounds.trivial_bound`` (``bound_of``), ``log_trivial_bound`` (``log_bound_of``),
    ``model_sweep`` (``sweep`` of its per-architecture function) and the forward pass, jitted
    on the model's state so that a call costs no graph walk. The public functions themselves
    are checked against them on a fixed subset of draws (``_public_agree``)."""
    if depth not in _COMPILED:
        layers = [ln.Dense(WIDTH, WIDTH, use_bias=i % 5 == 0, rngs=rngs(i)) for i in range(depth)]
        model = ln.Sequential(*layers)
        graphdef, _ = nnx.split(model)
        shape = (WIDTH,)

        def bound(state, p):
            b = bound_of(nnx.merge(graphdef, state), shape, p=p)
            return b.value

        def log_bound(state, p):
            return log_bound_of(nnx.merge(graphdef, state), shape, p=p)[0]

        def forward(state, x):
            return nnx.merge(graphdef, state)(x)

        fns = {
            "bound": jax.jit(bound, static_argnums=1),
            "log": jax.jit(log_bound, static_argnums=1),
            "forward": jax.jit(forward),
            "sweep": lambda state, p: sweep(
                _bounds_fn(graphdef, shape, p, 100),
                jax.tree_util.tree_map(lambda a: a[None], state),
            )["trivial"].value[0],
        }
        _COMPILED[depth] = (model, graphdef, fns)
    return _COMPILED[depth]


def _state(depth: int, mats):
    model, _, fns = _compiled(depth)
    for layer, m in zip(model.layers, mats, strict=True):
        layer.kernel[...] = jnp.asarray(m)
    return nnx.state(model), fns


def _matrices(seed: int, depth: int, family: str, log_lo: float, log_hi: float, dtype):
    rng = np.random.default_rng(seed)
    logs = rng.uniform(log_lo, log_hi, depth)
    if family == "alternating":  # tiny/huge pairs whose product is ~1
        a = min(abs(log_hi), 30.0 if dtype == F32 else 270.0)
        logs = np.where(np.arange(depth) % 2 == 0, a, -a) + rng.uniform(-1, 1, depth)
    mats = []
    vecs = [rng.uniform(0.5, 2.0, WIDTH) for _ in range(depth + 1)]
    for i in range(depth):
        if family == "gaussian":
            m = rng.normal(size=(WIDTH, WIDTH))
        elif family == "rank1":  # x ↦ x a bᵀ with b ∝ the next a: Π‖W_l‖ = ‖Π W_l‖ (ℓ2)
            m = np.outer(vecs[i], vecs[i + 1])
        else:
            m = np.eye(WIDTH)
        mats.append((m * 10.0 ** logs[i]).astype(dtype))
    if family == "zero":
        mats[rng.integers(depth)][...] = 0
    return mats


def _log_constant(mats, p) -> float:
    """log of the float64 p→p constant of x ↦ x·M_1⋯M_L (−inf for the zero map)."""
    prod, log_scale = np.eye(WIDTH), 0.0
    for m in mats:
        prod = prod @ np.asarray(m, np.float64)
        t = float(np.max(np.abs(prod)))
        if t == 0.0:
            return -math.inf
        prod, log_scale = prod / t, log_scale + math.log(t)
    if p == 2:
        norm = np.linalg.norm(prod, 2)
    elif p == math.inf:
        norm = np.max(np.sum(np.abs(prod), axis=0))
    else:
        norm = np.max(np.sum(np.abs(prod), axis=1))
    return log_scale + math.log(norm) if norm > 0 else -math.inf


def _ge(value: float, log_truth: float) -> bool:
    """value ≥ e^{log_truth}, up to the float64 reference's own rounding."""
    if log_truth == -math.inf:
        return value >= 0.0
    if value <= 0.0 or math.isnan(value):
        return False
    return math.log(value) >= log_truth - REF_SLACK * max(1.0, abs(log_truth))


chains = st.tuples(
    st.integers(0, 2**32 - 1),
    st.sampled_from(DEPTHS),
    st.sampled_from(["gaussian", "rank1", "identity", "alternating", "zero"]),
    st.floats(-42.0, 30.0),
    st.floats(0.0, 30.0),
    st.sampled_from(PS),
)


def _kind_slack(depth: int) -> float:
    """A single layer's bound is its ``exact`` value (within guarantee.exact_margin below)."""
    return exact_margin(F32) if depth == 1 else 0.0


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@given(chains)
def test_trivial_bounds_are_above_the_chain_constant(chain):
    seed, depth, family, lo, width, p = chain
    mats = _matrices(seed, depth, family, lo, min(lo + width, 30.0), F32)
    state, fns = _state(depth, mats)
    truth = _log_constant(mats, p)
    slack = _kind_slack(depth)
    value = float(fns["bound"](state, p))
    assert _ge(value * (1 + slack), truth), (value, truth)
    has_zero = any(not np.any(m) for m in mats)  # bitwise zero layers only
    assert (value == 0.0) == has_zero
    if not has_zero:
        log_value = float(fns["log"](state, p))
        if slack:  # an exact log is also within the log's own rounding, ≤ 2u·|log|
            log_value += slack + 2 * unit_roundoff(F32) * abs(log_value)
        assert log_value >= truth - REF_SLACK * max(1.0, abs(truth)), (log_value, truth)
    assert _ge(float(fns["sweep"](state, p)) * (1 + slack), truth)


def test_public_functions_agree_with_the_fuzzed_paths():
    """bounds.trivial_bound / log_trivial_bound / model_sweep are the jitted paths above."""
    for depth in DEPTHS if FUZZ else (2, 7):
        for p in PS:
            mats = _matrices(depth, depth, "alternating", -30.0, 30.0, F32)
            state, fns = _state(depth, mats)
            model = _compiled(depth)[0]
            assert float(bounds.trivial_bound(model, (WIDTH,), p=p).value) == float(
                fns["bound"](state, p))
            assert float(bounds.log_trivial_bound(model, (WIDTH,), p=p).value) == float(
                fns["log"](state, p))
            assert float(model_sweep([model], (WIDTH,), p=p)["trivial"].value[0]) == float(
                fns["sweep"](state, p))


_radius = jax.jit(certify.certified_radius, static_argnames=("p", "head"))


@given(chains)
def test_certified_radius_of_a_chain_is_below_its_true_radius(chain):
    seed, depth, family, lo, width, p = chain
    mats = _matrices(seed, depth, family, lo, min(lo + width, 30.0), F32)
    state, fns = _state(depth, mats)
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(8, WIDTH)).astype(F32))
    logits = fns["forward"](state, x)
    if not np.all(np.isfinite(np.asarray(logits))):
        return  # the float32 forward pass overflowed: margins refuse such logits
    labels = jnp.argmax(logits, axis=-1)
    L = fns["bound"](state, p)
    kind = "exact" if depth == 1 else "upper"
    r = np.asarray(_radius(logits, labels, Bound(L, kind), p=p))
    m = np.asarray(certify.margins(logits, labels), np.float64)
    c = 2.0 ** (1.0 - 1.0 / p)
    log_l = _log_constant(mats, p)
    if not np.isfinite(float(L)):
        assert np.all(r == 0.0)  # an overflowed bound certifies nothing
        return
    for ri, mi in zip(r, m, strict=True):
        if ri == 0.0 or log_l == -math.inf:  # nothing certified, or a constant chain
            continue
        assert mi > 0 and math.isfinite(ri)
        bound = math.log(mi) - math.log(c) - log_l
        assert math.log(ri) <= bound + REF_SLACK * max(1.0, abs(bound)), (ri, bound)


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([(2, "global", 2), (1, "global", 1), (math.inf, "global", 4),
                     (2, "per_logit", 4)]),
)
def test_radius_is_below_the_exact_rational_radius(seed, case):
    """Random margins, bounds and scales over float32's whole range (subnormals and 0 too)."""
    p, head, c_sq = case
    rng = np.random.default_rng(seed)
    n = 32
    m = (10.0 ** rng.uniform(-44, 38, n)).astype(F32)
    L = (10.0 ** rng.uniform(-44, 38, n)).astype(F32)
    L[rng.random(n) < 0.05] = 0.0
    s = F32(10.0 ** rng.uniform(-30, 30))
    logits = np.stack([m, np.zeros(n, F32)], axis=1)
    r = np.asarray(certify.certified_radius(jnp.asarray(logits), jnp.zeros(n, jnp.int32),
                                            jnp.asarray(L), p=p, head=head, input_scale=s))
    for ri, mi, li in zip(r, m, L, strict=True):
        if ri == 0.0:
            continue
        if li == 0.0:
            assert ri == math.inf and mi > 0
            continue
        assert math.isfinite(ri)
        truth_sq = (Fraction(float(mi)) * Fraction(float(s))) ** 2
        truth_sq /= c_sq * Fraction(float(li)) ** 2
        assert Fraction(float(ri)) ** 2 <= truth_sq, (ri, mi, li, s)


@given(chains)
def test_verify_trivial_bound_is_above_the_chain_constant(chain):
    seed, depth, family, lo, width, p = chain
    lo = lo * 7.0  # float64: scales 10^-294 to 10^270
    hi = min(lo + width * 9.0, 270.0)
    mats = _matrices(seed, depth, family, lo, hi, np.float64)
    truth = _log_constant(mats, p)
    value = float(verify.trivial_bound(mats, p=p).value)
    assert _ge(value, truth), (value, truth)
    assert (value == 0.0) == (truth == -math.inf)
