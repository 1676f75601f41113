"""liplax.traced: each rule against the float64 Jacobian, refusals, and agreement with the
layer-based bound (issue 14)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from liplax.bounds import trivial_bound
from liplax.guarantee import exact_margin
from liplax.traced import lipschitz_bound
from liplax.traced._constants import sup_derivative
from tests._helpers import rotate
from tests.traced_helpers import PS, jac_norm, max_jac_norm

RNG = np.random.default_rng(0)


def _w(*shape, scale=1.0):
    return jnp.asarray(RNG.normal(size=shape) * scale, jnp.float32)


def _points(shape, n=4, scale=2.0, seed=0):
    r = np.random.default_rng(seed)
    return [np.asarray(r.normal(size=shape) * scale, np.float32) for _ in range(n)]


def _bound(f, x, p):
    """The bound as a number ≥ the truth: an ``exact`` value may sit 64u below it (its
    documented margin, liplax.guarantee.EXACT_ULPS), which certification accounts for."""
    b = lipschitz_bound(f, jnp.asarray(x), p=p)
    assert b.kind in ("exact", "upper")
    value = float(b.value)
    return value * (1 + exact_margin(jnp.float32)) if b.kind == "exact" else value


def _check_linear(f, x, p, rtol=1e-4):
    """For a linear f the bound is ≥ and within rtol of the materialized operator norm."""
    truth = jac_norm(f, x, p)
    got = _bound(f, x, p)
    assert got >= truth, (got, truth)
    assert got <= truth * (1 + rtol) + 1e-30, (got, truth)


# ------------------------------------------------------------------------------------------
# Elementwise constants.
# ------------------------------------------------------------------------------------------

ACTS = {
    "tanh": (jnp.tanh, 1.0), "sigmoid": (jax.nn.sigmoid, 0.25), "sin": (jnp.sin, 1.0),
    "cos": (jnp.cos, 1.0), "atan": (jnp.arctan, 1.0), "asinh": (jnp.arcsinh, 1.0),
    "erf": (jax.scipy.special.erf, 2 / math.sqrt(math.pi)), "abs": (jnp.abs, 1.0),
    "neg": (lambda x: -x, 1.0), "relu": (jax.nn.relu, 1.0), "relu6": (jax.nn.relu6, 1.0),
    "clip": (lambda x: jnp.clip(x, -0.5, 0.7), 1.0),
    "gelu_tanh": (jax.nn.gelu, sup_derivative("gelu_tanh")),
    "gelu": (lambda x: jax.nn.gelu(x, approximate=False), sup_derivative("gelu")),
    "silu": (jax.nn.silu, sup_derivative("silu")), "softplus": (jax.nn.softplus, 1.0),
    "log_sigmoid": (jax.nn.log_sigmoid, 1.0), "soft_sign": (jax.nn.soft_sign, 1.0),
    "hard_tanh": (jax.nn.hard_tanh, 1.0), "hard_silu": (jax.nn.hard_silu, 1.5),
    "selu": (jax.nn.selu, 1.0507009873554805 * 1.6732632423543772),
    "elu": (jax.nn.elu, 1.0), "elu_a": (lambda x: jax.nn.elu(x, 2.5), 2.5),
    "elu_small": (lambda x: jax.nn.elu(x, 0.3), 1.0),
    "leaky": (jax.nn.leaky_relu, 1.0), "leaky_a": (lambda x: jax.nn.leaky_relu(x, -1.7), 1.7),
    "celu": (jax.nn.celu, 1.0), "celu_a": (lambda x: jax.nn.celu(x, 0.4), 1.0),
    "nnx_gelu": (nnx.gelu, sup_derivative("gelu_tanh")), "nnx_swish": (nnx.swish, None),
}


def _sup_abs_derivative(fn) -> float:
    s = np.linspace(-12.0, 12.0, 480_001)
    with jax.enable_x64(True):
        d = jax.vmap(jax.grad(lambda t: fn(t)))(jnp.asarray(s, jnp.float64))
    return float(np.max(np.abs(np.asarray(d))))


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_constant_is_sup_derivative(name):
    """The bound of φ applied entrywise is sup|φ'| (float64 grid search), from above and tight."""
    fn, _ = ACTS[name]
    truth = _sup_abs_derivative(fn)
    for p in PS:
        got = _bound(fn, np.zeros(3, np.float32), p)
        assert got >= truth
        assert got <= truth * (1 + 2e-4) + 1e-6, (name, got, truth)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu"])
