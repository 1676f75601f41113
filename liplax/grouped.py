r"""Grouped power iteration in training: same-shape layers in one batched step per group.

The fast path of :func:`liplax.bounds.trivial_bound_penalty` evaluates, for every free-weight
layer (``Dense``, ``SinusoidalDense``, ``Conv``) and p = 2, a warm power-iteration step on its
:class:`~liplax.nn.PowerIterState` (Miyato et al., ICLR 2018). A model often holds many layers
of one shape (an MLP with 8 hidden 256×256 layers, a CNN with several 3×3 C→C convolutions).
:func:`grouped_log_bound` computes the same value as
``liplax.nn.containers.log_bound_of(model, input_shape, p=p, fast=True)``:

1. walk the model as the per-layer path does (``Sequential``/``nnx.Sequential`` multiply,
   ``Residual`` gives log(1 + e^{log Lip g})), propagating the per-example shape, and collect
   the power-step layers;
2. group them by everything their step depends on statically: the layer's power function
   (dense: :func:`liplax.nn.dense.power_sigma`; conv: :func:`liplax.conv.power_iteration`),
   kernel shape and dtype, ``power_iters``, and for convolutions the input size, strides and
   padding;
3. per group, stack the kernels (K_1, …, K_G) and states (u_1, …, u_G) along a new leading axis
   and run **one** batched step (σ̂_g, u'_g) = step(K_g, u_g) for all g at once: ``jax.vmap``
   of :func:`liplax.nn.dense.power_sigma` for dense layers; for convolutions
   :func:`conv_power_step`, the arithmetic of :func:`liplax.conv.power_iteration` with the
   convolution written as one batched matrix product (im2col);
4. write u'_g back into layer g's state when the layer is in training mode
   (``deterministic=False``), exactly as the per-layer path does, and use σ̂_g as its factor.

The sum Σ_l log Lip_l is then formed in the per-layer path's order. Layers without a power
step (activations, AOL, spectral layers, plain ``nnx`` layers, p ≠ 2) use their own fast values.
:func:`grouped_call` does the same for the spectral normalization in the forward pass:
``grouped_call(model, x)`` equals ``model(x)`` with the power steps of all training-mode
``SpectralDense``/``SpectralConv`` layers of one key run as one batched step before the layers
are applied. Same semantics (value, ``kind``, state update and gradient, up to the float
reordering of batched arithmetic); only the number of operations changes: one batched
matrix–vector (or im2col matrix) chain per group instead of one per layer. Guarantee:
``estimate`` whenever a power step is used (σ̂ ≤ σ₁), as for the per-layer path.
Reference: Miyato, Kataoka, Koyama, Yoshida, *Spectral Normalization for GANs*, ICLR 2018;
``jax.vmap`` (Bradbury et al., 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax.guarantee import compose_kind
from liplax.nn._base import check_p, shape_tuple
from liplax.nn.containers import (
    Residual,
    _children,
    _in_context,
    _name,
    _residual_kind,
    log_bound_of,
    output_shape_of,
)
from liplax.nn.conv import Conv
from liplax.nn.dense import Dense, power_sigma
from liplax.nn.sinusoidal import SinusoidalDense
from liplax.nn.spectral import SpectralConv, SpectralDense, conv_batch, normalized
from liplax.norms.scaling import pow2_scale

_DENSE_TYPES = (Dense, SinusoidalDense)
"""Layers whose ℓ2 fast value is ``power_sigma(kernel, power_state, power_iters)``."""
_SPECTRAL_TYPES = (SpectralDense, SpectralConv)
"""Layers whose training-mode forward divides the kernel by a power-step σ̂."""


@dataclass
class PowerGroup:
    """Layers sharing one batched power step: ``key`` (the static arguments) and the layers."""

    key: tuple
    layers: list = field(default_factory=list)


def _group_key(layer) -> tuple | None:
    """The static arguments of the layer's ℓ2 power step, or None if it has no such step.

    Exact types only: a subclass may override ``lipschitz_estimate``.
    """
    if type(layer) not in (*_DENSE_TYPES, Conv, *_SPECTRAL_TYPES):
        return None
    k, state = layer.kernel[...], layer.power_state[...]
    if type(layer) in (*_DENSE_TYPES, SpectralDense):
        return ("dense", k.shape, str(k.dtype), str(state.dtype), layer.power_iters)
    return ("conv", k.shape, str(k.dtype), str(state.dtype), layer.power_iters,
            layer.input_size, layer.strides, layer.padding)


def _walk(layer, input_shape, leaf: Callable) -> tuple[jax.Array, str]:
    """Σ log of the factors in the order of :func:`liplax.nn.containers.log_bound_of`, with
    ``leaf(layer, shape)`` giving (log value, kind) of every non-container layer."""
    kids = _children(layer)
    if kids is not None:
        shape = shape_tuple(input_shape, _name(layer))
        total, kinds = jnp.asarray(0.0), []
        for i, child in enumerate(kids):
            lv, kind = _in_context(_name(layer), i, child, _walk, shape, leaf=leaf)
            shape = _in_context(_name(layer), i, child, output_shape_of, shape)
            total, kinds = total + lv, kinds + [kind]
        return total, compose_kind(kinds)
    if isinstance(layer, Residual):
        layer._check_shape(input_shape)
        lv, kind = _walk(layer.inner, input_shape, leaf)
        return jax.nn.softplus(lv), _residual_kind(kind)  # log(1 + e^lv)
    return leaf(layer, input_shape)


def power_groups(model, input_shape: Sequence[int], *, p=2) -> list[PowerGroup]:
    """The layers of ``model`` whose ℓp fast value is a power step, grouped by static key.

    Empty for p ≠ 2. Each layer is checked as its own ``lipschitz_estimate`` checks it (the
    shape it sees, and for ``Conv`` that it matches the ``input_size`` of its state). A layer
    used more than once (shared weights) is left out: the per-layer path steps its state once
    per use, in order, and so does :func:`grouped_log_bound` for it.
    """
    p = check_p(p, "power_groups")
    found: list = []

    def collect(layer, shape):
        if p == 2 and type(layer) in (*_DENSE_TYPES, Conv):
            layer.output_shape(shape)
            if type(layer) is Conv:
                layer._check_state_size(shape, "lipschitz_estimate")
            found.append(layer)
        return jnp.asarray(0.0), "exact"

    _walk(model, input_shape, collect)
    return _group(found)


def _group(found: list) -> list[PowerGroup]:
    """Group by :func:`_group_key`, in order; a layer found more than once is left out."""
    groups: dict[tuple, PowerGroup] = {}
    for layer in found:
        if sum(other is layer for other in found) == 1:
            key = _group_key(layer)
            groups.setdefault(key, PowerGroup(key)).layers.append(layer)
    return list(groups.values())


def _unit_rows(v: jax.Array) -> jax.Array:
    """Each item v_g/‖v_g‖₂ (over all its axes), a zero item left at zero."""
    n = jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
    return v / jnp.where(n > 0, n, jnp.ones_like(n))


def conv_power_step(
    kernels: jax.Array, states: jax.Array, *, strides, padding, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    r"""``conv.power_iteration`` of G same-shape layers at once: (σ̂ (G,), v (G, H, W, in)).

    Per item, as :func:`liplax.conv.power_iteration`: s = 2^e (exact scaling), v ← Aᵀ(Av)/‖·‖
    ``num_iters`` times from v₀ = u/‖u‖ with A the layer on k/s (held fixed), then
    σ̂ = s·‖A(k/s) v‖ ≤ σ₁ (``estimate``; gradient with v fixed, Miyato et al., ICLR 2018).
    A and Aᵀ (``jax.linear_transpose``) are :func:`liplax.nn.spectral.conv_batch`.
    """
    hw = states.shape[1:3]
    pads = _checks.padding(padding, hw, kernels.shape[1:3], strides)
    scale = jax.vmap(pow2_scale)(kernels)[:, None, None, None, None]
    fixed = lax.stop_gradient(kernels / scale)
    fwd = partial(conv_batch, fixed, strides=strides, pads=pads)
    transpose = jax.linear_transpose(fwd, jax.ShapeDtypeStruct(states.shape, kernels.dtype))

    def body(_, v):
        return _unit_rows(transpose(fwd(v))[0])

    v = lax.stop_gradient(lax.fori_loop(0, num_iters, body, _unit_rows(states)))
    out = conv_batch(kernels / scale, v, strides, pads)
    return scale[:, 0, 0, 0, 0] * jnp.sqrt(jnp.sum(out * out, axis=(1, 2, 3))), v


def _group_step(group: PowerGroup) -> tuple[jax.Array, jax.Array]:
    """(σ̂ (G,), u' (G, …)) of one batched power step over the group's stacked layers."""
    first = group.layers[0]
    kernels = jnp.stack([layer.kernel[...] for layer in group.layers])
    states = jnp.stack([layer.power_state[...] for layer in group.layers])
    if group.key[0] == "dense":
        return jax.vmap(partial(power_sigma, num_iters=first.power_iters))(kernels, states)
    return conv_power_step(kernels, states, strides=first.strides, padding=first.padding,
                           num_iters=first.power_iters)


def grouped_log_bound(model, input_shape: Sequence[int], *, p=2) -> tuple[jax.Array, str]:
    r"""(Σ_l log Lip_l, kind) of the penalty's fast path with same-shape power steps grouped.

    Equals ``liplax.nn.containers.log_bound_of(model, input_shape, p=p, fast=True)`` (value,
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

    return _walk(model, input_shape, value)


# --------------------------------------------------------------------------------------------
# Spectral normalization in the forward pass.
# --------------------------------------------------------------------------------------------


def _leaves(layer) -> list:
    """The non-container layers in forward order (through Sequential and Residual)."""
    kids = _children(layer)
    if kids is not None:
        return [leaf for child in kids for leaf in _leaves(child)]
    if isinstance(layer, Residual):
        return _leaves(layer.inner)
    return [layer]


def spectral_groups(model) -> list[PowerGroup]:
    """The ``SpectralDense``/``SpectralConv`` layers in training mode, grouped by power-step key.

    Layers in inference mode take no power step (σ̂ = ‖A u‖ from the stored u) and are left to
    their own forward; so is a layer used more than once.
    """
    found = [leaf for leaf in _leaves(model)
             if type(leaf) in _SPECTRAL_TYPES and not leaf.deterministic]
    return _group(found)


def grouped_call(model, x: jax.Array) -> jax.Array:
    r"""``model(x)`` with the training-mode spectral normalizations done as grouped power steps.

    Every ``SpectralDense``/``SpectralConv`` in training mode divides its kernel by σ̂ from one
    warm power step and stores the new vector (Miyato et al., ICLR 2018). Here the steps of
    all such layers with the same key (kernel shape, dtype, ``power_iters``, and for
    convolutions input size, stride and padding) run first, as one batched step per group
    (σ̂_g, u'_g) = step(K_g, u_g) (as :func:`grouped_log_bound`), the u'_g are stored, and the
    forward pass then applies each layer with the kernel K_g/σ̂_g (``apply_kernel``). Same
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
    return _forward(model, x, sigmas)


def _forward(layer, x: jax.Array, sigmas: dict) -> jax.Array:
    kids = _children(layer)
    if kids is not None:
        for child in kids:
            x = _forward(child, x, sigmas)
        return x
    if isinstance(layer, Residual):
        y = _forward(layer.inner, x, sigmas)
        if y.shape != x.shape:
            raise ValueError(
                f"Residual: inner layer ({_name(layer.inner)}) maps shape {tuple(x.shape)} to "
                f"{tuple(y.shape)}; a residual branch must keep the shape"
            )
        return x + y
    if id(layer) in sigmas:
        return layer.apply_kernel(x, normalized(layer.kernel[...], sigmas[id(layer)]))
    return layer(x)


__all__ = [
    "PowerGroup",
    "conv_power_step",
    "grouped_call",
    "grouped_log_bound",
    "power_groups",
    "spectral_groups",
]
