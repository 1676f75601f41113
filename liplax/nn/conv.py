r"""``Conv``: a free-weight 2-D convolution (HWIO kernel, NHWC inputs), as ``nnx.Conv`` computes it.

The norm of a convolution depends on the input size, so the layer takes ``input_size=(H, W)``:
it sizes the power-iteration state (created in ``__init__``, never lazily) and is the size the
penalty bounds. ``lipschitz_bound`` accepts any per-example ``input_shape = (H, W, C)``.

Certified constants, from :mod:`liplax.conv` on the actual input size, padding and stride:

- ℓ2: ``"CIRCULAR"`` padding with strides dividing (H, W): the exact FFT norm (Sedghi, Gupta,
  Long, ICLR 2019); otherwise the Gram-iteration upper bound (Delattre et al., ICML 2023), which
  for zero padding bounds the operator through a larger circular one (DESIGN.md §4).
- ℓ∞ / ℓ1: ``liplax.conv.norm_inf`` / ``liplax.conv.norm_1``, the largest absolute row / column
  sum of the layer's matrix on that input (``upper``: exact up to a rounding factor, except
  where a circular kernel larger than the input aliases taps).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from liplax import _checks
from liplax import conv as conv_ops
from liplax.guarantee import Bound
from liplax.nn._base import LipschitzModule, PowerIterState, check_p, pair, positive_int
from liplax.nn._base import shape_tuple as _shape_tuple

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
    shape = _shape_tuple(input_shape, name)
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
        self.in_features = positive_int(in_features, name, "in_features")
        self.out_features = positive_int(out_features, name, "out_features")
        self.kernel_size = pair(kernel_size, name, "kernel_size")
        if input_size is None and self.needs_input_size:
            raise ValueError(
                f"{name}: input_size=(H, W) is required (it sizes the power-iteration state and "
                "the norm of a convolution depends on it), got None"
            )
        self.input_size = None if input_size is None else pair(input_size, name, "input_size")
        self.strides = pair(strides, name, "strides")
        self.power_iters = positive_int(power_iters, name, "power_iters")
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

    def output_shape(self, input_shape) -> tuple[int, ...]:
        return conv_output_shape(self, input_shape)

    def _apply_single(self, kernel: jax.Array, v: jax.Array) -> jax.Array:
        return conv_ops.apply(kernel, v[None], strides=self.strides, padding=self.padding)[0]

    def _check_state_size(self, input_shape, what: str) -> None:
        shape = _shape_tuple(input_shape, self.layer_name)
        if tuple(shape[:2]) != self.input_size:
            raise ValueError(
                f"{self.layer_name}.{what}: input_shape {shape} does not match the layer's "
                f"input_size={self.input_size} (the size its power-iteration state was built for)"
            )

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


class Conv(ConvBase):
    """Free-weight convolution x ↦ k ⋆ x (+ b), bias off by default (see the module docstring).

    Args:
      in_features, out_features: channels.
      kernel_size: int or (kh, kw).
      input_size: (H, W) of the inputs this layer sees (power-iteration state and penalty size).
      strides, padding: as ``nnx.Conv`` (``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, explicit pairs).
      use_bias, kernel_init, bias_init, param_dtype, power_iters, rngs: as for ``Dense``.
    """

    def lipschitz_bound(self, input_shape, *, p=2) -> Bound:
        """Certified ℓp constant on ``input_shape`` = (H, W, C) (exact/upper, see module doc)."""
        p = self._p(p)
        self.output_shape(input_shape)
        shape = _shape_tuple(input_shape, self.layer_name)
        return conv_bound(
            self.kernel[...], shape[:2], p, strides=self.strides, padding=self.padding
        )

    def lipschitz_estimate(self, input_shape, *, p=2) -> Bound:
        """ℓ2: one warm power-iteration step on the real operator (``estimate``); else certified."""
        p = check_p(p, f"{self.layer_name}.lipschitz_estimate")
        if p != 2:
            return self.lipschitz_bound(input_shape, p=p)
        self.output_shape(input_shape)
        self._check_state_size(input_shape, "lipschitz_estimate")
        return Bound(self._power_sigma(self.kernel[...], update=True), "estimate")
