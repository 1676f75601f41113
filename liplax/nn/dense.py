r"""``Dense``: a free-weight dense layer x ↦ x W (+ b), the layer of trivial-bound-penalty training.

The weight has flax's ``(in, out)`` layout. Its Lipschitz constant in ℓp is the induced norm of
x ↦ x W (the bias does not change it): ‖W‖₂ (exact, SVD), ‖W‖_{1→1} = max_i Σ_j |W_ij| and
‖W‖_{∞→∞} = max_j Σ_i |W_ij| (exact), from :mod:`liplax.linalg`. A leading shape ``(..., in)``
applies W to every row, a block-diagonal operator with the same norm.

For the training penalty the ℓ2 value is a warm-started power iteration (one step per call in
training mode; Miyato et al., ICLR 2018) held in a :class:`~liplax.nn.PowerIterState`.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from liplax import linalg
from liplax._checks import check_features, positive_int, shape_tuple
from liplax.guarantee import Bound, exact_sum
from liplax.nn._base import LipschitzModule, PowerIterState
from liplax.nn.build import effective_kernel, plain_linear
from liplax.nn.registry import register_layer
from liplax.norms.power import normalize
from liplax.norms.scaling import scale, unscale

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()
METHODS = ("exact", "gram")


def matrix_bound(w: jax.Array, p: float, *, method: str = "exact", gram_iters: int = 6) -> Bound:
    """Certified ℓp norm of x ↦ x @ w: exact SVD or Gram upper bound for p=2, exact for p=1, ∞.

    The linalg routines cover subnormal, near-overflow and non-finite entries (power-of-two
    scaling on the bits, :mod:`liplax.norms.scaling`); an n-term abs-sum (ℓ1: n = out, ℓ∞: n = in)
    is raised to meet the exact margin at every length (:func:`liplax.guarantee.exact_sum`)."""
    if p == 1:
        return jax.tree.map(lambda v: exact_sum(v, w.shape[-1]), linalg.norm_1(w))
    if p == math.inf:
        return jax.tree.map(lambda v: exact_sum(v, w.shape[-2]), linalg.norm_inf(w))
    if method == "exact":
        return linalg.spectral_norm(w)
    return linalg.gram_bound(w, num_iters=gram_iters)


def check_method(method: str, layer: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{layer}: method must be one of {METHODS}, got {method!r}")
    return method


def dense_output_shape(input_shape, in_features: int, out_features: int, layer: str):
    shape = shape_tuple(input_shape, layer)
    if shape[-1] != in_features:
        raise ValueError(
            f"{layer}: input_shape {shape} has {shape[-1]} features on its last axis, expected "
            f"in_features={in_features}"
        )
    return (*shape[:-1], out_features)


def power_sigma(w: jax.Array, u: jax.Array, num_iters: int = 1) -> tuple[jax.Array, jax.Array]:
    r"""``num_iters`` warm power-iteration steps on x ↦ x @ w, the last fused with the estimate.

    With y = u w and ŷ = y/‖y‖ (held fixed), z = w ŷ ∝ w wᵀ u is one step of
    :func:`liplax.linalg.power_iteration` (the same vector convention: u in the input space), and
    σ̂ = ‖z‖ = ‖w ŷ‖ ≤ σ₁ (an ``estimate``, from below). Its gradient is u' ŷᵀ with u' = z/‖z‖,
    the singular-vector outer product at convergence (Miyato et al., ICLR 2018). Fusing the
    estimate into the step costs two matrix-vector products per call instead of three, which
    keeps the training penalty cheap (``benchmarks/penalty_step.py``).

    ``w`` is scaled by an exact power of two c first (σ̂(w) = c·σ̂(w/c), done on the bits by
    :func:`liplax.norms.scaling.scale`), so subnormal and near-overflow weights neither flush nor
    overflow in the sums of squares; NaN weights give NaN, infinite ones inf.

    Returns ``(σ̂, u')``, u' without gradient.
    """
    sc = scale(w)
    w = sc.x
    ws = lax.stop_gradient(w)

    def step(_, u):
        return normalize(ws @ (u @ ws))

    u = lax.stop_gradient(u)
    if num_iters > 1:
        u = lax.fori_loop(0, num_iters - 1, step, u)
    y_hat = lax.stop_gradient(normalize(u @ ws))
    z = w @ y_hat
    sigma = jnp.sqrt(jnp.sum(z * z))
    return unscale(sigma, sc), lax.stop_gradient(normalize(z))


def init_power_state(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> PowerIterState:
    """A unit random vector (the power-iteration warm start), drawn from ``rngs.params()``."""
    v = jax.random.normal(rngs.params(), shape, dtype)
    return PowerIterState(v / jnp.linalg.norm(v))


class DenseBase(LipschitzModule):
    """Shared parts of the dense layers: a kernel ``(in, out)``, an optional bias, power state."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
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
        self.power_iters = positive_int(power_iters, "power_iters", name)
        self.use_bias = bool(use_bias)
        self.deterministic = False
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (self.in_features, self.out_features), param_dtype)
        )
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (self.out_features,), param_dtype))
            if self.use_bias
            else None
        )
        self.power_state = init_power_state(rngs, (self.in_features,), param_dtype)

    def effective_kernel(self) -> jax.Array:
        """The matrix the layer applies (normalization folded in), without moving any state."""
        return self.kernel[...]

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """Exact ℓp norm (SVD for p=2, abs sums for p=1, ∞) of the matrix actually applied."""
        return matrix_bound(self.effective_kernel(), p)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply_kernel(x, self._forward_kernel())

    def apply_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """x ↦ x @ kernel (+ bias): the layer with a given (in, out) matrix; moves no state."""
        check_features(x, self.in_features, self.layer_name)
        y = x @ kernel
        if self.bias is not None:
            y = y + self.bias[...]
        return y

    def _forward_kernel(self) -> jax.Array:
        return self.effective_kernel()

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return dense_output_shape(shape, self.in_features, self.out_features, self.layer_name)

    def to_plain(self):
        """``nnx.Linear`` with the applied matrix (normalization folded in) and the bias."""
        return plain_linear(effective_kernel(self), None if self.bias is None else self.bias[...])

    def power_key(self, input_shape=None) -> tuple:
        """(kernel shape and dtype, state dtype, ``power_iters``): what the step depends on."""
        k, state = self.kernel[...], self.power_state[...]
        return ("dense", k.shape, str(k.dtype), str(state.dtype), self.power_iters)

    def power_step(self, kernels: jax.Array, states: jax.Array):
        """``jax.vmap`` of :func:`power_sigma` over G stacked (in, out) kernels and states."""
        return jax.vmap(partial(power_sigma, num_iters=self.power_iters))(kernels, states)

    def _power_sigma(self, w: jax.Array, update: bool) -> jax.Array:
        """One warm power-iteration value of ‖w‖₂ (an estimate from below), state moved if asked."""
        sigma, u = power_sigma(w, self.power_state[...], self.power_iters)
        if update and not self.deterministic:
            self.power_state[...] = u
        return sigma


