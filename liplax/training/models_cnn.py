r"""Convolutional models of the training configs: pooled, strided (tight) and AOL (1-Lipschitz).

Over (H, W, C) inputs, one convolution per entry of ``config.widths``, then
``Flatten`` and a bias-free dense head (docs/design.md §training, "CNNs whose trivial bound is
tight"):

The pooled ``cnn`` of :mod:`liplax.training.models` (2×2 average pooling after every
convolution) is loose by construction: average pooling has ℓ2 constant 1/2 but passes that gain
only for inputs constant on each window. Here:

- ``cnn_strided``: circular 3×3 :class:`liplax.nn.Conv` whose second and third convolutions
  have stride 2 (downsampling inside the convolution, no pooling), |·| (or MaxMin, the
  ``activation`` option) after each. Every factor of the trivial bound is attainable: the
  circular convolution's ℓ2 norm (exact, by FFT and polyphase decomposition, Sedghi et al.
  2019) is reached along its top singular vector, |·| has Jacobian diag(±1) (MaxMin a
  permutation), an isometry wherever no pre-activation is 0 (no tie), and the final
  dense layer's norm is exact. What remains is misalignment between layers, which the
  trivial-bound penalty removes.
- ``cnn_exact``: ``cnn_strided`` with :class:`liplax.nn.ExactConv` (the same map and
  certificate; the penalty sees each convolution's exact norm instead of a warm
  power-iteration estimate from below, which lags on a convolution's near-degenerate spectrum).
- ``cnn_aol``: the same layout with :class:`liplax.nn.AOLConv` (certified 1-Lipschitz for every
  size, padding and stride; Prach & Lampert, ECCV 2022), MaxMin (GroupSort with groups of 2;
  Anil et al., ICML 2019) and an :class:`liplax.nn.AOLDense` head: the 1-Lipschitz baseline.

A stride-2 circular convolution needs an even input (the stride must divide the size for the
exact norm); a layer that would see an odd size keeps stride 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from liplax import nn as lnn
from liplax.nn.init import isometric_conv_init
from liplax.training.config import CNN_ACTIVATIONS

#: the models built here (``cnn``, the pooled one, is built by :mod:`liplax.training.models`).
CNN_MODELS = ("cnn_strided", "cnn_aol", "cnn_exact")
#: the (0-based) convolutions that downsample by 2 in the strided families.
STRIDED_LAYERS = (1, 2)


def _check_shape(model: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"build_model: {model} needs (H, W, C) inputs, got {shape}")
    return shape


def _strided(model, shape, widths, k: int, bias: bool, init_norm: float, activation: str,
             rngs: nnx.Rngs) -> lnn.Sequential:
    h, wd, c = _check_shape(model, shape)
    aol = model == "cnn_aol"
    if aol and any(ch % 2 for ch in widths):
        raise ValueError(f"build_model: cnn_aol needs even widths (MaxMin sorts pairs), "
                         f"got {tuple(widths)}")
    layers: list = []
    for i, ch in enumerate(widths):
        s = 2 if i in STRIDED_LAYERS and h % 2 == 0 and wd % 2 == 0 else 1
        if aol:
            layers += [lnn.AOLConv(c, ch, (3, 3), strides=s, padding="CIRCULAR", use_bias=bias,
                                   rngs=rngs),
                       lnn.MaxMin()]
        else:
            conv = lnn.ExactConv if model == "cnn_exact" and (h % s, wd % s) == (0, 0) else lnn.Conv
            init = {} if init_norm == 0 else {"kernel_init": isometric_conv_init(s, init_norm)}
            layers += [conv(c, ch, (3, 3), input_size=(h, wd), strides=s, padding="CIRCULAR",
                            use_bias=bias, rngs=rngs, **init),
                       lnn.MaxMin() if activation == "maxmin" else lnn.Abs()]
        c, h, wd = ch, h // s, wd // s
    if aol:
        return lnn.Sequential(*layers, lnn.Flatten(), lnn.AOLDense(h * wd * c, k, rngs=rngs))
    init = {} if init_norm == 0 else {
        "kernel_init": nnx.initializers.orthogonal(scale=init_norm)}
    return lnn.Sequential(*layers, lnn.Flatten(), lnn.Dense(h * wd * c, k, rngs=rngs, **init))


def build_cnn(
    model: str, input_shape: Sequence[int], widths: Sequence[int], num_classes: int, *,
    bias: bool = False, init_norm: float = 0.0, activation: str = "abs", rngs: nnx.Rngs,
) -> lnn.Sequential:
    """The CNN named ``model`` (one of :data:`CNN_MODELS`) for one example of shape (H, W, C).

    ``widths``: the output channels of the convolutions; ``num_classes``: the head's outputs;
    ``bias``: the convolutions carry a bias (the head never does); ``init_norm`` > 0: the
    free-weight layers start as isometries or co-isometries of that norm
    (:func:`liplax.nn.init.isometric_conv_init`, an orthogonal head), 0: LeCun-normal;
    ``activation``: ``abs`` or ``maxmin`` after each free-weight convolution (AOL: MaxMin).
    All parameters and power-iteration states are created here. See the module docstring.
    """
    if model not in CNN_MODELS:
        raise ValueError(f"build_cnn: model must be one of {CNN_MODELS}, got {model!r}")
    if activation not in CNN_ACTIVATIONS:
        raise ValueError(f"build_cnn: activation must be one of {CNN_ACTIVATIONS}, "
                         f"got {activation!r}")
    shape = tuple(int(s) for s in input_shape)
    return _strided(model, shape, widths, int(num_classes), bool(bias), float(init_norm),
                    activation, rngs)


__all__ = ["CNN_MODELS", "STRIDED_LAYERS", "build_cnn"]
