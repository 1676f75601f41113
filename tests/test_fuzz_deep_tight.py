"""Fuzz: the gap penalty's attained gain and the lower bound's float64 witness gain never exceed
the certified trivial bound, for the MLPs and the CNNs the gap penalty trains.

Properties (five fixed small networks, so nothing recompiles; the inputs vary in value and
scale, 1e-3 to 1e3):

- ``test_fuzz_attained_gain_below_bound``: exp(attained_log_gain(model, xs)) ≤ the float64
  ‖J(x_i)‖₂ (SVD of the float64 Jacobian) at the best point, which is ≤ U (the certified
  trivial bound).
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


@nnx.jit(static_argnames="p")
def _bound(m, p):
    return bounds.trivial_bound(m, SHAPE, p=p).value


class _Bounds(dict):
    """The certified trivial bound of one model per norm p, computed when first asked for."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def __missing__(self, p):
        self[p] = float(_bound(self.model, p))
        return self[p]


def _model(name: str):
    if name not in MODELS:
        c = training.Config(model=name, widths=(6, 6))
        m = build_model(c, SHAPE, 3, rngs=nnx.Rngs(params=jax.random.key(len(MODELS))))
        m.eval()
        bound = _Bounds(m)
        MODELS[name] = (m, bound, nnx.jit(gap.attained_log_gain, static_argnames="power_iters"))
    return MODELS[name]


@jax.jit
def _jacobians(graphdef, state, xs):
    m = nnx.merge(graphdef, state)
    return jax.vmap(jax.jacfwd(lambda z: m(z.reshape(1, *SHAPE)).reshape(-1)))(xs)


def _jacobian_norm(m, xs) -> float:
    """max_i ‖J(x_i)‖₂ of the per-example map, by float64 SVDs of the float64 Jacobians."""
    with jax.enable_x64():
        gd, state = nnx.split(m)
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
        j = _jacobians(gd, state, jnp.asarray(xs.reshape(len(xs), -1), jnp.float64))
    return max(float(np.linalg.norm(a, 2)) for a in np.asarray(j))


mlps = ["sin_mlp", "abs_mlp", "relu_mlp"]
names = st.sampled_from([*mlps, "cnn", "cnn_strided"])  # cnn_exact: cnn_strided's map and bound
scales = st.sampled_from([1e-3, 1e-1, 1.0, 10.0, 1e3])
seeds = st.integers(0, 2**31 - 1)


@given(name=names, scale=scales, seed=seeds)
def test_fuzz_attained_gain_below_bound(name, scale, seed):
    m, bound, attained = _model(name)
    xs = scale * np.random.default_rng(seed).normal(size=(3, *SHAPE)).astype(np.float32)
    g = math.exp(float(attained(m, jnp.asarray(xs), power_iters=3)))
    truth = _jacobian_norm(m, xs)
    note(f"gain {g}, float64 local norm {truth}, bound {bound[2]}")
    assert g <= truth * (1 + 1e-5)  # attained: never above the true local gain
    assert truth <= bound[2] * (1 + 1e-5)


@given(name=st.sampled_from([*mlps, "cnn_strided"]), scale=scales, gap_scale=scales, seed=seeds,
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