def test_interval_constants_cover_float64_search(name):
    fns = {"gelu": ACTS["gelu"][0], "gelu_tanh": ACTS["gelu_tanh"][0], "silu": ACTS["silu"][0]}
    truth = _sup_abs_derivative(fns[name])
    assert truth <= sup_derivative(name) <= truth * (1 + 1e-4)


def test_activation_recognized_by_structure_not_name():
    """A jitted function named like an activation that computes a product is refused; a gelu
    with a changed constant is not trusted (and refused: it cubes the input)."""

    @jax.jit
    def gelu(x):
        return x * jax.nn.sigmoid(2.0 * x)

    with pytest.raises(ValueError, match="'mul'"):
        lipschitz_bound(gelu, jnp.ones(3))

    def fake(x):
        return 0.5 * x * (1 + jnp.tanh(0.8 * (x + 0.05 * x**3)))

    with pytest.raises(ValueError, match="integer_pow"):
        lipschitz_bound(fake, jnp.ones(3))


# ------------------------------------------------------------------------------------------
# Linear primitives.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PS)
def test_dot_general_variants_match_operator_norm(p):
    w, v, b, t = _w(5, 4), _w(3, 5, 2), _w(2, 3, 5), _w(2, 5, 3)
    x = np.asarray(_w(2, 5))
    _check_linear(lambda x: x @ w, x, p)
    _check_linear(lambda x: w.T @ x.T, x, p)  # x as the right operand
    _check_linear(lambda x: jnp.einsum("bij,bj->bi", b, x), x, p)  # batch dims
    _check_linear(lambda x: jnp.einsum("kij,ki->kj", v, jnp.stack([x[0], x[1], x[0]])), x, p,
                  rtol=1.0)  # stacking copies x[0] twice: a looser (sound) bound
    _check_linear(lambda x: jnp.tensordot(x, t, axes=([0, 1], [0, 1])), x, p)


@pytest.mark.parametrize("case,p", rotate(
    ["nhwc", "nchw", "stride", "dilate", "lhs_dilate", "groups", "conv1d", "negpad", "conv3d"], PS))
