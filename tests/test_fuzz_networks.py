"""Fuzzed soundness of whole networks: ``trivial_bound`` (and its log form) never below the truth.

Small float32 ``Sequential`` models (dense and convolutional, ReLU/Abs/MaxMin/CReLU
activations, residual blocks, pooling, Flatten, Scale) with adversarial weights: random,
rank-1 chains whose singular directions line up from layer to layer (where the trivial bound
is tight: the product of the layer norms *is* the network's constant, so nothing but
rounding separates bound and truth), repeated singular values, and per-layer scales from 1e-30
to 1e30 (the network's constant kept inside float32's range).

Truth, float64 (the model's parameters copied to float64, Jacobians by ``jax.jacfwd``):

- linear networks: the induced p-norm of the network's matrix (the Jacobian, the same at every
  point: the exact constant);
- other networks: the largest Jacobian norm over sampled points (a lower bound on the true
  constant), the points including one where a rank-1 chain is fully active.

p = 1, 2 and ∞. ``trivial_bound`` must be ``upper``, finite, never below the truth and never a
wrong zero; ``log_trivial_bound`` never below log(truth).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import liplax.nn as ln
from liplax.nn.walk import bound_of, log_bound_of
from tests.nn_helpers import induced_norm, rngs
from tests.test_properties import WIDE

P_ALL = (1, 2, math.inf)
SCALES = [1.0, 1e-12, 1e12, 1e-30, 1e30, 2.0**40]
WEIGHT_KINDS = ["gaussian", "rank1_chain", "repeated_top", "ternary"]

# Architectures: a tuple of layer specs; "in" is the per-example input shape.
ARCHS = {
    "linear2": ((4,), [("dense", 4, 3), ("dense", 3, 2)]),
    "linear-res": ((3,), [("dense", 3, 3), ("res", 3), ("scale", -0.5), ("dense", 3, 2)]),
    "mlp-relu": ((4,), [("dense", 4, 5), ("act", "ReLU"), ("dense", 5, 2)]),
    "mlp-maxmin-abs": (
        (3,),
        [("dense", 3, 4), ("act", "MaxMin"), ("dense", 4, 4), ("act", "Abs"), ("dense", 4, 2)],
    ),
    "mlp-crelu": ((2,), [("dense", 2, 3), ("act", "CReLU"), ("dense", 6, 1)]),
    "conv-linear": (
        (4, 4, 1),
        [("conv", 1, 2, (3, 3), 1, "CIRCULAR"), ("avgpool", 2), ("flatten",), ("dense", 8, 2)],
    ),
    "conv-relu": (
        (5, 5, 1),
        [("conv", 1, 2, (3, 3), 2, "SAME"), ("act", "ReLU"), ("flatten",), ("dense", 18, 3)],
    ),
}
ACTS = {"ReLU": ln.ReLU, "Abs": ln.Abs, "MaxMin": ln.MaxMin, "CReLU": ln.CReLU}


def _is_linear(spec) -> bool:
    return all(layer[0] != "act" for layer in spec)


def _weight_shapes(spec) -> list[tuple[int, ...]]:
    shapes = []
    for layer in spec:
        if layer[0] == "dense":
            shapes.append((layer[1], layer[2]))
        elif layer[0] == "res":
            shapes.append((layer[1], layer[1]))
        elif layer[0] == "conv":
            shapes.append((*layer[3], layer[1], layer[2]))
    return shapes


def _draw_weights(rng, shapes, kind, scales):
    """One weight per shape. ``rank1_chain``: W_l = a_l b_lᵀ with b_l = a_{l+1} (up to
    reshaping), so the top singular directions of consecutive layers coincide; positive
    vectors keep ReLU/Abs/MaxMin units active along the chain."""
    out = []
    vec = None
    for shape, scale in zip(shapes, scales, strict=True):
        n_in, n_out = math.prod(shape[:-1]), shape[-1]
        if kind == "gaussian":
            w = rng.standard_normal((n_in, n_out))
        elif kind == "ternary":
            w = rng.integers(-1, 2, size=(n_in, n_out)).astype(np.float64)
        elif kind == "repeated_top":
            q, _ = np.linalg.qr(rng.standard_normal((max(n_in, n_out), max(n_in, n_out))))
            w = q[:n_in, :n_out] * 1.0  # all singular values 1
        else:  # rank1_chain
            a = np.abs(rng.standard_normal(n_in)) + 0.1 if vec is None or vec.size != n_in else vec
            b = np.abs(rng.standard_normal(n_out)) + 0.1
            w = np.outer(a, b)
            vec = b
        out.append(np.asarray((w * scale).reshape(shape), np.float32))
    return out


def _build(spec, weights):
    layers, ws = [], iter(weights)
    for layer in spec:
        tag = layer[0]
        if tag == "dense":
            m = ln.Dense(layer[1], layer[2], rngs=rngs())
            m.kernel[...] = jnp.asarray(next(ws))
        elif tag == "res":
            inner = ln.Dense(layer[1], layer[1], rngs=rngs())
            inner.kernel[...] = jnp.asarray(next(ws))
            m = ln.Residual(inner)
        elif tag == "conv":
            _, cin, cout, khw, strides, padding = layer
            m = ln.Conv(cin, cout, khw, input_size=(8, 8), strides=strides, padding=padding,
                        rngs=rngs())
            m.kernel[...] = jnp.asarray(next(ws))
        elif tag == "act":
            m = ACTS[layer[1]]()
        elif tag == "scale":
            m = ln.Scale(layer[1])
        elif tag == "avgpool":
            m = ln.AvgPool(layer[1])
        else:
            m = ln.Flatten()
        layers.append(m)
    return ln.Sequential(*layers)


@partial(nnx.jit, static_argnums=1)
def _bounds(model, shape):
    return {p: (bound_of(model, shape, p=p), log_bound_of(model, shape, p=p)[0]) for p in P_ALL}


def _jacobians64(model, shape, xs):
    """float64 Jacobians of the per-example map at the flat points ``xs``."""
    with jax.enable_x64(True):
        m = nnx.clone(model)
        params = nnx.state(m, nnx.Param)
        nnx.update(m, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params))

        def f(x):
            return m(x.reshape(1, *shape)).reshape(-1)

        jac = jax.jit(jax.vmap(jax.jacfwd(f)))
        return np.asarray(jac(jnp.asarray(np.stack(xs), jnp.float64)))


def _layer_norm_product(spec, weights, p) -> float:
    """Π of float64 per-layer sizes (‖W‖ of the raw weight, 1 + ‖W‖ for a residual block, |a|
    for a scale): about the trivial bound itself, used only to keep it inside float32's range."""
    total, ws = 1.0, iter(weights)
    for layer in spec:
        if layer[0] in ("dense", "res", "conv"):
            w = next(ws)
            norm = float(induced_norm(np.asarray(w, np.float64).reshape(-1, w.shape[-1]), p))
            total *= 1.0 + norm if layer[0] == "res" else norm
        elif layer[0] == "scale":
            total *= abs(layer[1])
    return total


