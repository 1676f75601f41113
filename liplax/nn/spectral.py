r"""Spectrally normalized layers: the weight divided by a power-iteration estimate of its norm.

``SpectralDense`` applies x ↦ x W/σ̂ and ``SpectralConv`` x ↦ (k/σ̂) ⋆ x, where σ̂ = ‖A u‖ for the
warm-started unit vector u held in a :class:`~liplax.nn.PowerIterState` (Miyato, Kataoka, Koyama,
Yoshida, *Spectral Normalization for GANs*, ICLR 2018). For ``SpectralConv`` the power iteration
runs on the real operator (the layer's own padding and stride, docs/design.md §spectral).

- Training mode (``deterministic=False``): each call does ``power_iters`` steps from the stored
  u, stores the new u and divides by σ̂ (gradient through σ̂ with u held fixed).
- Inference mode (``model.eval()``): σ̂ = ‖A u‖ from the stored u (W itself where σ̂ is
  rounding noise, below); nothing moves.
- The parameters are never written; the normalization is recomputed from them at every call.

Because σ̂ ≤ σ₁ (an estimate from below), the layer's true constant is σ₁/σ̂ ≥ 1, close to 1
once u has converged. :meth:`lipschitz_bound` certifies the inference-mode map. That map is
computed anew by every program that runs it (eager ``model(x)``, a jitted forward, the jitted
bound, :func:`~liplax.nn.to_plain`), and two programs may round σ̂ differently. So σ̂ is
computed with an error bound E that holds for **any** summation order: with A = W/c (c an
exact power of two), û the unit state and n, m, T the input size, output size and terms per
output, |σ̂_P/c − σ̂*/c| ≤ E = 1.25(γ_{n+m+4}·s + γ_{T+2}·‖|û||A|‖) + (underflow) for every
program P (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1: an inner product
of T terms is within γ_T·Σ|terms| of the exact one, whatever the order; the convolution is one
such product per output, :func:`conv_batch`), and where
s_c = ‖ûA‖ ≤ 4E (σ̂ is rounding noise, e.g. u orthogonal to W, or 0) the layer applies W itself
(or A/(4E) if that is smaller) instead of dividing by noise. Any program's divisor s_P is then
≥ s_low = max(s_c − 2E, 4E(1 − 16γ)), and its kernel is fl(A/s_P) = (s/s_P)·fl(A/s)∘(1 + θ),
|θ| ≤ 2.01u. The certificate is

    ‖fl(A/s_P)‖_p ≤ (s/s_low)·(‖fl(A/s)‖_p·(1 + 64u) + 2.01u·N_p),

N_p the same norm of |fl(A/s)| (bounded by its absolute row/column sums), rounded up: an
``upper`` bound of the map computed by every program, ≈ ‖fl(A/s)‖_p for a converged state
(and ‖W‖_p·(1 + 64u) where every program applies W itself).
:meth:`lipschitz_estimate` (the penalty's fast path) returns 1 for ℓ2: the normalized layer has
nothing to penalize.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from liplax import _checks
from liplax import conv as conv_ops
from liplax._checks import positive_int
from liplax.guarantee import Bound, exact_margin, gamma, unit_roundoff
from liplax.nn._base import const_bound
from liplax.nn.conv import ConvBase, conv_batch, conv_bound
from liplax.nn.dense import DenseBase, check_method, matrix_bound
from liplax.nn.registry import register_layer
from liplax.norms.power import normalize
from liplax.norms.scaling import pow2_scale

_HI = lax.Precision.HIGHEST


def _unit(v: jax.Array) -> jax.Array:
    """v/‖v‖ (no gradient), scaled by an exact power of two first so that a tiny or huge v
    neither underflows nor overflows in the sum of squares; a zero v stays zero."""
    v = lax.stop_gradient(v)
    return normalize(v / pow2_scale(v))


def _norm2(v: jax.Array) -> jax.Array:
    """‖v‖₂ computed on v/2^e (no under/overflow in the squares)."""
    c = pow2_scale(v)
    return c * jnp.sqrt(jnp.sum(jnp.square(v / c)))


def normalized(w: jax.Array, sigma: jax.Array) -> jax.Array:
    """w/σ̂, and w itself where σ̂ = 0 (0/0 would be NaN): the one division of the training-mode
    forward, shared by the per-layer path and :func:`liplax.grouped.grouped_call`."""
    return w / jnp.where(sigma > 0, sigma, jnp.ones_like(sigma))


class SigmaHat:
    """The inference-mode normalization of one layer, from s_c = ‖ûA‖ and a = ‖|û||A|‖
    (A = W/c, c an exact power of two): the applied kernel and its certificate.

    The rounding error of s_c in any program is ≤ E (module docstring). A program applies
    A/s_c where s_c > 4E; where s_c ≤ 4E (σ̂ is rounding noise, or 0) it applies W itself (the
    un-normalized weight, as for a zero σ̂), or A/(4E) if that is smaller (1/c ≤ 4E). Whatever
    branch another program P takes, its divisor is ≥ ``low`` = max(s_c − 2E, 4E(1 − 16γ)); and
    where s_c + 2E < 4E(1 − 16γ) < 1/c(1 − 32γ) every program applies W itself (``same``).
    """

    def __init__(self, c: jax.Array, s_c: jax.Array, a: jax.Array, sizes: tuple[int, int, int]):
        n, m, t = sizes
        dtype = jnp.result_type(s_c)
        g = gamma(n + m + t + 8, dtype)
        tiny = float(jnp.finfo(dtype).tiny)
        # normalization of u and norm of y: γ_{n+m+4}·s; the T-term inner products: γ_{T+2}·a;
        # 1.25 covers second-order terms and a, s computed rather than exact; underflow (or
        # flush to zero) of the products and sums: ≤ tiny per operation. E_P/E ∈ [1 ∓ 16γ].
        err = 1.25 * (gamma(n + m + 4, dtype) * s_c + gamma(t + 2, dtype) * a)
        err = err + 4.0 * (n + t + 2) * (m + 1) * tiny
        inv_c = 1.0 / c  # exact (a power of two), inf for a subnormal c
        self.c = c
        self.use_w = (s_c <= 4.0 * err) & (inv_c > 4.0 * err)
        self.s = jnp.where(s_c > 4.0 * err, s_c, 4.0 * err)
        self.same = (s_c + 2.0 * err < 4.0 * err * (1.0 - 16.0 * g)) & (
            inv_c * (1.0 - 32.0 * g) > 4.0 * err
        )
        low = jnp.maximum(s_c - 2.0 * err, 4.0 * err * (1.0 - 16.0 * g))
        self.low = low * (1.0 - 4.0 * unit_roundoff(dtype))
        self.applied = jnp.where(self.use_w, inv_c, self.s)  # the divisor of A in this program

    def sigma(self) -> jax.Array:
        """σ̂ = c·s as applied (1 where W itself is applied)."""
        return jnp.where(self.use_w, jnp.ones_like(self.s), self.c * self.s)

    def kernel(self, w: jax.Array) -> jax.Array:
        """The applied kernel: fl(fl(w/c)/s) (w/c exact), or w itself (module docstring)."""
        return jnp.where(self.use_w, w, (w / self.c) / self.s)

    def certify(self, b: Bound, k: jax.Array, p: float) -> Bound:
        """An ``upper`` bound of the ℓp norm of the kernel every program P applies, from the
        bound ``b`` of the kernel ``k`` = :meth:`kernel` of this program (module docstring)."""
        dtype = jnp.result_type(b.value)
        u = unit_roundoff(dtype)
        ak = jnp.abs(k)
        rows = jnp.max(jnp.sum(ak, axis=tuple(range(ak.ndim - 1))))  # max over outputs: ℓ∞
        cols = jnp.max(jnp.sum(ak, axis=(*range(ak.ndim - 2), ak.ndim - 1)))  # over inputs: ℓ1
        extra = {1: cols, 2: jnp.sqrt(rows * cols), math.inf: rows}[p]
        extra = extra * (1.0 + 2.0 * gamma(ak.size, dtype))  # sums of |k|, rounded up
        main = b.value * (1.0 + exact_margin(dtype)) if b.kind == "exact" else b.value
        ratio = self.applied / self.low
        spread = ratio * (main + 2.01 * u * extra) * (1.0 + 2.01 * u) * (1.0 + 8.0 * u)
        return Bound(jnp.where(self.same, main, spread), "upper")


class _SpectralNormalized:
    """What both spectral layers share: the applied kernel (σ̂ stepped in training mode, the
    floored :class:`SigmaHat` in inference mode), its certificate and the penalty's ℓ2 value 1
    (a normalized layer has nothing to penalize)."""

    def _sigma_hat(self) -> SigmaHat:
        raise NotImplementedError

    def sigma(self, *, update: bool = False) -> jax.Array:
        """σ̂: one warm power step that stores u (``update=True`` in training mode), else the
        inference-mode value c·s from the stored u (floored, see the module docstring)."""
        if update and not self.deterministic:
            return self._power_sigma(self.kernel[...], update=True)
        return self._sigma_hat().sigma()

    def effective_kernel(self) -> jax.Array:
        """The inference-mode kernel fl(fl(W/c)/s); moves no state."""
        return self._sigma_hat().kernel(self.kernel[...])

    def _forward_kernel(self) -> jax.Array:
        if self.deterministic:
            return self.effective_kernel()
        return normalized(self.kernel[...], self._power_sigma(self.kernel[...], update=True))

    def _certify(self, p: float, bound_fn) -> Bound:
        sh = self._sigma_hat()
        k = sh.kernel(self.kernel[...])
        return sh.certify(bound_fn(k), k, p)

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        if p != 2:
            return self._bound(shape, p)
        return const_bound(1.0, "estimate")


def _example_dense(rngs):
    return SpectralDense(3, 4, use_bias=True, rngs=rngs), (3,)


def _example_conv(rngs):
    return SpectralConv(2, 2, 3, input_size=(4, 4), padding="CIRCULAR", init_iters=20,
                        rngs=rngs), (4, 4, 2)


@register_layer(example=_example_dense, power="forward")
class SpectralDense(_SpectralNormalized, DenseBase):
    """x ↦ x W/σ̂ (+ b), σ̂ a warm power-iteration estimate of ‖W‖₂ (see the module docstring).

    Args:
      power_iters: power-iteration steps per training-mode call (1 with a warm start).
      method: ``"exact"`` (SVD) or ``"gram"`` (Gram upper bound) for the ℓ2 certificate.
      Other arguments as for :class:`~liplax.nn.Dense`.
    """

    def __init__(self, in_features: int, out_features: int, *, method: str = "exact", **kw):
        super().__init__(in_features, out_features, **kw)
        self.method = check_method(method, "SpectralDense")
        # Start at the top singular vector of the initial kernel (input side: σ̂ = ‖u W‖), so a
        # new layer is normalized before any training step (a random start gave ‖W/σ̂‖ ≈ 4).
        w = self.kernel[...]
        top = jnp.linalg.svd(w / pow2_scale(w), full_matrices=False)[0][:, 0]
        self.power_state[...] = top.astype(self.power_state[...].dtype)

    def _sigma_hat(self) -> SigmaHat:
        """‖û A‖ and ‖|û||A|‖ for A = W/c and the stored u (full-precision products)."""
        w = self.kernel[...]
        c = pow2_scale(w)
        a = w / c
        uh = _unit(self.power_state[...])
        y = jnp.matmul(uh, a, precision=_HI)
        y_abs = jnp.matmul(jnp.abs(uh), jnp.abs(a), precision=_HI)
        n, m = a.shape
        return SigmaHat(c, _norm2(y), _norm2(y_abs), (n, m, n))

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """``upper`` ℓp norm of the inference-mode map in every program (module docstring;
        ≈ 1 for p=2 once u has converged)."""
        return self._certify(p, lambda k: matrix_bound(k, p, method=self.method))


@register_layer(example=_example_conv, power="forward")
class SpectralConv(_SpectralNormalized, ConvBase):
    """x ↦ (k/σ̂) ⋆ x (+ b), σ̂ a warm power iteration on the real convolution operator.

    Arguments as for :class:`~liplax.nn.Conv`; ``input_size`` is the size σ̂ is computed for;
    ``init_iters`` power steps on the real operator at construction (default 100) start the
    state near the top singular vector, so a new layer is normalized before any training step.
    """

    def __init__(self, *args, init_iters: int = 100, **kw):
        super().__init__(*args, **kw)
        iters = positive_int(init_iters, "init_iters", "SpectralConv")
        _, v = conv_ops.power_iteration(
            self.kernel[...], self.input_size, self.power_state[...], strides=self.strides,
            padding=self.padding, num_iters=iters,
        )
        self.power_state[...] = v.astype(self.power_state[...].dtype)

    def _sigma_hat(self) -> SigmaHat:
        """‖A û‖ and ‖|A||û|‖ on the real operator (layer padding and stride, A on k/c)."""
        k = self.kernel[...]
        c = pow2_scale(k)
        kc = k / c
        uh = _unit(self.power_state[...])
        pads = _checks.padding(self.padding, self.input_size, self.kernel_size, self.strides)
        y = conv_batch(kc[None], uh[None], self.strides, pads)[0]
        y_abs = conv_batch(jnp.abs(kc)[None], jnp.abs(uh)[None], self.strides, pads)[0]
        taps = kc.shape[0] * kc.shape[1] * kc.shape[2]
        return SigmaHat(c, _norm2(y), _norm2(y_abs), (uh.size, y.size, taps))

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """``upper`` ℓp constant of the inference-mode map on ``input_shape`` = (H, W, C)."""
        hw = shape[:2]
        return self._certify(
            p, lambda k: conv_bound(k, hw, p, strides=self.strides, padding=self.padding)
        )