def test_conv_variants_bound_operator_norm(case, p):
    """Canonical 2-D convs (liplax.conv) and every other configuration (Riesz–Thorin): ≥ the
    materialized operator norm; the ℓ1/ℓ∞ induced norms are exact."""
    cfg = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)),
               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    shape, kshape = (1, 6, 6, 2), (3, 3, 2, 3)
    if case == "nchw":
        shape, kshape = (1, 2, 6, 6), (3, 2, 3, 3)
        cfg["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
    elif case == "stride":
        cfg.update(window_strides=(2, 1), padding=((0, 1), (2, 0)))
    elif case == "dilate":
        cfg["rhs_dilation"] = (2, 1)
    elif case == "lhs_dilate":
        cfg["lhs_dilation"] = (2, 2)
    elif case == "groups":
        shape, kshape = (1, 6, 6, 4), (3, 3, 2, 6)
        cfg["feature_group_count"] = 2
    elif case == "conv1d":
        shape, kshape = (2, 7, 2), (3, 2, 3)
        cfg.update(window_strides=(1,), padding=((1, 2),), dimension_numbers=("NWC", "WIO", "NWC"))
    elif case == "negpad":
        cfg["padding"] = ((-1, 1), (1, 0))
    elif case == "conv3d":
        shape, kshape = (1, 3, 4, 4, 2), (2, 2, 2, 2, 2)
        cfg.update(window_strides=(1, 1, 1), padding=((0, 1),) * 3,
                   dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    k = _w(*kshape)

    def f(x):
        return lax.conv_general_dilated(x, k.astype(x.dtype), precision="highest", **cfg)

    x = np.asarray(_w(*shape))
    truth = jac_norm(f, x, p)
    got = _bound(f, x, p)
    assert got >= truth
    generic = case not in ("nhwc", "nchw", "stride", "dilate", "groups")
    if p != 2 or not generic:
        assert got <= truth * 1.02, (got, truth)


# ------------------------------------------------------------------------------------------
# Structural primitives and combinations.
# ------------------------------------------------------------------------------------------

STRUCT = {
    "broadcast": lambda x: jnp.broadcast_to(x, (3, *x.shape)),
    "sum_axis": lambda x: x.sum(axis=1),
    "mean": lambda x: x.mean(axis=0),
    "concat": lambda x: jnp.concatenate([x, 2.0 * x, jnp.ones_like(x)]),
    "moves": lambda x: jnp.pad(x.T.reshape(-1)[1:7], (2, 1)),
    "residual": lambda x: x + 0.5 * jnp.roll(x, 1),
    "select_swap": lambda x: jnp.where(jnp.arange(4) < 2, x.reshape(-1)[:4],
                                       x.reshape(-1)[:4][::-1]),
    "scale": lambda x: x * jnp.asarray([1.0, -3.0, 0.5]),
    "div": lambda x: x / jnp.asarray([2.0, 4.0, -8.0]),
    "update_slice": lambda x: lax.dynamic_update_slice(jnp.zeros((4, 3)), 2 * x[:2], (1, 0)),
}


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("name", sorted(STRUCT))
def test_structural_linear_maps(name, p):
    """Linear structural maps: ≥ the operator norm and equal to it (they are tight)."""
    x = np.asarray(_w(4, 3))
    rtol = 1e-4 if name not in ("residual",) else 1.0
    _check_linear(STRUCT[name], x, p, rtol=rtol)


_W3, _W33, _W3C = _w(3, 3), _w(3, 3, scale=0.9), _w(3, 3)


def _sin_jvp():
    f = jax.custom_jvp(jnp.sin)
    f.defjvp(lambda primals, tangents: (jnp.sin(primals[0]), jnp.cos(primals[0]) * tangents[0]))
    return f


NONLIN = {
    "reduce_max": lambda x: x.max(axis=1),
    "max_two": lambda x: jnp.maximum(x, x[::-1] @ _W3),
    "maxpool": lambda x: nnx.max_pool(x, (2, 2), (1, 1), padding="SAME"),
    "avgpool": lambda x: nnx.avg_pool(x, (3, 2), (2, 1), padding="SAME"),
    "sort_split_cumsum": lambda x: jnp.sort(x, axis=0)[:2] + jnp.split(jnp.cumsum(x, 0), 2)[1],
    "minpool": lambda x: -lax.reduce_window(-x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 2, 1),
                                             "VALID"),
    "scan": lambda x: lax.fori_loop(0, 3, lambda i, c: jnp.tanh(c @ _W33), x),
    "scan_ys": lambda x: lax.scan(lambda c, xi: (c + xi, jnp.sin(c)), x[0], x)[1],
    "cond": lambda x: lax.cond(True, lambda y: y @ _W3C, lambda y: 2.0 * y, x),
    "while_counter": lambda x: lax.while_loop(
        lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.sin(c[1]) @ _W33), (0, x))[1],
    "scan_reverse": lambda x: lax.scan(lambda c, xi: (jnp.tanh(c) + xi, c), x[0], x,
                                       reverse=True)[1],
    "remat_jvp": lambda x: jax.checkpoint(jnp.tanh)(x) + _sin_jvp()(x),
}


@pytest.mark.parametrize("name,p", rotate(sorted(NONLIN), PS))
def test_nonlinear_rules_bound_jacobian(name, p):
    shape = (1, 5, 4, 2) if "pool" in name else (4, 3)
    f = NONLIN[name]
    xs = _points(shape, n=6)
    got = _bound(f, xs[0], p)
    assert got >= max_jac_norm(f, xs, p)


def test_select_with_constant_predicate_is_not_max_of_cases():
    """Taking x on some entries and a permutation of x on the others has constant √2 in ℓ2."""
    f = STRUCT["select_swap"]
    truth = jac_norm(f, np.ones((4, 3), np.float32), 2)
    assert truth == pytest.approx(math.sqrt(2.0))
    assert _bound(f, np.ones((4, 3), np.float32), 2) >= truth


def test_identity_and_constant_functions():
    assert float(lipschitz_bound(lambda x: x, jnp.ones(3)).value) == 1.0
    b = lipschitz_bound(lambda x: jnp.ones(4) * 2.0, jnp.ones(3))
    assert (float(b.value), b.kind) == (0.0, "exact")


# ------------------------------------------------------------------------------------------
# Refusals: each names the primitive and the user's line.
# ------------------------------------------------------------------------------------------

