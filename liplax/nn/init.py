r"""Orthogonal initialization of convolutions: a kernel whose layer is an isometry (or co-isometry).

The orthogonal initialization of a dense layer (all singular values 1) starts a free-weight
network with a tight trivial bound: each factor is attained along every direction, so the
product is attained wherever the activations pass the gain (|·|, GroupSort). For a
convolution, :func:`isometric_conv_init` gives the analogue (the *delta-orthogonal*
initialization of Xiao et al., ICML 2018, extended to strides and to a first layer with few
input channels):

- it chooses a set T of kernel taps that distinct outputs read at **disjoint** input positions;
- on T it stacks an orthogonal matrix M of shape (|T|·c_in, c_out) (orthonormal rows when
  |T|·c_in ≤ c_out, else orthonormal columns), scaled by ``scale``/√r; all other taps are 0.

The taps are:

- **stride s > 1**: the s × s block starting at tap ``offset`` (default (k − 1)//2, where
  circular and odd-kernel SAME paddings centre the kernel). Output p reads input s·p + 0 … s − 1:
  the layer is space-to-depth followed by the 1 × 1 map M, r = 1;
- **stride 1, k_h·k_w·c_in ≤ c_out**: all taps, r = k_h·k_w. For a circular convolution the
  frequency matrix is K̂(ω) = Σ_t e^{−iω·t} M_t with M_t M_{t'}ᵀ = δ_{tt'} I, so
  K̂(ω)K̂(ω)* = r·I at every frequency ω: an isometry after the 1/√r scale (a first layer over few
  input channels gets k_h·k_w distinct filters, not one filter repeated);
- **stride 1 otherwise**: the centre tap, r = 1 (the delta-orthogonal kernel).

Guarantee: for a circular convolution whose stride divides the input (the configuration of
:mod:`liplax.training.models_cnn`), every singular value of the layer is ``scale`` when M has
orthonormal rows, and its norm is ``scale`` with all singular values in {0, ``scale``} otherwise.
Under zero padding the layer's norm is ≤ ``scale`` (each output reads a disjoint subset of
the padded input through M, and padding only drops inputs). Tested against the SVD of the
materialized operator (``tests/test_nn_init.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _taps(kh: int, kw: int, c_in: int, c_out: int, sh: int, sw: int, offset) -> tuple:
    """(rows, cols) of the nonzero taps and the scale divisor r (module docstring)."""
    if (sh, sw) != (1, 1):
        oh, ow = ((kh - 1) // 2, (kw - 1) // 2) if offset is None else offset
        if oh < 0 or ow < 0 or oh + sh > kh or ow + sw > kw:
            raise ValueError(f"isometric_conv_init: the {sh}×{sw} block of taps at offset "
                             f"{(oh, ow)} must fit in the {kh}×{kw} kernel")
        return range(oh, oh + sh), range(ow, ow + sw), 1
    if kh * kw * c_in <= c_out:
        return range(kh), range(kw), kh * kw
    return range((kh - 1) // 2, (kh - 1) // 2 + 1), range((kw - 1) // 2, (kw - 1) // 2 + 1), 1


def isometric_conv_init(strides=1, scale: float = 1.0, offset: tuple[int, int] | None = None):
    """A ``kernel_init`` (key, HWIO shape, dtype) ↦ kernel of an (co-)isometric convolution.

    ``strides``: the layer's strides (int or pair); ``scale``: the layer's norm (> 0);
    ``offset``: first tap of the strided block (default: the kernel's centre, (k − 1)//2).
    See the module docstring for the construction and its guarantee.
    """
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    if sh < 1 or sw < 1:
        raise ValueError(f"isometric_conv_init: strides must be ≥ 1, got {strides!r}")
    if not scale > 0:
        raise ValueError(f"isometric_conv_init: scale must be > 0, got {scale!r}")

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        if len(shape) != 4:
            raise ValueError(f"isometric_conv_init: expected an HWIO kernel shape, got {shape}")
        kh, kw, c_in, c_out = shape
        rows, cols, r = _taps(kh, kw, c_in, c_out, sh, sw, offset)
        n = len(rows) * len(cols)
        m = nnx.initializers.orthogonal()(key, (n * c_in, c_out), dtype)
        m = (m * (scale / r**0.5)).reshape(len(rows), len(cols), c_in, c_out)
        kernel = jnp.zeros((kh, kw, c_in, c_out), dtype)
        return kernel.at[rows.start:rows.stop, cols.start:cols.stop].set(m)

    return init


__all__ = ["isometric_conv_init"]
