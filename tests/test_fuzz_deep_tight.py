"""Fuzz: the gap penalty's attained gain and the lower bound's float64 witness gain never exceed
the certified trivial bound.

Properties (three fixed small networks, so nothing recompiles; the inputs vary in value and
scale, 1e-3 to 1e3):

- ``test_fuzz_attained_gain_below_bound``: exp(attained_log_gain(model, xs)) ≤ U (the certified
  trivial bound) and equals ‖J(x_i)v_i‖ for its best point, ≤ the float64 ‖J(x_i)‖₂ there.
- ``test_fuzz_witness_gain_below_bound``: for random witnesses (local: x, v; pair: x, y) of every
  norm p ∈ {1, 2, ∞}, witness_gain (float64) ≤ the certified trivial bound of that norm.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given, note
from hypothesis import strategies as st

from liplax import bounds, training
from liplax.certify.witness import witness_gain
from liplax.training import gap
from liplax.training.models import build_model

SHAPE = (4, 4, 1)
MODELS = {}


def _model(name: str):
    if name not in MODELS:
        c = training.Config(model=name, widths=(6, 6))
        m = build_model(c, SHAPE, 3, rngs=nnx.Rngs(params=jax.random.key(len(MODELS))))
        m.eval()
        bound = {p: float(bounds.trivial_bound(m, SHAPE, p=p).value) for p in (1, 2, math.inf)}
        MODELS[name] = (m, bound, nnx.jit(gap.attained_log_gain, static_argnames="power_iters"))
    return MODELS[name]


names = st.sampled_from(["sin_mlp", "abs_mlp", "relu_mlp"])
scales = st.sampled_from([1e-3, 1e-1, 1.0, 10.0, 1e3])
seeds = st.integers(0, 2**31 - 1)


@given(name=names, scale=scales, seed=seeds)
def test_fuzz_attained_gain_below_bound(name, scale, seed):
    m, bound, attained = _model(name)
    xs = scale * np.random.default_rng(seed).normal(size=(3, *SHAPE)).astype(np.float32)
    g = math.exp(float(attained(m, jnp.asarray(xs), power_iters=3)))
    note(f"gain {g}, bound {bound[2]}")
    assert g <= bound[2] * (1 + 1e-5)


@given(name=names, scale=scales, gap_scale=scales, seed=seeds,
       kind=st.sampled_from(["local", "pair"]), p=st.sampled_from([1, 2, math.inf]))
def test_fuzz_witness_gain_below_bound(name, scale, gap_scale, seed, kind, p):
    m, bound, _ = _model(name)
    rng = np.random.default_rng(seed)
    x = scale * rng.normal(size=SHAPE)
    second = gap_scale * rng.normal(size=SHAPE) + (x if kind == "pair" else 0.0)
    if not np.any(second != x) if kind == "pair" else not np.any(second):
        return
    g = witness_gain(m, kind, x, second, p=p)
    note(f"gain {g}, bound {bound[p]}")
    assert 0 <= g <= bound[p] * (1 + 1e-5)
