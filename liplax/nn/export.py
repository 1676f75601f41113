"""``to_plain``: export a liplax model to plain flax modules with the normalization folded in.

A fold of the model walk (:mod:`liplax.nn.walk`): ``Sequential`` becomes ``nnx.Sequential``,
``Residual`` keeps its wrapper around the exported branch, and every registered layer
(:mod:`liplax.nn.registry`, exact type) exports itself through its ``to_plain()`` hook: dense
layers as ``nnx.Linear`` and convolutions as ``nnx.Conv`` whose kernel is the layer's effective
weight (W/σ̂, bjorck(W), diag(d)W, the ℓ1-projected W, …) evaluated from the current parameters
and state without moving any state; ``SinusoidalDense`` as ``nnx.Sequential(nnx.Linear,
CosSin())``; parameter-free layers as clones. Plain flax layers and functions are kept, and any
other liplax module (e.g. an unregistered subclass, whose ``__call__`` may differ from its
parent's) is cloned: the same module computes the same function. The plain model computes the
same function as the liplax model in inference mode (``model.eval()``). Call it outside ``jit``.
"""

from __future__ import annotations

from flax import nnx

from liplax.nn._base import LipschitzModule
from liplax.nn.containers import Residual
from liplax.nn.plain import is_plain
from liplax.nn.registry import entry
from liplax.nn.walk import fold, layer_name


def _leaf(layer, _, path):
    if entry(layer) is not None:
        return layer.to_plain(), None
    if is_plain(layer) and not isinstance(layer, nnx.Module):  # a plain function
        return layer, None
    if is_plain(layer) or isinstance(layer, LipschitzModule):
        return nnx.clone(layer), None
    raise TypeError(f"to_plain: cannot export {layer_name(layer)}")


def to_plain(model):
    """A plain-flax copy of ``model`` (``nnx.Linear``/``nnx.Conv``/``nnx.Sequential``).

    Raises ``TypeError`` for a module it does not know.
    """
    return fold(
        model,
        None,
        _leaf,
        chain=lambda layers: nnx.Sequential(*layers),
        residual=lambda inner, *_: (Residual(inner), None),
        check=False,
    )[0]
