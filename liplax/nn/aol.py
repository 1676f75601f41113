r"""Almost-orthogonal layers (AOL; Prach & Lampert, *Almost-Orthogonal Layers for Efficient
General-Purpose Lipschitz Networks*, ECCV 2022).

Dense: for x ↦ x W the Gram matrix of the input space is G = W Wᵀ. With
d_i = (Σ_j |G_ij|)^{-1/2}, the rescaled weight diag(d)·W has ‖·‖₂ ≤ 1: by the weighted Schur
test with weights q_i = 1/d_i, λ_max(D G D) ≤ max_i (1/q_i) Σ_j d_i |G_ij| d_j q_j
= max_i d_i² Σ_j |G_ij| ≤ 1 (Schur 1911; Horn & Johnson, *Topics in Matrix Analysis*, §5.5).

Convolution: the same with the input-channel Gram of the operator, whose entries are the
kernel's auto-correlations C[s, c, c'] = Σ_{t, o} k[t, c, o]·k[t + s, c', o] over all shifts s:
d_c = (Σ_{s, c'} |C[s, c, c']|)^{-1/2} scales the input channels. The bound holds for the
circular operator on any input size ≥ 2k − 1 (whose Gram entries are exactly the C's), hence
for every circular size (its spectrum samples the same symbol), every zero padding (a
restriction of a larger circular operator) and every stride (a subset of the outputs).

Certificate: :func:`aol_certificate` evaluates the weighted Schur bound max_i d_i² s_i in closed
form for the scales ``d`` actually used, with a rounding margin: the computed Gram entries
differ from the exact ones by at most γ_k(|W||W|ᵀ)_ij (Higham, *Accuracy and Stability*, §3.5),
positive sums are inflated by 1/(1 − γ_n), and the rounding of the effective weight
fl(d_i W_ij) = d_i W_ij(1 + δ), |δ| ≤ u, adds at most u‖|DW|‖₂ ≤ u·(max_i d_i² t_i)^{1/2}, t the
row sums of |W||W|ᵀ. The result is an ``upper`` bound on the applied layer, ≈ 1.

Reported ℓ2 bound: the certificate is ≈ 1 whatever the weights, while the applied operator's
norm is often well below it (0.5-0.8 at initialization). ``lipschitz_bound`` therefore reports
min(certificate, Gram bound of the applied weights) (:func:`liplax.linalg.gram_bound`,
:func:`liplax.conv.gram_bound`: ``upper``, rounding included); the minimum of two sound upper
bounds is one. ``lipschitz_estimate`` (the training penalty's value) keeps the closed form.

Scale: W is first divided by an exact power of two c (max|W/c| in [1, 2), no rounding, no
gradient through c), so the Gram entries neither overflow (1e30 weights: W Wᵀ ≈ 1e60 would
be inf in float32, and the certificate NaN) nor underflow (1e-30 weights: W Wᵀ ≈ 1e-60 would
flush to 0, and the certificate to a wrong 0). AOL is scale invariant up to ε, so the layer
applies diag(d(W/c))·W/c, which differs from diag(d(W))·W only through ε/c² in the scales.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from liplax import conv as conv_ops
from liplax.guarantee import Bound, gamma, unit_roundoff
from liplax.nn.conv import ConvBase, conv_bound
from liplax.nn.dense import DenseBase, matrix_bound
from liplax.nn.registry import register_layer
from liplax.norms.scaling import pow2_scale

_HI = lax.Precision.HIGHEST
EPS = 1e-12


def _gram_rows_dense(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row sums of |W Wᵀ| and of |W||W|ᵀ (computed)."""
    g = jnp.matmul(w, w.T, precision=_HI)
    aw = jnp.abs(w)
    t = jnp.matmul(aw, aw.T, precision=_HI)
    return jnp.sum(jnp.abs(g), axis=1), jnp.sum(t, axis=1)


