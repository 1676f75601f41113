r"""``Conv``: a free-weight 2-D convolution (HWIO kernel, NHWC inputs), as ``nnx.Conv`` computes it.

The norm of a convolution depends on the input size, so the layer takes ``input_size=(H, W)``:
it sizes the power-iteration state (created in ``__init__``, never lazily) and is the size the
penalty bounds. ``lipschitz_bound`` accepts any per-example ``input_shape = (H, W, C)``.

Certified constants, from :mod:`liplax.conv` on the actual input size, padding and stride:

- ℓ2: ``"CIRCULAR"`` padding with strides dividing (H, W): the exact FFT norm (Sedghi, Gupta,
  Long, ICLR 2019); otherwise the Gram-iteration upper bound (Delattre et al., ICML 2023), which
  for zero padding bounds the operator through a larger circular one (docs/design.md §norms).
- ℓ∞ / ℓ1: ``liplax.conv.norm_inf`` / ``liplax.conv.norm_1``, the largest absolute row / column
  sum of the layer's matrix on that input (``upper``: exact up to a rounding factor, except
  where a circular kernel larger than the input aliases taps).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from liplax import _checks
from liplax import conv as conv_ops
from liplax._checks import pair, positive_int, shape_tuple
from liplax.guarantee import Bound
from liplax.nn._base import LipschitzModule, PowerIterState
from liplax.nn.build import effective_kernel, plain_conv
from liplax.nn.registry import register_layer
from liplax.norms.operator import circular_pads
from liplax.norms.scaling import pow2_scale

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


def _hashable_padding(padding):
    """Padding as a static (hashable) value: an upper-case string, an int or nested tuples."""
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return padding
    return tuple(p if isinstance(p, int) else tuple(p) for p in padding)


def is_circular(padding) -> bool:
    return isinstance(padding, str) and padding.upper() == "CIRCULAR"


def conv_bound(
    kernel: jax.Array,
    hw: tuple[int, int],
    p: float,
    *,
    strides: tuple[int, int],
    padding,
    gram_iters: int = 6,
) -> Bound:
    """Certified ℓp norm of the convolution on an ``hw`` input (see the module docstring)."""
    if p == 1:
        return conv_ops.norm_1(kernel, hw, strides=strides, padding=padding)
    if p == math.inf:
        return conv_ops.norm_inf(kernel, hw, strides=strides, padding=padding)
    if is_circular(padding) and hw[0] % strides[0] == 0 and hw[1] % strides[1] == 0:
        return conv_ops.exact_spectral_norm(kernel, hw, strides=strides)
    return conv_ops.gram_bound(kernel, hw, strides=strides, padding=padding, num_iters=gram_iters)


def conv_output_shape(layer, input_shape) -> tuple[int, int, int]:
    """(H', W', out) for a per-example (H, W, in); ValueError naming the layer on a mismatch."""
    name = layer.layer_name
    shape = shape_tuple(input_shape, name)
    if len(shape) != 3:
        raise ValueError(f"{name}: input_shape must be (H, W, C) for one example, got {shape}")
    if shape[-1] != layer.in_features:
        raise ValueError(
            f"{name}: input_shape {shape} has {shape[-1]} channels, expected "
            f"in_features={layer.in_features}"
        )
    h, w = conv_ops.output_shape(
        layer.kernel_shape, shape[:2], strides=layer.strides, padding=layer.padding
    )
    return (int(h), int(w), layer.out_features)


def conv_batch(kernels: jax.Array, v: jax.Array, strides, pads) -> jax.Array:
    r"""(A_g v_g)_g for G kernels (G, kh, kw, in, out) and G inputs (G, H, W, in).

    The layer's cross-correlation y[i, j, o] = Σ_{p,q,c} x_pad[s_h i + p, s_w j + q, c] k[p, q,
    c, o] (``pads`` resolved by :func:`liplax._checks.padding`: zero (lo, hi) pairs or flax's
    wrapped ``"CIRCULAR"``), written as one batched matrix product of the kh·kw shifted strided
    views ("im2col") with the kernels: (G, H'W', kh·kw·in) @ (G, kh·kw·in, out). A batched
    ``lax.conv_general_dilated`` over per-item kernels becomes a grouped convolution, which XLA's
    CPU backend runs several times slower than the per-layer convolutions
    (``benchmarks/grouped.py``); the batched product does not. Each output is one inner
    product of kh·kw·in terms at full precision, so its rounding error is within γ_T of the
    exact sum (Higham §3.1) whatever the backend's convolution algorithm would have been.
    """
    g, kh, kw, cin, cout = kernels.shape
    if pads == "CIRCULAR":
        cp = circular_pads((kh, kw))
        v = jnp.pad(v, ((0, 0), cp[0], cp[1], (0, 0)), mode="wrap")
    else:
        v = jnp.pad(v, ((0, 0), pads[0], pads[1], (0, 0)))
    (sh, sw), (hp, wp) = strides, v.shape[1:3]
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = [
        v[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw, :]
        for p in range(kh)
        for q in range(kw)
    ]
    patches = jnp.stack(cols, axis=3)  # (G, H', W', kh·kw, in)
    k = kernels.reshape(g, kh * kw, cin, cout)
    return jnp.einsum("gijtc,gtco->gijo", patches, k, precision=lax.Precision.HIGHEST)


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
    A and Aᵀ (``jax.linear_transpose``) are :func:`conv_batch`.
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


class ConvBase(LipschitzModule):
    """Shared parts of the conv layers: HWIO kernel, optional bias, power state (H, W, in)."""

    #: whether the layer needs ``input_size`` (for its power-iteration state).
    needs_input_size: bool = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size,
        *,
        input_size=None,
        strides=1,
        padding="SAME",
        use_bias: bool = False,
        kernel_init=default_kernel_init,
        bias_init=default_bias_init,
        param_dtype=jnp.float32,
        power_iters: int = 1,
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.in_features = positive_int(in_features, "in_features", name)
        self.out_features = positive_int(out_features, "out_features", name)
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        if input_size is None and self.needs_input_size:
            raise ValueError(
                f"{name}: input_size=(H, W) is required (it sizes the power-iteration state and "
                "the norm of a convolution depends on it), got None"
            )
        self.input_size = None if input_size is None else pair(input_size, "input_size", name)
        self.strides = pair(strides, "strides", name)
        self.power_iters = positive_int(power_iters, "power_iters", name)
        # Validate the padding vocabulary now (against the input size when it is known).
        try:
            _checks.padding(padding, self.input_size or self.kernel_size, self.kernel_size,
                            self.strides)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        self.padding = _hashable_padding(padding)
        self.use_bias = bool(use_bias)
        self.deterministic = False
        self.kernel_shape = (*self.kernel_size, self.in_features, self.out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), self.kernel_shape, param_dtype))
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (self.out_features,), param_dtype))
            if self.use_bias
            else None
        )
        state = None
        if self.input_size is not None:
            shape = (*self.input_size, self.in_features)
            v = jax.random.normal(rngs.params(), shape, param_dtype)
            state = PowerIterState(v / jnp.linalg.norm(v))
        self.power_state = state

    def effective_kernel(self) -> jax.Array:
        """The kernel the layer applies (normalization folded in), without moving any state."""
        return self.kernel[...]

    def _forward_kernel(self) -> jax.Array:
        return self.effective_kernel()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply_kernel(x, self._forward_kernel())

    def apply_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """x ↦ kernel ⋆ x (+ bias): the layer with a given HWIO kernel; moves no state."""
        name = self.layer_name
        if x.ndim < 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name}: input of shape {tuple(x.shape)} must be (..., H, W, "
                f"{self.in_features}) (NHWC with in_features={self.in_features} channels)"
            )
        lead = x.shape[:-3]
        x4 = x.reshape(-1, *x.shape[-3:])
        y = conv_ops.apply(kernel, x4, strides=self.strides, padding=self.padding)
        if self.bias is not None:
            y = y + self.bias[...]
        return y.reshape(*lead, *y.shape[1:])

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return conv_output_shape(self, shape)

    def check_state_size(self, input_shape, what: str) -> None:
        """``ValueError`` unless ``input_shape`` has the (H, W) the power state was built for."""
        shape = shape_tuple(input_shape, self.layer_name)
        if tuple(shape[:2]) != self.input_size:
            raise ValueError(
                f"{self.layer_name}.{what}: input_shape {shape} does not match the layer's "
                f"input_size={self.input_size} (the size its power-iteration state was built for)"
            )

    def to_plain(self):
        """``nnx.Conv`` with the applied kernel (normalization folded in) and the bias."""
        bias = None if self.bias is None else self.bias[...]
        return plain_conv(effective_kernel(self), bias, strides=self.strides,
                          padding=self.padding)

    def power_key(self, input_shape=None) -> tuple:
        """(kernel shape and dtype, state dtype, ``power_iters``, input size, strides, padding);
        with ``input_shape``, checks that it is the size of the power state."""
        if input_shape is not None:
            self.check_state_size(input_shape, "lipschitz_estimate")
        k, state = self.kernel[...], self.power_state[...]
        return ("conv", k.shape, str(k.dtype), str(state.dtype), self.power_iters,
                self.input_size, self.strides, self.padding)

    def power_step(self, kernels: jax.Array, states: jax.Array):
        """:func:`conv_power_step` over G stacked kernels and states of this layer's key."""
        return conv_power_step(kernels, states, strides=self.strides, padding=self.padding,
                               num_iters=self.power_iters)

    def _power_sigma(self, kernel: jax.Array, update: bool) -> jax.Array:
        """Warm power iteration on the real operator (estimate from below); moves state if asked."""
        sigma, u = conv_ops.power_iteration(
            kernel,
            self.input_size,
            self.power_state[...],
            strides=self.strides,
            padding=self.padding,
            num_iters=self.power_iters,
        )
        if update and not self.deterministic:
            self.power_state[...] = u
        return sigma.value


def _example(rngs: nnx.Rngs):
    return Conv(2, 3, 3, input_size=(5, 5), strides=2, use_bias=True, rngs=rngs), (5, 5, 2)


@register_layer(example=_example, power="estimate")
class Conv(ConvBase):
    """Free-weight convolution x ↦ k ⋆ x (+ b), bias off by default (see the module docstring).

    Args:
      in_features, out_features: channels.
      kernel_size: int or (kh, kw).
      input_size: (H, W) of the inputs this layer sees (power-iteration state and penalty size).
      strides, padding: as ``nnx.Conv`` (``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, explicit pairs).
      use_bias, kernel_init, bias_init, param_dtype, power_iters, rngs: as for ``Dense``.
    """

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """Certified ℓp constant on ``input_shape`` = (H, W, C) (exact/upper, see module doc)."""
        return conv_bound(
            self.kernel[...], shape[:2], p, strides=self.strides, padding=self.padding
        )

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: one warm power-iteration step on the real operator (``estimate``); else certified."""
        if p != 2:
            return self._bound(shape, p)
        self.check_state_size(shape, "lipschitz_estimate")
        return Bound(self._power_sigma(self.kernel[...], update=True), "estimate")
