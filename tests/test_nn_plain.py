"""Plain flax layers: bounded only when every option that changes the map is modelled.

The truth is the float64 induced norm of the Jacobian of the actual flax layer (applied to an
identity batch), for p = 1, 2, ∞; refusals name the option or the type.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import bounds
from tests._helpers import thin
from tests.nn_helpers import induced_norm, rngs

P_ALL = (1, 2, math.inf)
F64 = dict(param_dtype=jnp.float64)


def flax_jacobian(layer, input_shape) -> np.ndarray:
    """(m, n) float64 Jacobian of the flax layer's per-example map (affine: one identity batch)."""
    n = math.prod(input_shape)
    eye = jnp.eye(n, dtype=jnp.float64).reshape(n, *input_shape)
    y = layer(eye) - layer(jnp.zeros((1, *input_shape), jnp.float64))
    return np.asarray(y, np.float64).reshape(n, -1).T


def check_against_truth(layer, input_shape, *, rtol=1e-9, slack=1.2):
    """bound ≥ truth for every p (and, ``exact`` ones, equal); ``upper`` ones within ``slack``."""
    j = flax_jacobian(layer, input_shape)
    for p in P_ALL:
        truth = float(induced_norm(j, p))
        b = ln.bound_of(layer, input_shape, p=p)
        got = float(b.value)
        assert b.certified, (p, b.kind)
        assert got >= truth * (1 - rtol), (p, got, truth)
        if b.kind == "exact":
            assert got == pytest.approx(truth, rel=rtol), (p, got, truth)
        else:
            assert got <= truth * slack + 1e-12, (p, got, truth)


def _conv(**kw):
    kw.setdefault("kernel_size", (3, 3))
    return nnx.Conv(2, 3, rngs=rngs(1), **F64, **kw)


# ------------------------------------------------------------------------------------ accepted


# Every third option set by default (the first, the defaults, included); all under -m slow.
@pytest.mark.parametrize(
    "kw",
    thin([
        dict(),
        dict(use_bias=False),
        dict(strides=2),
        dict(strides=(1, 2), padding="VALID"),
        dict(padding="CIRCULAR"),
        dict(padding=1),
        dict(padding="same", strides=2),
        dict(padding=((0, 2), (1, 0))),
        dict(kernel_dilation=(1, 1), input_dilation=None, strides=None),
        dict(mask=np.tril(np.ones((3, 3, 2, 3)))),
        dict(mask=np.full((3, 3, 2, 3), 3.0)),
        dict(mask=np.random.default_rng(0).normal(size=(3, 3, 2, 3)), padding="CIRCULAR"),
        dict(precision=jax.lax.Precision.HIGHEST, dtype=jnp.float64),
    ], 3, ids=lambda kw: ",".join(f"{k}" for k in kw) or "defaults"),
)
def test_plain_conv_options_bounded_on_the_actual_map(kw):
    with jax.enable_x64(True):
        check_against_truth(_conv(**kw), (5, 6, 2))


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(use_bias=False), dict(dtype=jnp.float64),
     dict(preferred_element_type=jnp.float64), dict(precision="highest")],
    ids=lambda kw: ",".join(kw) or "defaults",
)
def test_plain_linear_options_bounded_on_the_actual_map(kw):
    with jax.enable_x64(True):
        check_against_truth(nnx.Linear(6, 4, rngs=rngs(2), **F64, **kw), (6,))


def test_plain_linear_bfloat16_kernel_bounded_in_float32():
    layer = nnx.Linear(5, 4, param_dtype=jnp.bfloat16, rngs=rngs(3))
    w = np.asarray(layer.kernel[...], np.float64)
    for p in P_ALL:
        b = ln.bound_of(layer, (5,), p=p)
        assert b.value.dtype == jnp.float32
        assert float(b.value) == pytest.approx(float(induced_norm(w.T, p)), rel=1e-5)


def test_masked_conv_in_sequential_and_trivial_bound():
    """The issue's case: a 0/1 mask (and a scaling mask) were ignored by the bound."""
    with jax.enable_x64(True):
        for mask in (np.tril(np.ones((3, 3, 2, 3))), np.full((3, 3, 2, 3), 10.0)):
            conv = _conv(mask=mask)
            model = ln.Sequential(conv, nnx.relu)
            truth = float(induced_norm(flax_jacobian(conv, (6, 6, 2)), 2))
            b = bounds.trivial_bound(model, (6, 6, 2))
            assert b.certified and float(b.value) >= truth


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_nnx_sequential_and_plain_functions_accepted():
    with jax.enable_x64(True):
        seq = nnx.Sequential(nnx.Linear(4, 5, rngs=rngs(0), **F64), nnx.relu,
                             nnx.Linear(5, 2, rngs=rngs(1), **F64))
        b = ln.bound_of(seq, (4,))
        w1, w2 = (np.asarray(layer.kernel[...]) for layer in (seq.layers[0], seq.layers[2]))
        want = np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2)
        assert b.kind == "upper" and float(b.value) == pytest.approx(want, rel=1e-9)
    assert nnx.relu is jax.nn.relu and ln.bound_of(nnx.relu, (3,)).kind == "exact"