REFUSED = {
    "mul": lambda x: x * x,
    "div": lambda x: 1.0 / (2.0 + x),
    "exp": lambda x: jnp.exp(x), "log": lambda x: jnp.log(x), "sqrt": lambda x: jnp.sqrt(x),
    "rsqrt": lambda x: lax.rsqrt(x),
    "integer_pow": lambda x: x**3, "pow": lambda x: x ** jnp.float32(1.5),
    "sign": lambda x: jnp.sign(x) * 2.0,
    "floor": lambda x: jnp.floor(x) + 1.0,
    "round": lambda x: jnp.round(x) + 1.0,
    "select_n": lambda x: jnp.where(x > 0, x, 0.0),
    "while": lambda x: lax.while_loop(lambda c: c[1].sum() < 30.0, lambda c: (c[0] + 1, c[1] * 2),
                                      (0, x))[1],
    "cond": lambda x: lax.cond(x.sum() > 0, lambda y: y, lambda y: -y, x),
    "convert_element_type": lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
    "dot_general": lambda x: x @ x.T,
    "conv_general_dilated": lambda x: lax.conv_general_dilated(x[None, None], x[None, None],
                                                               (1, 1), "SAME"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_primitive_error_names_primitive_and_line(name):
    with pytest.raises(ValueError) as e:
        lipschitz_bound(REFUSED[name], jnp.ones((3, 3)))
    msg = str(e.value)
    assert f"'{name}'" in msg
    assert "test_traced.py:" in msg


def test_division_by_a_constant_zero_is_refused():
    with pytest.raises(ValueError, match="zero entry"):
        lipschitz_bound(lambda x: x / jnp.asarray([1.0, 0.0, 2.0]), jnp.ones(3))


def test_batchnorm_training_mode_refused_and_eval_mode_bounded():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'mul'|'rsqrt'|'integer_pow'|'square'"):
        lipschitz_bound(bn, jnp.ones((4, 3)))
    bn.eval()
    bn.var[...] = jnp.asarray([4.0, 0.25, 1.0])
    f = lambda x: bn(x)  # noqa: E731
    x = np.asarray(_w(4, 3))
    for p in PS:
        _check_linear(f, x, p)


def test_dropout_eval_is_identity():
    model = nnx.Sequential(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    model.eval()
    assert float(lipschitz_bound(model, jnp.ones((1, 3))).value) == pytest.approx(
        float(trivial_bound(model.layers[0], (3,)).value))


def test_bad_arguments():
    with pytest.raises(ValueError, match="example_input"):
        lipschitz_bound(jnp.sin, jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="p must be"):
        lipschitz_bound(jnp.sin, jnp.ones(3), p=3)
    with pytest.raises(ValueError, match="one array"):
        lipschitz_bound(lambda x: (x, x), jnp.ones(3))


def test_while_with_constant_trip_count_is_unrolled():
    f = lambda x: lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0),  # noqa: E731
                                 (0, x))[1]
    assert 8.0 <= _bound(f, np.ones(3, np.float32), 2) <= 8.0 * (1 + 1e-4)


def test_branch_index_traced_under_jit_takes_max_over_branches():
    """Inside a jitted step the parameters are traced: the index of a cond computed from them is
    unknown, so the bound is the larger branch's."""
    w = _w(3, 3)

    @jax.jit
    def bound(w, s):
        return lipschitz_bound(lambda x: lax.cond(s > 0, lambda y: y @ w, lambda y: 3.0 * y, x),
                               jax.ShapeDtypeStruct((3,), jnp.float32)).value

    both = float(bound(w, 1.0))
    assert both >= max(3.0, np.linalg.norm(np.asarray(w, np.float64), 2))
    assert both == float(bound(w, -1.0))


def test_while_counter_known_inside_jit():
    """Under a caller's jit the counter's constant equations are still evaluated now, so the
    trip count is known (it was refused as 'not known at trace time')."""

    @jax.jit
    def bound(w):
        body = lambda c: (c[0] + 1, jnp.sin(c[1] @ w))  # noqa: E731
        f = lambda x: lax.while_loop(lambda c: c[0] < 2, body, (0, x))[1]  # noqa: E731
        return lipschitz_bound(f, jax.ShapeDtypeStruct((3,), jnp.float32)).value

    assert 4.0 <= float(bound(2.0 * jnp.eye(3))) <= 4.0 * (1 + 1e-4)
