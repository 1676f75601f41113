r"""The gap penalty: the trivial bound minus the gain the network attains at data points.

The trivial-bound penalty log U(θ) = Σ_l log ‖W_l‖₂ shrinks the product of the layers' norms;
it makes the bound tight only indirectly. The gap penalty targets the looseness itself:

    gap(θ) = log U(θ) − max_{i ≤ m} log ‖J_θ(x_i) v_i‖₂,

where x_1 … x_m are the first ``gap_points`` examples of the batch and v_i (unit, no gradient)
is the top right singular vector of the network's Jacobian J(x_i), from ``gap_power_iters``
power-iteration steps v ← JᵀJv/‖JᵀJv‖ through ``jvp``/``vjp`` started at the first layer's
power-iteration state (the top right singular vector of W_1, where an aligned network's top
input direction lies). ‖J(x_i) v_i‖₂ ≤ Lip(f) ≤ U, so the gap is ≥ 0 up to the estimation error of
the warm power iteration in U, and it is 0 exactly when the bound is attained at a data point:
its gradient raises the attained gain (aligns consecutive layers' top singular directions along
the path the data take) while lowering the bound. The objective of a step is
``loss + λ(t)·log U + μ(t)·gap`` (μ = ``gap_weight``, ramped with the same warm-up as λ).

The network must act on each example separately (no batch statistics): the Jacobian of the
batched map is then block diagonal and one batched ``jvp`` gives every J(x_i)v_i at once.
Used only for free-weight networks (``sin_mlp``, ``abs_mlp``, ``crelu_mlp``, ``relu_mlp`` and
the CNNs ``cnn``, ``cnn_strided``, ``cnn_exact``: :data:`GAP_MODELS`), whose forward pass moves
no state. For a network with convolutions the power steps are unrolled (a fixed, small trip
count) instead of a ``fori_loop``: XLA's CPU backend runs a loop body's convolutions ~15× slower.

See ``docs/design.md §training`` (the gap penalty). Reference: the gap is the per-network form
of the tightness ratio of Kuang, Xu, Sivaranjani & Lin (2026); power iteration on the Jacobian
through ``jvp``/``vjp`` as in Virmaux & Scaman, NeurIPS 2018 (AutoLip).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from liplax.training.config import Config

GAP_MODELS = ("sin_mlp", "abs_mlp", "crelu_mlp", "relu_mlp", "cnn", "cnn_strided", "cnn_exact")


def gap_weight(config: Config, step: jax.Array) -> jax.Array:
    """μ(t) = gap_weight·min(1, t / penalty_warmup) (from the start when the warm-up is 0)."""
    mu = jnp.asarray(config.gap_weight, jnp.float32)
    if config.penalty_warmup == 0:
        return mu
    return mu * jnp.minimum(1.0, step.astype(jnp.float32) / config.penalty_warmup)


def _start_direction(model, input_shape: tuple[int, ...], dtype) -> jax.Array:
    """The first layer's power-iteration vector when it lives in the input space, else 1/√d."""
    from liplax.nn.walk import leaves

    d = math.prod(input_shape)
    for node in leaves(model):
        state = getattr(node.layer, "power_state", None)
        if state is not None:
            v = lax.stop_gradient(state[...]).astype(dtype)
            if v.size == d:
                return v.reshape(input_shape)
            break
    return jnp.full(input_shape, 1.0 / math.sqrt(d), dtype)


def _has_convolution(model) -> bool:
    """Whether a leaf of ``model`` is a convolution (a :class:`liplax.nn.conv.ConvBase`)."""
    from liplax.nn.conv import ConvBase
    from liplax.nn.walk import leaves

    return any(isinstance(node.layer, ConvBase) for node in leaves(model))


def _unit_rows(v: jax.Array) -> jax.Array:
    """Each example of ``v`` (batch first) divided by its ℓ2 norm (left at 0 when it is 0)."""
    axes = tuple(range(1, v.ndim))
    n = jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))
    return jnp.where(n > 0, v / jnp.where(n > 0, n, 1.0), 0.0)


def attained_log_gain(
    model, xs: jax.Array, *, power_iters: int = 3, unroll: bool | None = None
) -> jax.Array:
    """max_i log ‖J(x_i) v_i‖₂ over the examples of ``xs`` (module doc), differentiable in θ.

    ``xs``: a batch ``(m, ...)`` of inputs. The directions v_i are computed on a copy of the
    model with its state behind ``stop_gradient`` (``power_iters`` steps, fixed trip count); the
    returned gain is the exact ‖J(x_i)v_i‖₂ of the model for those directions, a value the
    network attains (≤ its Lipschitz constant), with its gradient in the parameters.
    ``unroll``: trace the power steps one after the other instead of a ``fori_loop`` (same
    values); ``None`` unrolls exactly when the model has convolutions, whose loop-body form
    XLA's CPU backend runs ~15× slower (a training step's few steps are then cheap to compile).
    """
    if power_iters < 1:
        raise ValueError(f"attained_log_gain: power_iters must be ≥ 1, got {power_iters!r}")
    xs = lax.stop_gradient(xs)
    graphdef, state = nnx.split(model)
    frozen = nnx.merge(graphdef, jax.tree.map(lax.stop_gradient, state))

    def net(z):
        return frozen(z)

    v0 = _start_direction(model, xs.shape[1:], xs.dtype)
    vs = jnp.broadcast_to(v0, xs.shape)

    def body(_, v):
        jv = jax.jvp(net, (xs,), (v,))[1]
        return _unit_rows(jax.vjp(net, xs)[1](jv)[0])

    if _has_convolution(model) if unroll is None else unroll:
        for i in range(power_iters):
            vs = body(i, vs)
    else:
        vs = lax.fori_loop(0, power_iters, body, vs)
    vs = lax.stop_gradient(vs)
    jv = jax.jvp(model, (xs,), (vs,))[1].reshape(xs.shape[0], -1)
    sq = jnp.sum(jv * jv, axis=1)
    return 0.5 * jnp.log(jnp.maximum(jnp.max(sq), jnp.finfo(sq.dtype).tiny))


def gap_penalty(config: Config, model, log_upper: jax.Array, x: jax.Array) -> jax.Array:
    """log U − max_i log ‖J(x_i)v_i‖ over the batch's first ``config.gap_points`` examples."""
    return log_upper - attained_log_gain(
        model, x[: config.gap_points], power_iters=config.gap_power_iters
    )


__all__ = ["GAP_MODELS", "attained_log_gain", "gap_penalty", "gap_weight"]
