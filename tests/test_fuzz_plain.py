"""Fuzz: plain flax layers with random options and subclasses; spectral layers with degenerate
power-iteration states.

Properties:

- ``test_fuzz_plain_layer_options``: a random ``nnx.Linear``/``nnx.Conv`` (random options,
  masks, custom functions, dtypes, scales) or a subclass (``nnx.LoRALinear``, a scaled
  ``nnx.Conv``, an ``nnx.Sequential`` subclass) is either refused with an error naming the
  option or the type, or its bound (p = 1, 2, ∞) is ≥ the float64 induced norm of the flax
  layer's own Jacobian; an option that changes the map is never accepted.
- ``test_fuzz_spectral_degenerate_state``: a ``SpectralDense``/``SpectralConv`` with a random
  mix of a null-space vector of W, its top singular vector and noise, at any scale (subnormal to
  overflow, NaN): the bound of the eager and the jitted program is ≥ the float64 norm of the map
  applied by eager ``model(x)``, jitted ``model(x)`` and ``to_plain`` (or all are non-finite).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, note
from hypothesis import strategies as st

import liplax.nn as ln
from liplax.guarantee import exact_margin
from tests.nn_helpers import induced_norm, rngs
from tests.test_nn_plain import _custom_conv, _custom_dot, _custom_promote
from tests.test_nn_spectral_state import program_bounds, program_jacobians

P_ALL = (1, 2, math.inf)


class _ScaledConv(nnx.Conv):
    def __call__(self, x):
        return 3.0 * super().__call__(x)


class _Twice(nnx.Sequential):
    def __call__(self, x):
        return 2.0 * super().__call__(x)


DTYPES = [None, jnp.float64, jnp.float32, jnp.bfloat16, jnp.float16]
# options that change the map and are not modelled, for a float64 kernel: what must be named
BAD_DTYPES = {jnp.float32, jnp.bfloat16, jnp.float16}

_LINEAR_OPTIONS = dict(
    use_bias=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    preferred_element_type=st.sampled_from(DTYPES),
    dot_general=st.sampled_from([None, _custom_dot]),
    promote_dtype=st.sampled_from([None, _custom_promote]),
    precision=st.sampled_from([None, "highest"]),
)
_CONV_OPTIONS = dict(
    _LINEAR_OPTIONS,
    dot_general=st.just(None),
    conv_general_dilated=st.sampled_from([None, _custom_conv]),
    kernel_size=st.sampled_from([(3, 3), (2, 2), (1, 3), (3,), (2, 2, 2)]),
    strides=st.sampled_from([1, 2, (1, 2), None]),
    padding=st.sampled_from(["SAME", "VALID", "CIRCULAR", "same", 1, ((1, 0), (0, 2)),
                             "REFLECT", "CAUSAL", "SAME_LOWER", "circular"]),
    kernel_dilation=st.sampled_from([1, None, (1, 1), 2, (1, 2)]),
    input_dilation=st.sampled_from([1, None, (1, 1), 2]),
    feature_group_count=st.sampled_from([1, 1, 1, 2]),
    mask=st.sampled_from([None, "binary", "normal", "scaled"]),
)


def _expected_refusals(kind: str, opts: dict) -> set[str]:
    """Names (of options or types) at least one of which a refusal must name."""
    bad = set()
    if kind == "lora":
        return {"LoRALinear"}
    if kind == "conv-subclass":
        return {"_ScaledConv"}
    if kind == "seq-subclass":
        return {"_Twice"}
    for attr in ("dtype", "preferred_element_type"):
        if opts[attr] in BAD_DTYPES:
            bad.add(attr)
    if opts.get("dot_general") is not None:
        bad.add("dot_general")
    if opts.get("promote_dtype") is not None:
        bad.add("promote_dtype")
    if kind == "conv":
        if opts["conv_general_dilated"] is not None:
            bad.add("conv_general_dilated")
        if len(opts["kernel_size"]) != 2:
            bad.add("2-D")
        for attr in ("kernel_dilation", "input_dilation"):
            if opts[attr] not in (1, None, (1, 1)):
                bad.add(attr)
        if opts["feature_group_count"] != 1:
            bad.add("feature_group_count")
        if opts["padding"] in ("REFLECT", "CAUSAL", "SAME_LOWER", "circular"):
            bad.add("padding")
    return bad


def _build(kind: str, opts: dict, rng: np.random.Generator):
    """(layer, per-example input shape) in float64, kernel values drawn at a random scale."""
    kw = {k: v for k, v in opts.items() if v is not None and k != "mask"}
    scale = 10.0 ** rng.uniform(-30, 30)
    if kind == "lora":
        layer = nnx.LoRALinear(4, 3, lora_rank=1, rngs=rngs(0), param_dtype=jnp.float64)
        b = layer.lora.lora_b[...]
        layer.lora.lora_b[...] = jnp.asarray(rng.normal(size=b.shape), b.dtype)
        return layer, (4,)
    if kind == "seq-subclass":
        return _Twice(nnx.Linear(4, 3, rngs=rngs(0), param_dtype=jnp.float64)), (4,)
    if kind in ("conv", "conv-subclass"):
        cls = nnx.Conv if kind == "conv" else _ScaledConv
        ks = opts.get("kernel_size", (3, 3))
        kshape = (*ks, 2 // opts.get("feature_group_count", 1), 4)
        mask = opts.get("mask")
        if mask is not None:
            m = {"binary": rng.integers(0, 2, kshape).astype(np.float64),
                 "normal": rng.normal(size=kshape),
                 "scaled": np.full(kshape, 10.0 ** rng.uniform(-3, 3))}[mask]
            kw["mask"] = jnp.asarray(m)
        kw.setdefault("kernel_size", ks)
        layer = cls(2, 4, rngs=rngs(0), param_dtype=jnp.float64, **kw)
        layer.kernel[...] = jnp.asarray(scale * rng.normal(size=kshape))
        shape = {1: (5, 2), 2: (5, 6, 2), 3: (4, 4, 4, 2)}[len(ks)]
        return layer, shape
    layer = nnx.Linear(4, 3, rngs=rngs(0), param_dtype=jnp.float64, **kw)
    layer.kernel[...] = jnp.asarray(scale * rng.normal(size=(4, 3)))
    return layer, (4,)


def _flax_jacobian(layer, shape) -> np.ndarray:
    n = math.prod(shape)
    eye = jnp.eye(n, dtype=jnp.float64).reshape(n, *shape)
    y = layer(eye) - layer(jnp.zeros((1, *shape), jnp.float64))
    return np.asarray(y, np.float64).reshape(n, -1).T


@st.composite
def plain_cases(draw):
    kind = draw(st.sampled_from(["linear", "conv", "conv", "lora", "conv-subclass",
                                 "seq-subclass"]))
    pool = _CONV_OPTIONS if kind.startswith("conv") else _LINEAR_OPTIONS
    if kind in ("lora", "seq-subclass"):
        pool = {}
    opts = {k: draw(v) for k, v in pool.items()}
    if kind == "conv-subclass":  # the subclass alone must be refused
        opts = {"kernel_size": (3, 3)}
    return kind, opts, draw(st.sampled_from(P_ALL)), draw(st.integers(0, 2**31 - 1))


@given(plain_cases())
def test_fuzz_plain_layer_options(case):
    kind, opts, p, seed = case
    note(f"kind={kind} opts={opts}")
    expected = _expected_refusals(kind, opts)
    with jax.enable_x64(True):
        layer, shape = _build(kind, opts, np.random.default_rng(seed))
        try:
            b = ln.bound_of(layer, shape, p=p)
        except (ValueError, TypeError) as e:
            assert expected, f"refused a modelled layer: {e}"
            assert any(name in str(e) for name in expected), (str(e), expected)
            return
        assert not expected, f"accepted {expected}"
        try:
            jac = _flax_jacobian(layer, shape)
        except (ValueError, TypeError):  # flax itself refuses the call: no map to bound
            return
        assert b.certified
        truth = float(induced_norm(jac, p))
        slack = exact_margin(jnp.float64) if b.kind == "exact" else 0.0
        assert float(b.value) >= truth * (1 - slack), (p, float(b.value), truth)


# ----------------------------------------------------------------- spectral degenerate states


_LAYERS: dict[str, tuple] = {}


def _spectral(kind: str):
    """One layer per kind, reused (its kernel and state are overwritten per example)."""
    if kind not in _LAYERS:
        if kind == "dense":
            layer = ln.SpectralDense(16, 8, rngs=rngs(0))
            shape = (16,)
        else:
            layer = ln.SpectralConv(3, 1, 3, input_size=(4, 4), padding="VALID", rngs=rngs(0))
            shape = (4, 4, 3)
        layer.eval()
        _LAYERS[kind] = (layer, shape)
    return _LAYERS[kind]


def _operator(layer, shape, kernel) -> np.ndarray:
    n = math.prod(shape)
    x = jnp.eye(n, dtype=jnp.float32).reshape(n, *shape)
    return np.asarray(layer.apply_kernel(x, kernel), np.float64).reshape(n, -1).T


@st.composite
def spectral_cases(draw):
    kind = draw(st.sampled_from(["dense", "conv"]))
    mix = draw(st.tuples(*[st.sampled_from([0.0, 0.0, 1.0, 1e-7, 1e-3, -1.0])] * 3))
    scale_exp = draw(st.sampled_from([-45, -40, -30, -20, 0, 0, 0, 10, 19, 20, 30, 37]))
    kernel_exp = draw(st.sampled_from([-30, -3, 0, 0, 3, 30]))
    special = draw(st.sampled_from([None] * 8 + ["nan", "inf", "zero-kernel"]))
    p = draw(st.sampled_from(P_ALL))
    return kind, mix, scale_exp, kernel_exp, special, p, draw(st.integers(0, 2**31 - 1))


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@given(spectral_cases())
def test_fuzz_spectral_degenerate_state(case):
    kind, mix, scale_exp, kernel_exp, special, p, seed = case
    note(str(case))
    rng = np.random.default_rng(seed)
    layer, shape = _spectral(kind)
    kshape = layer.kernel[...].shape
    kernel = rng.normal(size=kshape) * 10.0 ** kernel_exp
    if special == "zero-kernel":
        kernel[...] = 0.0
    layer.kernel[...] = jnp.asarray(kernel, jnp.float32)
    a = _operator(layer, shape, layer.kernel[...])
    _, _, vt = np.linalg.svd(a)
    null = vt[a.shape[0] + rng.integers(0, vt.shape[0] - a.shape[0])]
    u = mix[0] * null + mix[1] * vt[0] + mix[2] * rng.normal(size=vt.shape[0])
    u = u * 10.0 ** scale_exp
    if special in ("nan", "inf"):
        u[rng.integers(0, u.size)] = np.nan if special == "nan" else np.inf
    layer.power_state[...] = jnp.asarray(u.reshape(layer.power_state[...].shape), jnp.float32)
    jacs = program_jacobians(layer, shape)
    got = program_bounds(layer, shape, p)
    if not all(np.all(np.isfinite(j)) for j in jacs.values()):
        assert not any(np.isfinite(v) for v in got.values()), got
        return
    truth = max(float(induced_norm(j, p)) for j in jacs.values())
    assert min(got.values()) >= truth, (got, truth)
