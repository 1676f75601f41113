r"""Linear operators of the layers whose norms liplax bounds: dense maps and 2-D convolutions.

Modelled on lineax's operators: an operator holds its parameter array (a pytree leaf) and its
static structure (shapes, strides, resolved padding: pytree metadata), so it passes through
``jax.jit``, ``jax.vmap`` and ``jax.grad`` like an array, and every norm routine of
:mod:`liplax.norms` takes one. The arguments are validated, normalized and resolved once, when
the operator is built (trace-time errors naming the argument).

Each operator A has ``apply(x)`` (A x), ``transpose(y)`` (Aᵀ y, the adjoint:
⟨A x, y⟩ = ⟨x, Aᵀ y⟩), ``in_shape``/``out_shape`` (one example, no batch axis) and
``materialize()``: the dense matrix M of shape (∏ in_shape, ∏ out_shape) with
``apply(x).ravel() == x.ravel() @ M`` (row-vector convention, as ``x ↦ x @ w``), in the
operator's dtype (float64 for a float64 operator under ``jax.enable_x64``).

- :class:`DenseOperator`: x ↦ x @ w, w of shape (in, out) (``flax.nnx.Linear``'s layout).
- :class:`ConvOperator`: x ↦ k ⋆ x exactly as ``flax.nnx.Conv`` (no bias) computes it: HWIO
  kernel, NHWC input, cross-correlation, ``lax.conv_general_dilated`` at full precision, flax's
  circular padding ((k−1)//2 before and k//2 after, wrapped). See ``docs/design.md §operators``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax.norms import winograd

HI = lax.Precision.HIGHEST
DIMS = ("NHWC", "HWIO", "NHWC")
Pads = str | tuple[tuple[int, int], tuple[int, int]]
#: the fewest input and output channels for which the power iteration uses Winograd (CPU).
WINOGRAD_MIN_CHANNELS = 16


def circular_pads(kernel_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """flax's circular padding: (k−1)//2 before and k//2 after, wrapped."""
    return tuple(((k - 1) // 2, k // 2) for k in kernel_hw)


def wrap_pad(x: jax.Array, kernel_hw: tuple[int, int]) -> jax.Array:
    """flax's circular padding of a batch (N, H, W, C), wrapped as many times as needed."""
    cp = circular_pads(kernel_hw)
    return jnp.pad(x, ((0, 0), cp[0], cp[1], (0, 0)), mode="wrap")


def wrap_adjoint(z: jax.Array, input_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> jax.Array:
    """The adjoint of :func:`wrap_pad` on a batch ``z`` of padded (N, H + kh − 1, W + kw − 1, C)
    samples: every wrapped copy added back to the sample it copies, giving (N, H, W, C)."""
    shape = jax.ShapeDtypeStruct((z.shape[0], *input_hw, z.shape[3]), z.dtype)
    return jax.linear_transpose(lambda x: wrap_pad(x, kernel_hw), shape)(z)[0]


def conv_nhwc(kernel: jax.Array, x: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    """The convolution on a batch ``x`` (N, H, W, C) with resolved strides and padding."""
    if pads == "CIRCULAR":
        x = wrap_pad(x, kernel.shape[:2])
        pads = ((0, 0), (0, 0))
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads, dimension_numbers=DIMS, precision=HI
    )


def transpose_pads(kernel_hw, input_hw, output_hw, strides, pads) -> tuple[tuple[int, int], ...]:
    """Padding of the adjoint convolution (``lax``'s rule for the gradient of a convolution).

    The adjoint of y[i] = Σ_p x[s·i + p − lo]·k[p] is x[a] = Σ_i Σ_p [s·i + p − lo = a] y[i]·k[p]:
    the stride-1 correlation of y dilated by s (s − 1 zeros between samples) with the flipped
    kernel, padded by kh − 1 − lo before and H + lo − s·(H' − 1) − 1 after so that the result has
    H samples (either may be negative: the rows it drops read only padding).
    """
    return tuple(
        (k - 1 - lo, n + lo - s * (m - 1) - 1)
        for k, n, m, s, (lo, _) in zip(kernel_hw, input_hw, output_hw, strides, pads, strict=True)
    )


def conv_transpose_nhwc(
    kernel: jax.Array, y: jax.Array, input_hw: tuple[int, int], strides: tuple[int, int],
    pads: Pads,
) -> jax.Array:
    r"""Aᵀ y for A = :func:`conv_nhwc` on (H, W) inputs, on a batch ``y`` (N, H', W', out).

    One ``lax.conv_general_dilated`` with ``lhs_dilation = strides`` and the kernel flipped in
    space with its in/out axes swapped, **materialized in HWIO order**: the same sums as
    ``jax.linear_transpose`` of the layer (which yields the same convolution on a kernel read
    in HWOI order), without the layout XLA's CPU backend runs several times slower than the
    layer itself (``docs/design.md §operators``). Circular padding: the adjoint onto the
    wrapped input, then the adjoint of the wrap (each wrapped copy added back to its sample).
    Each output sums the products of the layer's matrix column with y: at most kh·kw·out
    non-zero terms, as in the reference.
    """
    kh, kw = kernel.shape[:2]
    k_adj = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    out_hw = y.shape[1:3]
    if pads == "CIRCULAR":
        cp = circular_pads((kh, kw))
        padded_hw = tuple(n + lo + hi for n, (lo, hi) in zip(input_hw, cp, strict=True))
        tp = transpose_pads((kh, kw), padded_hw, out_hw, strides, ((0, 0), (0, 0)))
        z = lax.conv_general_dilated(
            y, k_adj, (1, 1), tp, lhs_dilation=strides, dimension_numbers=DIMS, precision=HI
        )
        return wrap_adjoint(z, input_hw, (kh, kw))
    tp = transpose_pads((kh, kw), input_hw, out_hw, strides, pads)
    return lax.conv_general_dilated(
        y, k_adj, (1, 1), tp, lhs_dilation=strides, dimension_numbers=DIMS, precision=HI
    )


def conv_output_hw(kernel_hw, input_hw, strides, pads: Pads) -> tuple[int, int]:
    """Spatial output shape of the layer from resolved arguments."""
    if pads == "CIRCULAR":
        return tuple(-(-n // s) for n, s in zip(input_hw, strides, strict=True))
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, (lo, hi), k, s in zip(input_hw, pads, kernel_hw, strides, strict=True)
    )


class LinearOperator:
    """What every operator provides (see the module docstring); subclasses set ``family``."""

    family: ClassVar[str]

    @property
    def array(self) -> jax.Array:
        """The parameter array (the only pytree leaf)."""
        raise NotImplementedError

    def replace(self, array: jax.Array) -> LinearOperator:
        """The same operator structure with another parameter array (no re-validation)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._array = array
        return new

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def in_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def out_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def apply(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def transpose(self, y: jax.Array) -> jax.Array:
        raise NotImplementedError

    def power_maps(self):
        """(A, Aᵀ) on one example, for a loop that applies both many times with this array fixed.

        The same linear maps as :meth:`apply` and :meth:`transpose`; an operator may return
        faster forms whose rounding differs (``ConvOperator``: Winograd on CPU). Used only where
        the result is an estimate recomputed with :meth:`apply` (:mod:`liplax.norms.power`).
        """
        return self.apply, self.transpose

    def materialize(self) -> jax.Array:
        """M (∏ in_shape, ∏ out_shape) with apply(x).ravel() = x.ravel() @ M: A on the basis."""
        d_in = math.prod(self.in_shape)
        eye = jnp.eye(d_in, dtype=self.dtype).reshape(d_in, *self.in_shape)
        return self.apply(eye).reshape(d_in, -1)

    def tree_flatten(self):
        aux = tuple(sorted((k, v) for k, v in self.__dict__.items() if k != "_array"))
        return (self._array,), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        new = object.__new__(cls)
        new.__dict__.update(dict(aux))
        new._array = children[0]
        return new

    def __repr__(self) -> str:
        shape = getattr(self._array, "shape", None)
        name = type(self).__name__
        return f"{name}(array shape {shape}, in {self.in_shape}, out {self.out_shape})"


@jax.tree_util.register_pytree_node_class
class DenseOperator(LinearOperator):
    """x ↦ x @ w for w of shape (in, out), on row vectors (any leading batch axes)."""

    family = "dense"

    def __init__(self, w: jax.Array, name: str = "w"):
        self._array = _checks.matrix(w, name)

    @property
    def array(self) -> jax.Array:
        return self._array

    @property
    def w(self) -> jax.Array:
        return self._array

    @property
    def in_shape(self) -> tuple[int]:
        return (self._array.shape[0],)

    @property
    def out_shape(self) -> tuple[int]:
        return (self._array.shape[1],)

    def apply(self, x: jax.Array) -> jax.Array:
        return jnp.matmul(x, self._array, precision=HI)

    def transpose(self, y: jax.Array) -> jax.Array:
        return jnp.matmul(y, self._array.T, precision=HI)

    def materialize(self) -> jax.Array:
        return self._array


@jax.tree_util.register_pytree_node_class
class ConvOperator(LinearOperator):
    """The 2-D convolution layer of ``flax.nnx.Conv`` (no bias) on inputs (H, W, in).

    Args:
      kernel: HWIO ``(kh, kw, in, out)``, real floating (bfloat16/float16 computed in float32).
      input_shape: (H, W), static.
      strides: an int or a pair.
      padding: ``"CIRCULAR"``, ``"SAME"``, ``"VALID"``, an int, a pair, or ((lo, hi), (lo, hi));
        resolved here to ``"CIRCULAR"`` or explicit pairs (``"SAME"`` as ``lax.padtype_to_pads``).
    """

    family = "conv"

    def __init__(
        self,
        kernel: jax.Array,
        input_shape: tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: _checks.Padding = "SAME",
    ):
        kernel = _checks.kernel(kernel)
        self.input_hw = _checks.input_shape(input_shape)
        self.strides = _checks.strides(strides)
        self.pads = _checks.padding(padding, self.input_hw, kernel.shape[:2], self.strides)
        self._array = kernel

    @property
    def array(self) -> jax.Array:
        return self._array

    @property
    def kernel(self) -> jax.Array:
        return self._array

    @property
    def circular(self) -> bool:
        return self.pads == "CIRCULAR"

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (*self.input_hw, self._array.shape[2])

    @property
    def out_shape(self) -> tuple[int, int, int]:
        hw = conv_output_hw(self._array.shape[:2], self.input_hw, self.strides, self.pads)
        return (*hw, self._array.shape[3])

    def _batched(self, x: jax.Array, shape: tuple[int, ...], what: str, fn) -> jax.Array:
        if x.ndim not in (3, 4):
            raise ValueError(f"{what} must be NHWC (rank 4) or HWC (rank 3), got shape {x.shape}")
        if x.shape[-3:] != shape:
            raise ValueError(f"{what} must have shape {shape} per example, got {x.shape}")
        out = fn(x[None] if x.ndim == 3 else x)
        return out[0] if x.ndim == 3 else out

    def apply(self, x: jax.Array) -> jax.Array:
        """A x for x of shape (H, W, in) or (N, H, W, in), cast to the kernel's dtype."""
        x = jnp.asarray(x)
        if x.ndim in (3, 4) and x.shape[-1] != self._array.shape[2]:
            raise ValueError(
                f"x has {x.shape[-1]} channels but kernel expects in = {self._array.shape[2]} "
                f"(kernel shape {self._array.shape})"
            )
        return self._batched(
            x.astype(self.dtype), self.in_shape, "x",
            lambda xb: conv_nhwc(self._array, xb, self.strides, self.pads),
        )

    def transpose(self, y: jax.Array) -> jax.Array:
        """Aᵀ y (the adjoint, :func:`conv_transpose_nhwc`) for y of shape out_shape or batched."""

        def adjoint(yb):
            return conv_transpose_nhwc(self._array, yb, self.input_hw, self.strides, self.pads)

        return self._batched(jnp.asarray(y).astype(self.dtype), self.out_shape, "y", adjoint)

    def power_maps(self):
        """(A, Aᵀ) on one (H, W, in) example; Winograd F(4×4, 3×3) where it is faster.

        XLA's CPU backend runs a convolution on one thread; a stride-1 3×3 layer with at least
        :data:`WINOGRAD_MIN_CHANNELS` channels in and out, in float32 or float64, is then faster
        as the batched matmuls of :mod:`liplax.norms.winograd` (kernel transforms made once,
        here). Elsewhere, and on accelerators (whose convolution libraries choose their own
        algorithm), the direct maps.
        """
        kh, kw, cin, cout = self._array.shape
        if ((kh, kw) != (3, 3) or self.strides != (1, 1) or min(cin, cout) < WINOGRAD_MIN_CHANNELS
                or self.dtype not in (jnp.float32, jnp.float64) or jax.default_backend() != "cpu"):
            return super().power_maps()
        u = winograd.transform_kernel(self._array)
        u_adj = winograd.transform_kernel(jnp.flip(self._array, (0, 1)).swapaxes(2, 3))
        circular = self.circular
        pads = circular_pads((3, 3)) if circular else self.pads
        h, w = self.input_hw

        def forward(x):
            xp = jnp.pad(x, (*pads, (0, 0)), mode="wrap" if circular else "constant")
            return winograd.valid_correlation(xp, u)

        def adjoint(y):
            z = winograd.valid_correlation(jnp.pad(y, ((2, 2), (2, 2), (0, 0))), u_adj)
            if circular:  # the adjoint of the wrap: every wrapped copy added back to its sample
                return wrap_adjoint(z[None], (h, w), (3, 3))[0]
            (lo_h, _), (lo_w, _) = pads
            return z[lo_h:lo_h + h, lo_w:lo_w + w]

        return forward, adjoint
