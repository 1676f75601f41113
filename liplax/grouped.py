r"""Grouped power iteration in training: same-shape layers in one batched step per group.

The fast path of :func:`liplax.bounds.trivial_bound_penalty` evaluates, for every layer
registered with ``power="estimate"`` (``Dense``, ``SinusoidalDense``, ``Conv``;
:mod:`liplax.nn.registry`) and p = 2, a warm power-iteration step on its
:class:`~liplax.nn.PowerIterState` (Miyato et al., ICLR 2018). A model often holds many layers
of one shape (an MLP with 8 hidden 256×256 layers, a CNN with several 3×3 C→C convolutions).
:func:`grouped_log_bound` computes the same value as
``liplax.nn.walk.log_bound_of(model, input_shape, p=p, fast=True)``:

1. walk the model with the one model walk (:mod:`liplax.nn.walk`, as the per-layer path does),
   propagating the per-example shape, and collect the power-step layers;
2. group them by everything their step depends on statically (the layer's ``power_key``
   hook): the layer's power function (dense: :func:`liplax.nn.dense.power_sigma`; conv:
   :func:`liplax.conv.power_iteration`), kernel shape and dtype, ``power_iters``, and for
   convolutions the input size, strides and padding;
3. per group, stack the kernels (K_1, …, K_G) and states (u_1, …, u_G) along a new leading axis
   and run **one** batched step (σ̂_g, u'_g) = step(K_g, u_g) for all g at once (the layer's
   ``power_step`` hook): ``jax.vmap`` of :func:`liplax.nn.dense.power_sigma` for dense layers;
   for convolutions :func:`liplax.nn.conv.conv_power_step`, the arithmetic of
   :func:`liplax.conv.power_iteration` with the convolution written as one batched matrix
   product (im2col);
4. write u'_g back into layer g's state when the layer is in training mode
   (``deterministic=False``), exactly as the per-layer path does, and use σ̂_g as its factor.

The sum Σ_l log Lip_l is then formed in the per-layer path's order. Layers without a power
step (activations, AOL, spectral layers, plain ``nnx`` layers, p ≠ 2) use their own fast values.
:func:`grouped_call` does the same for the spectral normalization in the forward pass:
``grouped_call(model, x)`` equals ``model(x)`` with the power steps of all training-mode
layers registered with ``power="forward"`` (``SpectralDense``/``SpectralConv``) of one key
run as one batched step before the layers are applied. Same semantics (value, ``kind``, state
update and gradient, up to the float reordering of batched arithmetic); only the number of
operations changes: one batched matrix–vector (or im2col matrix) chain per group instead of
one per layer. Guarantee:
``estimate`` whenever a power step is used (σ̂ ≤ σ₁), as for the per-layer path. The forward
divides by σ̂ with the guard of the per-layer path (:func:`liplax.nn.spectral.normalized`:
W itself where σ̂ = 0), so both paths give the same output on the same model.
Reference: Miyato, Kataoka, Koyama, Yoshida, *Spectral Normalization for GANs*, ICLR 2018;
``jax.vmap`` (Bradbury et al., 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from liplax._checks import check_p
from liplax.nn.conv import conv_power_step
from liplax.nn.registry import entry
from liplax.nn.spectral import normalized
from liplax.nn.walk import fold_shapes, forward, leaf_output_shape, leaves, log_bound_of


@dataclass
class PowerGroup:
    """Layers sharing one batched power step: ``key`` (the static arguments) and the layers."""

    key: tuple
    layers: list = field(default_factory=list)


def _has_power(layer, role: str) -> bool:
    """Whether the exact type of ``layer`` is registered with this power role (a subclass may
    override the estimate or the forward, so it takes its own per-layer path)."""
    e = entry(layer)
    return e is not None and e.power == role


def power_groups(model, input_shape: Sequence[int], *, p=2) -> list[PowerGroup]:
    """The layers of ``model`` whose ℓp fast value is a power step, grouped by static key.

    Empty for p ≠ 2. Each layer is checked as its own ``lipschitz_estimate`` checks it (the
    shape it sees, and for ``Conv`` that it matches the ``input_size`` of its state). A layer
    used more than once (shared weights) is left out: the per-layer path steps its state once
    per use, in order, and so does :func:`grouped_log_bound` for it.
    """
    p = check_p(p, "power_groups")
    if p != 2:
        return []
    found: list = []

    def collect(layer, shape, _):
        out = leaf_output_shape(layer, shape)
        if _has_power(layer, "estimate"):
            found.append((layer, layer.power_key(shape)))
        return None, out

    fold_shapes(model, input_shape, collect)
    return _group(found)


def _group(found: list) -> list[PowerGroup]:
    """Group (layer, key) pairs by key, in order; a layer found more than once is left out."""
    groups: dict[tuple, PowerGroup] = {}
    for layer, key in found:
        if sum(other is layer for other, _ in found) == 1:
            groups.setdefault(key, PowerGroup(key)).layers.append(layer)
    return list(groups.values())


def _group_step(group: PowerGroup) -> tuple[jax.Array, jax.Array]:
    """(σ̂ (G,), u' (G, …)) of one batched power step over the group's stacked layers."""
    kernels = jnp.stack([layer.kernel[...] for layer in group.layers])
    states = jnp.stack([layer.power_state[...] for layer in group.layers])
    return group.layers[0].power_step(kernels, states)


def grouped_log_bound(model, input_shape: Sequence[int], *, p=2) -> tuple[jax.Array, str]:
    r"""(Σ_l log Lip_l, kind) of the penalty's fast path with same-shape power steps grouped.

    Equals ``liplax.nn.walk.log_bound_of(model, input_shape, p=p, fast=True)`` (value,
    kind and power-state updates; see the module docstring): every group of layers with the
    same power-step key runs one ``jax.vmap``-ed step σ̂_g = ‖K_g ŷ_g‖, u'_g ∝ K_g ŷ_g (dense;
    the conv analogue on the real operator), and each layer in training mode stores its u'_g.
    Guarantee: ``estimate`` when any power step is used, else the kind of the layers' values.
    Usable inside ``nnx.jit``/``nnx.value_and_grad``; the gradient is that of the per-layer path
    (u held fixed). Reference: Miyato et al., ICLR 2018.

    Args:
      model: a liplax layer or container (or ``nnx.Sequential`` of supported layers).
      input_shape: one example's shape, no batch axis.
      p: 1, 2 or ``inf`` (only p = 2 has power steps; other p give the per-layer values).
    """
    p = check_p(p, "grouped_log_bound")
    sigmas: dict[int, jax.Array] = {}
    for group in power_groups(model, input_shape, p=p):
        sigma, u = _group_step(group)
        for g, layer in enumerate(group.layers):
            sigmas[id(layer)] = sigma[g]
            if not layer.deterministic:
                layer.power_state[...] = u[g]

    def value(layer, shape):
        if id(layer) in sigmas:
            return jnp.log(sigmas[id(layer)]), "estimate"
        return log_bound_of(layer, shape, p=p, fast=True)

    return log_bound_of(model, input_shape, p=p, fast=True, leaf_log=value)


# --------------------------------------------------------------------------------------------
# Spectral normalization in the forward pass.
# --------------------------------------------------------------------------------------------


def spectral_groups(model) -> list[PowerGroup]:
    """The layers registered with ``power="forward"`` (``SpectralDense``/``SpectralConv``) in
    training mode, grouped by power-step key.

    Layers in inference mode take no power step (σ̂ = ‖A u‖ from the stored u) and are left to
    their own forward; so is a layer used more than once.
    """
    found = [(node.layer, node.layer.power_key()) for node in leaves(model)
             if _has_power(node.layer, "forward") and not node.layer.deterministic]
    return _group(found)


def grouped_call(model, x: jax.Array) -> jax.Array:
    r"""``model(x)`` with the training-mode spectral normalizations done as grouped power steps.

    Every ``SpectralDense``/``SpectralConv`` (layers registered with ``power="forward"``) in
    training mode divides its kernel by σ̂ from one
    warm power step and stores the new vector (Miyato et al., ICLR 2018). Here the steps of
    all such layers with the same key (kernel shape, dtype, ``power_iters``, and for
    convolutions input size, stride and padding) run first, as one batched step per group
    (σ̂_g, u'_g) = step(K_g, u_g) (as :func:`grouped_log_bound`), the u'_g are stored, and the
    forward pass then applies each layer with the kernel K_g/σ̂_g (``apply_kernel``; W itself
    where σ̂ = 0, the guard of :func:`liplax.nn.spectral.normalized` the layers use). Same
    output, state updates and gradient as ``model(x)`` (up to float reordering); other layers,
    and containers other than ``Sequential``/``nnx.Sequential``/``Residual``, run as usual.
    Guarantee: the normalized layers are what ``model(x)`` computes (σ̂ ≤ σ₁, an estimate; the
    certificate is ``lipschitz_bound``).

    Args:
      model: a liplax layer or container.
      x: the input batch.
    """
    sigmas: dict[int, jax.Array] = {}
    for group in spectral_groups(model):
        sigma, u = _group_step(group)
        for g, layer in enumerate(group.layers):
            sigmas[id(layer)] = sigma[g]
            layer.power_state[...] = u[g]

    def apply(layer, x):
        if id(layer) in sigmas:
            return layer.apply_kernel(x, normalized(layer.kernel[...], sigmas[id(layer)]))
        return layer(x)

    return forward(model, x, apply)


__all__ = [
    "PowerGroup",
    "conv_power_step",
    "grouped_call",
    "grouped_log_bound",
    "power_groups",
    "spectral_groups",
]