@pytest.mark.slow  # ~18 s; the layer contract checks to_plain of every registered layer by default
def test_to_plain_output_is_accepted_and_bounded():
    with jax.enable_x64(True):
        r = rngs(4)
        model = ln.Sequential(
            ln.SpectralConv(2, 4, 3, input_size=(6, 6), strides=2, padding="CIRCULAR", rngs=r,
                            **F64),
            ln.MaxMin(), ln.Flatten(),
            ln.Dense(36, 4, rngs=r, **F64),
        )
        model.eval()
        plain = ln.to_plain(model)
        for layer in plain.layers:
            if type(layer) in (nnx.Linear, nnx.Conv):
                shape = (6, 6, 2) if type(layer) is nnx.Conv else (36,)
                check_against_truth(layer, shape)
        assert ln.bound_of(plain, (6, 6, 2)).certified


# ------------------------------------------------------------------------------------ refused


def test_lora_linear_refused_naming_the_type():
    lora = nnx.LoRALinear(4, 4, lora_rank=2, rngs=rngs(0))
    lora.lora.lora_b[...] = jnp.ones_like(lora.lora.lora_b[...])
    with pytest.raises(TypeError, match=r"LoRALinear.*subclass of nnx\.Linear"):
        ln.Sequential(lora)
    with pytest.raises(TypeError, match=r"LoRALinear.*subclass of nnx\.Linear"):
        ln.bound_of(lora, (4,))
    with pytest.raises(TypeError, match=r"LoRALinear.*subclass of nnx\.Linear"):
        bounds.trivial_bound(nnx.Sequential(lora), (4,))


def test_subclasses_refused():
    class Scaled(nnx.Conv):
        def __call__(self, x):
            return 10.0 * super().__call__(x)

    class Twice(nnx.Sequential):
        def __call__(self, x):
            return 2.0 * super().__call__(x)

    conv = Scaled(1, 1, (3, 3), rngs=rngs(0))
    with pytest.raises(TypeError, match=r"Scaled.*subclass of nnx\.Conv"):
        ln.bound_of(conv, (5, 5, 1))
    seq = Twice(nnx.Linear(3, 3, rngs=rngs(0)))
    with pytest.raises(TypeError, match=r"Twice.*subclass of nnx\.Sequential"):
        ln.Sequential(seq)
    with pytest.raises(TypeError, match=r"Twice"):
        ln.bound_of(seq, (3,))
    with pytest.raises(TypeError, match=r"cannot export Twice"):
        ln.to_plain(seq)


def _custom_dot(*a, **k):
    return 5.0 * jax.lax.dot_general(*a, **k)


def _custom_conv(*a, **k):
    return 5.0 * jax.lax.conv_general_dilated(*a, **k)


def _custom_promote(arrays, dtype=None):
    return tuple(None if a is None else 5.0 * a for a in arrays)


REFUSED = [
    ("linear", dict(dot_general=_custom_dot), "dot_general"),
    ("linear", dict(promote_dtype=_custom_promote), "promote_dtype"),
    ("linear", dict(dtype=jnp.bfloat16), "dtype"),
    ("linear", dict(dtype=jnp.float16), "dtype"),
    ("linear", dict(preferred_element_type=jnp.bfloat16), "preferred_element_type"),
    ("conv", dict(conv_general_dilated=_custom_conv), "conv_general_dilated"),
    ("conv", dict(promote_dtype=_custom_promote), "promote_dtype"),
    ("conv", dict(dtype=jnp.bfloat16), "dtype"),
    ("conv", dict(preferred_element_type=jnp.float16), "preferred_element_type"),
    ("conv", dict(kernel_dilation=2), "kernel_dilation"),
    ("conv", dict(kernel_dilation=(1, 2)), "kernel_dilation"),
    ("conv", dict(input_dilation=2), "input_dilation"),
    ("conv", dict(feature_group_count=2, kernel_size=(3, 3)), "feature_group_count"),
    ("conv", dict(padding="REFLECT"), "padding"),
    ("conv", dict(padding="circular"), "padding"),
    ("conv", dict(padding="SAME_LOWER"), "padding"),
    ("conv", dict(kernel_size=3), "2-D"),
    ("conv", dict(kernel_size=(3,), padding="CAUSAL"), "2-D"),
    ("conv", dict(kernel_size=(3, 3, 3)), "2-D"),
]


@pytest.mark.parametrize("kind,kw,name", REFUSED, ids=[f"{k}-{n}" for k, _, n in REFUSED])
def test_unmodelled_options_refused_naming_the_option(kind, kw, name):
    if kind == "linear":
        layer, shape = nnx.Linear(4, 4, rngs=rngs(0), **kw), (4,)
    else:
        kw.setdefault("kernel_size", (3, 3))
        layer, shape = nnx.Conv(2, 4, rngs=rngs(0), **kw), (5, 5, 2)
    for p in P_ALL:
        with pytest.raises(ValueError, match=name):
            ln.bound_of(layer, shape, p=p)
    with pytest.raises(ValueError, match=name):
        ln.output_shape_of(layer, shape)
    with pytest.raises(ValueError, match=rf"Sequential layer 0 \({type(layer).__name__}\).*{name}"):
        ln.Sequential(layer)


def test_unhashable_and_unknown_layers_refused_with_type_error():
    with pytest.raises(TypeError, match=r"has no lipschitz_bound"):
        ln.Sequential(np.ones(3))
    with pytest.raises(TypeError, match=r"has no lipschitz_bound"):
        ln.Sequential(nnx.gelu)
    with pytest.raises(TypeError, match=r"has no lipschitz_bound"):
        ln.bound_of(nnx.Embed(4, 3, rngs=rngs(0)), (4,))