def _autocorr(k: jax.Array) -> jax.Array:
    """C[c, y, x, c'] = Σ_{h, w, o} k[y+h−(kh−1), x+w−(kw−1), c, o]·k[h, w, c', o] (all shifts)."""
    kh, kw = k.shape[:2]
    lhs = jnp.transpose(k, (2, 0, 1, 3))  # (cin, kh, kw, cout)
    rhs = jnp.transpose(k, (0, 1, 3, 2))  # (kh, kw, cout, cin)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        (1, 1),
        ((kh - 1, kh - 1), (kw - 1, kw - 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HI,
    )


def _gram_rows_conv(k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-input-channel sums of |C| and of the auto-correlation of |k| (computed)."""
    s = jnp.sum(jnp.abs(_autocorr(k)), axis=(1, 2, 3))
    t = jnp.sum(_autocorr(jnp.abs(k)), axis=(1, 2, 3))
    return s, t


def aol_scales(row_sums: jax.Array) -> jax.Array:
    """d = (s + ε)^{-1/2}, ε = 1e-12 guarding empty rows (it only shrinks d)."""
    return lax.rsqrt(row_sums + EPS)


def aol_certificate(
    d: jax.Array, s: jax.Array, t: jax.Array, *, inner: int, row_len: int
) -> jax.Array:
    """Upper bound on ‖fl(diag(d)·W)‖₂ from computed row sums (see the module docstring).

    Args:
      d: the scales actually applied.
      s, t: computed row sums of |G| and of |W||W|ᵀ (or their convolution analogues).
      inner: the number of products in one Gram entry (k); row_len: terms in one row sum (n).
    """
    dtype = s.dtype
    u = unit_roundoff(dtype)
    gk, gn = gamma(inner, dtype), gamma(row_len, dtype)
    s_hat = (s + gk / (1.0 - gk) * t) / (1.0 - gn)
    t_hat = t / ((1.0 - gk) * (1.0 - gn))
    d2 = d * d
    main = jnp.sqrt(jnp.max(d2 * s_hat))
    extra = u * jnp.sqrt(jnp.max(d2 * t_hat))
    return (main + extra) * (1.0 + gamma(8, dtype))


def aol_dense(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(diag(d)·W, certificate) for a dense weight ``(in, out)`` (W scaled first: module doc)."""
    w = w / pow2_scale(w)
    s, t = _gram_rows_dense(w)
    d = aol_scales(s)
    cert = aol_certificate(d, s, t, inner=w.shape[1], row_len=w.shape[0])
    return d[:, None] * w, cert


def aol_conv(k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(kernel with input channels scaled by d, certificate) for an HWIO kernel (scaled first)."""
    k = k / pow2_scale(k)
    kh, kw, cin, cout = k.shape
    s, t = _gram_rows_conv(k)
    d = aol_scales(s)
    cert = aol_certificate(
        d, s, t, inner=kh * kw * cout, row_len=(2 * kh - 1) * (2 * kw - 1) * cin
    )
    return k * d[None, None, :, None], cert


def _example_dense(rngs):
    return AOLDense(3, 4, use_bias=True, rngs=rngs), (3,)


def _example_conv(rngs):
    return AOLConv(2, 3, 3, strides=2, rngs=rngs), (5, 5, 2)


@register_layer(example=_example_dense)
class AOLDense(DenseBase):
    """x ↦ x·diag(d)W (+ b): certified 1-Lipschitz in ℓ2 in closed form (see module docstring)."""

    def effective_kernel(self) -> jax.Array:
        return aol_dense(self.kernel[...])[0]

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: min(AOL certificate, Gram bound of diag(d)W) (``upper``, ≤ 1 + rounding);
        ℓ1/ℓ∞: exact norms of diag(d)W."""
        w, cert = aol_dense(self.kernel[...])
        if p == 2:
            return Bound(jnp.minimum(cert, matrix_bound(w, 2, method="gram").value), "upper")
        return matrix_bound(w, p)

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: the closed-form certificate alone (no Gram iteration); ℓ1/ℓ∞: the bound."""
        if p == 2:
            return Bound(aol_dense(self.kernel[...])[1], "upper")
        return self._bound(shape, p)


@register_layer(example=_example_conv)
class AOLConv(ConvBase):
    """AOL convolution: input channels of k scaled by d; certified 1-Lipschitz in ℓ2 for every
    input size, padding and stride. ``input_size`` is optional (no power iteration is needed)."""

    needs_input_size = False

    def effective_kernel(self) -> jax.Array:
        return aol_conv(self.kernel[...])[0]

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: min(AOL certificate, Gram bound of the scaled kernel's operator on this input)
        (``upper``); ℓ1/ℓ∞: bounds of the scaled kernel."""
        k, cert = aol_conv(self.kernel[...])
        hw = shape[:2]
        if p == 2:
            gram = conv_ops.gram_bound(k, hw, strides=self.strides, padding=self.padding).value
            return Bound(jnp.minimum(cert, gram), "upper")
        return conv_bound(k, hw, p, strides=self.strides, padding=self.padding)

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: the closed-form certificate alone (no Gram iteration); ℓ1/ℓ∞: the bound."""
        if p == 2:
            return Bound(aol_conv(self.kernel[...])[1], "upper")
        return self._bound(shape, p)

