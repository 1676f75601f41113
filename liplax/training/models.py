r"""The models a :class:`~liplax.training.config.Config` names, and the experiments' small MLPs.

The architectures (:func:`build_model`) are the ones the experiments compare:

- ``sin_mlp``: bias-free sinusoidal layers x ↦ (cos xW, sin xW) (:class:`liplax.nn.SinusoidalDense`)
  and a final dense layer. Each sinusoidal layer's Jacobian has the singular values of W at
  *every* x (JᵀJ = W diag(sin² + cos²) Wᵀ = WWᵀ), so its trivial factor ‖W‖₂ is attained
  everywhere: the only looseness of the product bound is misalignment between layers, which the
  trivial-bound penalty removes.
- ``abs_mlp`` / ``crelu_mlp``: dense layers with the norm-saturating activations |z| and
  (relu z, relu −z) (gradient norm preserving almost everywhere).
- ``relu_mlp``: the usual ReLU network (with biases), the baseline.
- ``groupsort_mlp``: Björck-orthonormalized layers with GroupSort (MaxMin): 1-Lipschitz by
  construction (Anil et al., ICML 2019).
- ``aol_mlp``: almost-orthogonal layers (:class:`liplax.nn.AOLDense`, certified 1-Lipschitz in
  closed form) with MaxMin (Prach & Lampert, ECCV 2022).
- ``cnn``: a small convolutional network (circular convolutions, abs, average pooling).

:func:`lipschitz_mlp` builds the 1-Lipschitz (ℓ2) MLPs with biases of the experiments
(Björck-orthonormalized or spectrally normalized layers, MaxMin or ReLU).

References: Anil, Lucas & Grosse, "Sorting out Lipschitz function approximation", ICML 2019;
Miyato et al., "Spectral normalization for generative adversarial networks", ICLR 2018;
Prach & Lampert, "Almost-orthogonal layers for efficient general-purpose Lipschitz networks",
ECCV 2022.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from liplax import nn as lnn
from liplax.training.config import Config
from liplax.training.models_cnn import CNN_MODELS, build_cnn

ACTIVATIONS = ("maxmin", "relu")
WEIGHTS = ("bjorck", "spectral")
# The 1-Lipschitz-by-construction MLPs: their dense layer (each followed by MaxMin).
ONE_LIPSCHITZ = {"groupsort_mlp": lnn.BjorckDense, "aol_mlp": lnn.AOLDense}


def build_model(
    config: Config, input_shape: Sequence[int], num_classes: int, *, rngs: nnx.Rngs
) -> lnn.Sequential:
    """The model of ``config.model`` for one example of ``input_shape`` (H, W, C) and k classes.

    All parameters are created here (nothing lazily); power-iteration state is sized from
    ``input_shape``. The final layer is a bias-free :class:`liplax.nn.Dense` (biases do not change
    the Lipschitz constant; the bias-free sinusoidal network is the one the penalty makes tight).
    """
    shape = tuple(int(s) for s in input_shape)
    d = math.prod(shape)
    w = config.widths
    k = int(num_classes)
    if config.model in CNN_MODELS:  # strided and AOL CNNs (liplax.training.models_cnn)
        return build_cnn(config.model, shape, w, k, bias=config.bias, init_norm=config.init_norm,
                         activation=config.activation, rngs=rngs)
    if config.model == "cnn":
        if len(shape) != 3:
            raise ValueError(f"build_model: cnn needs (H, W, C) inputs, got {shape}")
        h, wd, c = shape
        layers: list = []
        for ch in w:
            layers += [
                lnn.Conv(c, ch, (3, 3), input_size=(h, wd), padding="CIRCULAR", rngs=rngs),
                lnn.Abs(),
                lnn.AvgPool((2, 2)),
            ]
            c, h, wd = ch, h // 2, wd // 2
            if h < 1 or wd < 1:
                raise ValueError(
                    f"build_model: input {shape} too small for {len(w)} pooling blocks"
                )
        return lnn.Sequential(*layers, lnn.Flatten(), lnn.Dense(h * wd * c, k, rngs=rngs))
    layers = [lnn.Flatten()]
    fan_in = d
    one_lip = _one_lipschitz_layer(config, rngs)
    init = {} if config.init_norm == 0 else {
        "kernel_init": nnx.initializers.orthogonal(scale=config.init_norm)}
    for width in w:
        if config.model == "sin_mlp":
            layers.append(lnn.SinusoidalDense(fan_in, width, rngs=rngs, **init))
            fan_in = 2 * width
        elif config.model in ONE_LIPSCHITZ:
            layers += [one_lip(fan_in, width), lnn.MaxMin()]
            fan_in = width
        else:
            layers.append(lnn.Dense(fan_in, width, use_bias=True, rngs=rngs, **init))
            if config.model == "relu_mlp":
                layers.append(lnn.ReLU())
                fan_in = width
            elif config.model == "abs_mlp":
                layers.append(lnn.Abs())
                fan_in = width
            else:  # crelu_mlp
                layers.append(lnn.CReLU())
                fan_in = 2 * width
    if config.model in ONE_LIPSCHITZ:
        layers.append(one_lip(fan_in, k))
    else:
        layers.append(lnn.Dense(fan_in, k, rngs=rngs, **init))
    return lnn.Sequential(*layers)


def _one_lipschitz_layer(config: Config, rngs: nnx.Rngs):
    """(in, out) ↦ the dense layer of a 1-Lipschitz MLP config (Björck settings from config)."""
    cls = ONE_LIPSCHITZ.get(config.model)
    if cls is lnn.BjorckDense:
        return lambda a, b: cls(a, b, num_iters=config.bjorck_iters, order=config.bjorck_order,
                                stop_gradient=config.bjorck_stop_gradient, rngs=rngs)
    return lambda a, b: cls(a, b, rngs=rngs)


def lipschitz_mlp(
    sizes: Sequence[int], *, activation: str, weights: str, key: jax.Array, bjorck_iters: int = 15
) -> lnn.Sequential:
    """A 1-Lipschitz (ℓ2) MLP ``sizes[0] → … → sizes[-1]`` with biases.

    ``weights``: ``"bjorck"`` (:class:`liplax.nn.BjorckDense`, orthonormalized) or ``"spectral"``
    (:class:`liplax.nn.SpectralDense`, divided by a warm power-iteration estimate);
    ``activation``: ``"maxmin"`` (GroupSort with groups of 2, gradient-norm preserving) or
    ``"relu"``. The hidden widths must be even for MaxMin.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    rngs = nnx.Rngs(params=key)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if weights == "bjorck":
            layers.append(lnn.BjorckDense(a, b, use_bias=True, num_iters=bjorck_iters, rngs=rngs))
        else:
            layers.append(lnn.SpectralDense(a, b, use_bias=True, power_iters=2, rngs=rngs))
        if i < len(sizes) - 2:
            layers.append(lnn.MaxMin() if activation == "maxmin" else lnn.ReLU())
    return lnn.Sequential(*layers)


__all__ = ["ACTIVATIONS", "WEIGHTS", "build_model", "lipschitz_mlp"]
