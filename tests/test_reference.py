"""The NumPy reference (tests/reference.py) is the real layer: checked against flax.nnx.Conv.

These tests do not touch liplax; they establish that the truth the other tests compare against
is the operator of the layer users actually run.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from tests import reference as ref
from tests._helpers import seed_of

PADDINGS = ["CIRCULAR", "SAME", "VALID", ((1, 2), (0, 1)), ((2, 2), (2, 2)), ((0, 3), (3, 0)), 1]

# (kernel hw, input hw): ordinary sizes, a kernel larger than the input, 1x1 inputs, rectangles.
GEOMETRIES = [  # the first six run by default
    ((3, 3), (9, 7)),
    ((5, 5), (2, 2)),  # kernel much larger: taps alias several times under CIRCULAR
    ((7, 7), (3, 3)),  # circular pad (3, 3) = input 3: np.pad wrap wraps the whole input
    ((3, 3), (1, 1)),
    ((5, 3), (9, 2)),
    ((2, 2), (5, 5)),
    ((3, 3), (8, 8)),
    ((5, 5), (3, 3)),  # kernel larger than the input
    ((3, 1), (4, 6)),
    ((1, 1), (3, 3)),
]


def _flax_conv(kernel: np.ndarray, strides, padding) -> nnx.Conv:
    kh, kw, cin, cout = kernel.shape
    conv = nnx.Conv(
        cin,
        cout,
        kernel_size=(kh, kw),
        strides=strides,
        padding=padding,
        use_bias=False,
        rngs=nnx.Rngs(0),
    )
    conv.kernel[...] = jnp.asarray(kernel, dtype=jnp.float32)
    return conv


def _valid_for(padding, input_hw, kernel_hw) -> bool:
    try:
        ref.output_shape(input_hw, kernel_hw, 1, padding)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "strides",
    [1, 2, pytest.param((2, 1), marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)],
)
@pytest.mark.parametrize(
    "padding",
    [
        pytest.param(p, id=str(p), marks=() if i < 4 else pytest.mark.slow)
        for i, p in enumerate(PADDINGS)
    ],
)
@pytest.mark.parametrize(
    "geometry",
    [
        pytest.param(g, id=str(g), marks=() if i < 6 else pytest.mark.slow)
        for i, g in enumerate(GEOMETRIES)
    ],
)
def test_numpy_conv_is_flax_conv(geometry, padding, strides):
    (kh, kw), (h, w) = geometry
    if not _valid_for(padding, (h, w), (kh, kw)):
        pytest.skip("no output for this padding (flax/lax raise as well)")
    rng = np.random.default_rng(seed_of(geometry, padding, strides))
    cin, cout = 2, 3
    kernel = rng.standard_normal((kh, kw, cin, cout)).astype(np.float32)
    x = rng.standard_normal((4, h, w, cin)).astype(np.float32)
    got = np.asarray(_flax_conv(kernel, strides, padding)(jnp.asarray(x)), dtype=np.float64)
    want = ref.conv_apply(x, kernel, strides, padding)
    assert got.shape == want.shape
    assert got.shape[1:3] == ref.output_shape((h, w), (kh, kw), strides, padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max() + 1e-6)

    # The operator matrix applied to the flattened inputs is the layer.
    m = ref.conv_operator(kernel, (h, w), strides, padding)
    y = (m @ x.reshape(4, -1).astype(np.float64).T).T.reshape(want.shape)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1), (3, 2)])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 9])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_same_pads_match_lax(k, n, strides):
    got = tuple(ref.same_pads(n, k, s) for s in strides)
    want = tuple(tuple(p) for p in lax.padtype_to_pads((n, n), (k, k), strides, "SAME"))
    assert got == want


def test_circular_kernel_larger_than_input_wraps_in_flax():
    # A 5x5 kernel on a 2x2 input: the flax layer aliases taps modulo 2. The reference must agree,
    # and its norm must equal the FFT of the wrapped (not cropped) kernel.
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((5, 5, 2, 3)).astype(np.float32)
    x = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    got = np.asarray(_flax_conv(kernel, 1, "CIRCULAR")(jnp.asarray(x)), dtype=np.float64)
    np.testing.assert_allclose(got, ref.conv_apply(x, kernel, 1, "CIRCULAR"), rtol=1e-5, atol=1e-5)
    m = ref.conv_operator(kernel, (2, 2), 1, "CIRCULAR")
    assert ref.spectral_norm_truth(m) == pytest.approx(
        ref.circular_spectral_norm_fft(kernel, (2, 2)), rel=1e-12
    )
    # Cropping the kernel to the input would give a different (wrong) number.
    cropped = ref.circular_spectral_norm_fft(kernel[:2, :2], (2, 2))
    assert abs(cropped - ref.spectral_norm_truth(m)) > 1e-3


@pytest.mark.parametrize("n_hw", [(1, 1), (2, 2), (3, 5), (8, 8), (9, 9)])
@pytest.mark.parametrize("k_hw", [(1, 1), (3, 3), (5, 5), (3, 1)])
def test_operator_svd_matches_fft_route(k_hw, n_hw):
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((*k_hw, 3, 2))
    m = ref.conv_operator(kernel, n_hw, 1, "CIRCULAR")
    assert m.shape == (n_hw[0] * n_hw[1] * 2, n_hw[0] * n_hw[1] * 3)
    assert ref.spectral_norm_truth(m) == pytest.approx(
        ref.circular_spectral_norm_fft(kernel, n_hw), rel=1e-12
    )


def test_dense_operator_is_flax_linear():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    lin = nnx.Linear(5, 3, use_bias=False, rngs=nnx.Rngs(0))
    lin.kernel[...] = jnp.asarray(w)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    got = np.asarray(lin(jnp.asarray(x)), dtype=np.float64)
    want = (ref.dense_operator(w) @ x.T.astype(np.float64)).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # l_inf of the layer x -> x @ w: max over outputs of sum over inputs = max column abs-sum of w.
    assert ref.linf_truth(ref.dense_operator(w)) == pytest.approx(np.abs(w).sum(axis=0).max())
    assert ref.l1_truth(ref.dense_operator(w)) == pytest.approx(np.abs(w).sum(axis=1).max())


def test_linf_truth_is_the_induced_norm():
    # max_x ||Mx||_inf / ||x||_inf is attained at a sign vector: brute force on a small matrix.
    rng = np.random.default_rng(3)
    m = rng.standard_normal((4, 6))
    best = max(np.abs(m @ np.array(s)).max() for s in itertools.product((-1.0, 1.0), repeat=6))
    assert ref.linf_truth(m) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize(
    "padding,n_hw,strides",
    [("CIRCULAR", (4, 4), 1), ("CIRCULAR", (5, 3), 1), ("SAME", (4, 4), 1), ("VALID", (5, 4), 2)],
)
def test_gradient_formula_matches_finite_differences(padding, n_hw, strides):
    rng = np.random.default_rng(4)
    kernel = rng.standard_normal((3, 3, 2, 2))
    grad, _ = ref.conv_kernel_gradient_of_sigma1(kernel, n_hw, strides, padding)
    h = 1e-6
    fd = np.zeros(kernel.size)
    flat = kernel.reshape(-1)
    for j in range(kernel.size):
        kp, km = flat.copy(), flat.copy()
        kp[j] += h
        km[j] -= h
        fd[j] = (
            ref.spectral_norm_truth(
                ref.conv_operator(kp.reshape(kernel.shape), n_hw, strides, padding)
            )
            - ref.spectral_norm_truth(
                ref.conv_operator(km.reshape(kernel.shape), n_hw, strides, padding)
            )
        ) / (2 * h)
    np.testing.assert_allclose(grad.reshape(-1), fd, rtol=1e-5, atol=1e-6)


def test_reference_has_no_jax():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ref))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert not names & {"jax", "jaxlib", "flax", "liplax"}, names


def test_jax_conv_float64_matches_reference():
    # A tighter check in float64 through lax directly (flax's own CIRCULAR recipe reproduced).
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        kernel = rng.standard_normal((3, 2, 2, 3))
        x = rng.standard_normal((2, 6, 5, 2))
        for padding in ("SAME", "VALID", ((1, 0), (2, 1))):
            pads = padding if isinstance(padding, str) else list(padding)
            y = lax.conv_general_dilated(
                jnp.asarray(x),
                jnp.asarray(kernel),
                (2, 1),
                pads,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=lax.Precision.HIGHEST,
            )
            np.testing.assert_allclose(
                np.asarray(y), ref.conv_apply(x, kernel, (2, 1), padding), rtol=1e-12, atol=1e-12
            )
