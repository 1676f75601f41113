"""Lipschitz layers for Flax NNX (docs/design.md §layer contract).

Every layer and activation has ``output_shape(input_shape)``, ``lipschitz_bound(input_shape, *,
p=2) -> Bound`` (certified where possible) and ``lipschitz_estimate`` (the fast penalty value).
``input_shape`` is one example's shape without the batch axis: ``(in,)`` for dense layers,
``(H, W, C)`` for convolutions. ``p`` is 1, 2 or ``inf``. Power-iteration vectors live in
:class:`PowerIterState` variables created in ``__init__``; they move in training mode only
(``model.eval()`` freezes them); parameters are never written.

Every layer class follows one contract (:class:`LipschitzModule`: it declares its bound, fast
estimate, output shape and plain export once) and is registered with one ``@register_layer``
line (:mod:`liplax.nn.registry`); every consumer of a model's layer tree goes through the one
walk of :mod:`liplax.nn.walk`. CONTRIBUTING.md shows how to add a layer.
"""

from liplax._checks import check_p
from liplax.nn._base import LipschitzModule, PowerIterState
from liplax.nn.activations import (
    Abs,
    Activation,
    CosSin,
    CReLU,
    FullSort,
    GroupSort,
    MaxMin,
    PolyActivation,
    ReLU,
    SinPoly,
    cos_sin,
    crelu,
    full_sort,
    group_sort,
    max_min,
    poly_activation,
    sin_poly,
)
from liplax.nn.aol import AOLConv, AOLDense, aol_conv, aol_dense
from liplax.nn.bjorck import BjorckDense, bjorck
from liplax.nn.containers import Residual, Sequential
from liplax.nn.conv import Conv
from liplax.nn.dense import Dense
from liplax.nn.exact_conv import ExactConv
from liplax.nn.export import to_plain
from liplax.nn.init import isometric_conv_init
from liplax.nn.linf import LinfDense, project_l1_ball
from liplax.nn.misc import AvgPool, Flatten, MaxPool, Scale
from liplax.nn.registry import register_layer
from liplax.nn.scaled_identity import ScaledIdentity
from liplax.nn.sinusoidal import SinusoidalDense
from liplax.nn.spectral import SpectralConv, SpectralDense
from liplax.nn.walk import bound_of, log_bound_of, output_shape_of

__all__ = [
    "AOLConv",
    "AOLDense",
    "Abs",
    "Activation",
    "AvgPool",
    "BjorckDense",
    "CReLU",
    "Conv",
    "ExactConv",
    "CosSin",
    "Dense",
    "Flatten",
    "FullSort",
    "GroupSort",
    "LinfDense",
    "LipschitzModule",
    "MaxMin",
    "MaxPool",
    "PolyActivation",
    "PowerIterState",
    "ReLU",
    "Residual",
    "Scale",
    "ScaledIdentity",
    "Sequential",
    "SinPoly",
    "SinusoidalDense",
    "SpectralConv",
    "SpectralDense",
    "aol_conv",
    "aol_dense",
    "bjorck",
    "bound_of",
    "check_p",
    "cos_sin",
    "crelu",
    "full_sort",
    "group_sort",
    "isometric_conv_init",
    "log_bound_of",
    "max_min",
    "output_shape_of",
    "poly_activation",
    "project_l1_ball",
    "register_layer",
    "sin_poly",
    "to_plain",
]
