"""isometric_conv_init: the singular values of the initialized layer, from its float64 matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax.nn.init import isometric_conv_init
from tests import reference as ref


def _singular_values(c_in, c_out, hw, stride, padding, scale, k=3, seed=0):
    """Singular values and shape of the float64 matrix of the initialized layer."""
    with jax.enable_x64(True):
        kernel = isometric_conv_init(stride, scale)(jax.random.key(seed), (k, k, c_in, c_out),
                                                    jnp.float64)
    op = ref.conv_operator(np.asarray(kernel), (hw, hw), stride, padding)
    return np.linalg.svd(op, compute_uv=False), op.shape


@pytest.mark.parametrize(
    "c_in, c_out, stride, isometry",
    [
        (1, 16, 1, True),   # all 9 taps: 9·1 ≤ 16
        (3, 5, 1, True),    # centre tap, c_in ≤ c_out
        (5, 3, 1, False),   # centre tap, orthonormal columns
        (2, 8, 2, True),    # 2×2 block: 4·2 ≤ 8
        (4, 6, 2, False),   # 2×2 block: 16 > 6
    ],
)
def test_circular_layer_is_an_isometry_or_coisometry(c_in, c_out, stride, isometry):
    s, (m, n) = _singular_values(c_in, c_out, 8, stride, "CIRCULAR", 0.7)
    assert abs(s[0] - 0.7) < 1e-12  # its norm is the scale (the trivial bound's factor)
    if isometry:  # every direction of the input passes at the same gain
        assert s.size == n and np.allclose(s, 0.7, atol=1e-12)
    else:  # a co-isometry: every output direction is reached, at the scale
        assert m < n and s.size == m and np.allclose(s, 0.7, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_zero_padding_never_exceeds_the_scale(stride):
    s, _ = _singular_values(3, 4, 7, stride, "SAME", 1.3, seed=3)
    assert s[0] <= 1.3 * (1 + 1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="scale must be > 0"):
        isometric_conv_init(1, 0.0)
    with pytest.raises(ValueError, match="strides must be ≥ 1"):
        isometric_conv_init(0)
    with pytest.raises(ValueError, match="must fit in the 3×3 kernel"):
        isometric_conv_init(3, offset=(1, 1))(jax.random.key(0), (3, 3, 1, 2))
    with pytest.raises(ValueError, match="HWIO"):
        isometric_conv_init(1)(jax.random.key(0), (3, 3, 2))