def budget(n: int):
    return settings(max_examples=n) if not WIDE else (lambda f: f)


@budget(10)
@given(
    st.sampled_from(sorted(ARCHS)),
    st.sampled_from(WEIGHT_KINDS),
    st.lists(st.sampled_from(SCALES), min_size=4, max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_trivial_bound_is_never_below_the_network_constant(arch, kind, scales, seed):
    shape, spec = ARCHS[arch]
    shapes = _weight_shapes(spec)
    rng = np.random.default_rng(seed)
    weights = _draw_weights(rng, shapes, kind, scales[: len(shapes)])
    assume(all(np.all(np.isfinite(w)) and np.any(w != 0) for w in weights))
    for p in P_ALL:  # keep the trivial bound inside float32's range (partial products may not be)
        assume(1e-33 < _layer_norm_product(spec, weights, p) < 1e33)
    note(f"arch={arch} kind={kind} scales={scales[: len(shapes)]}")
    model = _build(spec, weights)
    model.eval()
    bounds = _bounds(model, shape)

    n = math.prod(shape)
    first = weights[0].reshape(-1, weights[0].shape[-1]).astype(np.float64)
    xs = [rng.standard_normal(n) for _ in range(6)]
    # along the chain (every unit active for a positive rank-1 chain); a positive image for convs
    xs.append(first @ np.ones(first.shape[1]) if first.shape[0] == n else np.ones(n))
    jacs = _jacobians64(model, shape, xs)
    linear = _is_linear(spec)
    if linear:  # the Jacobian is the network's matrix: the same everywhere
        spread = np.max(np.abs(jacs - jacs[:1]))
        assert spread <= 1e-9 * np.max(np.abs(jacs)), "a linear network's Jacobian varies"
    for p, (b, log_b) in bounds.items():
        truth = max(float(induced_norm(j, p)) for j in jacs)
        value, log_value = float(b.value), float(log_b)
        note(f"p={p}: bound {value!r} (log {log_value!r}) truth {truth!r} linear={linear}")
        assert b.kind == "upper", f"p={p}: kind {b.kind!r}"
        assert math.isfinite(value) and value >= truth, (
            f"p={p}: UNSOUND trivial bound {value!r} < truth {truth!r}"
        )
        if truth > 0:
            assert value > 0, f"p={p}: a wrong zero (truth {truth!r})"
            assert log_value >= math.log(truth), (
                f"p={p}: UNSOUND log bound {log_value!r} < log(truth) {math.log(truth)!r}"
            )