def _example(rngs: nnx.Rngs):
    return Dense(3, 4, use_bias=True, rngs=rngs), (3,)


@register_layer(example=_example, power="estimate")
class Dense(DenseBase):
    """Free-weight dense layer x ↦ x W (+ b); bias off by default.

    Args:
      in_features, out_features: sizes.
      use_bias: add a bias (it does not change the Lipschitz constant, but it restricts which
        activation patterns are reachable: an obstruction to a tight trivial bound).
      power_iters: power-iteration steps per penalty evaluation (training mode).
      method: ``"exact"`` (SVD) or ``"gram"`` (Gram-iteration upper bound) for the ℓ2 certificate.
      rngs: ``nnx.Rngs`` for the kernel and the power-iteration start.
    """

    def __init__(self, in_features: int, out_features: int, *, method: str = "exact", **kw):
        super().__init__(in_features, out_features, **kw)
        self.method = check_method(method, "Dense")

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """‖W‖_p of x ↦ x W: exact (SVD, norm_1, norm_inf) or Gram ``upper`` for p=2."""
        return matrix_bound(self.kernel[...], p, method=self.method)

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: warm power iteration (``estimate``, moves the state in training mode); else exact."""
        if p != 2:
            return matrix_bound(self.kernel[...], p)
        return Bound(self._power_sigma(self.kernel[...], update=True), "estimate")
