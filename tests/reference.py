"""Independent float64 NumPy reference for the liplax operator-norm tests. No JAX in here.

The truth for a convolution layer is the explicit matrix of the layer, built by applying a plain
NumPy convolution (HWIO kernel, one NHWC image, cross-correlation, exactly the semantics of
``flax.nnx.Conv``) to every basis vector of the input space (an identity batch). Its SVD is the
truth for the spectral norm; its max row abs-sum the truth for the induced l_inf norm.

``tests/test_reference.py`` checks :func:`conv_apply` against ``flax.nnx.Conv`` itself, so the
reference provably is the real layer.

Layout conventions (the contract of liplax):
- a dense matrix ``w`` has flax's ``nnx.Linear`` layout ``(in, out)``: the layer is ``x @ w``, so
  the operator acting on column vectors is ``w.T``;
- the conv operator matrix returned by :func:`conv_operator` acts on column vectors: its shape is
  ``(OH * OW * Cout, H * W * Cin)``, inputs and outputs flattened in C order from (H, W, C).
"""

from __future__ import annotations

import functools
import math

import numpy as np

PADDINGS_STR = ("CIRCULAR", "SAME", "VALID")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return (int(v), int(v))
    a, b = v
    return (int(a), int(b))


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """``lax.padtype_to_pads(..., "SAME")`` for one axis, by hand."""
    out = -(-n // s)  # ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    lo = total // 2
    return (lo, total - lo)


def resolve_padding(padding, input_hw, kernel_hw, strides_hw):
    """Return ("CIRCULAR", None) or ("ZERO", ((lo, hi), (lo, hi))) following flax's vocabulary."""
    if isinstance(padding, str):
        p = padding.upper()
        if p == "CIRCULAR":
            return "CIRCULAR", None
        if p == "VALID":
            return "ZERO", ((0, 0), (0, 0))
        if p == "SAME":
            return "ZERO", tuple(
                same_pads(n, k, s) for n, k, s in zip(input_hw, kernel_hw, strides_hw, strict=True)
            )
        raise ValueError(f"unknown padding {padding!r}")
    if isinstance(padding, int | np.integer):
        p = int(padding)
        return "ZERO", ((p, p), (p, p))
    pads = tuple(_pair(item) for item in padding)
    assert len(pads) == 2
    return "ZERO", pads


def output_shape(input_hw, kernel_hw, strides=1, padding="SAME") -> tuple[int, int]:
    """Spatial output shape of the layer (raises ValueError when there is no output)."""
    input_hw, kernel_hw, strides_hw = _pair(input_hw), _pair(kernel_hw), _pair(strides)
    mode, pads = resolve_padding(padding, input_hw, kernel_hw, strides_hw)
    out = []
    for ax in range(2):
        n, k, s = input_hw[ax], kernel_hw[ax], strides_hw[ax]
        if mode == "CIRCULAR":
            padded = n + (k - 1) // 2 + k // 2
        else:
            padded = n + pads[ax][0] + pads[ax][1]
        if padded < k:
            raise ValueError(f"no output on axis {ax}: padded input {padded} < kernel {k}")
        out.append((padded - k) // s + 1)
    return tuple(out)


def conv_apply(x, kernel, strides=1, padding="SAME") -> np.ndarray:
    """The layer ``flax.nnx.Conv(use_bias=False)`` in float64 NumPy.

    Args:
      x: (B, H, W, Cin) batch of NHWC images.
      kernel: (kh, kw, Cin, Cout) HWIO kernel.
      strides: int or (sh, sw).
      padding: "CIRCULAR" (flax: wrap-pad lo=(k-1)//2, hi=k//2 then VALID; a kernel larger than
        the input wraps around several times, exactly as ``np.pad(mode="wrap")``), "SAME" (pads of
        ``lax.padtype_to_pads``), "VALID", an int, or ((lo, hi), (lo, hi)).
    """
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    assert x.ndim == 4 and kernel.ndim == 4 and x.shape[3] == kernel.shape[2]
    kh, kw = kernel.shape[:2]
    sh, sw = _pair(strides)
    mode, pads = resolve_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))
    if mode == "CIRCULAR":
        spatial = ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)
        xp = np.pad(x, ((0, 0), *spatial, (0, 0)), mode="wrap")
    else:
        xp = np.pad(x, ((0, 0), *pads, (0, 0)), mode="constant")
    ph, pw = xp.shape[1:3]
    if ph < kh or pw < kw:
        raise ValueError(f"no output: padded input {(ph, pw)} smaller than kernel {(kh, kw)}")
    oh, ow = (ph - kh) // sh + 1, (pw - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]), dtype=np.float64)
    for p in range(kh):
        for q in range(kw):
            patch = xp[:, p : p + sh * (oh - 1) + 1 : sh, q : q + sw * (ow - 1) + 1 : sw, :]
            out += patch @ kernel[p, q]
    return out


def conv_operator(kernel, input_shape, strides=1, padding="SAME") -> np.ndarray:
    """Explicit float64 matrix of the conv layer, acting on column vectors (C-order NHWC flatten).

    Built by applying :func:`conv_apply` to the identity batch: column j is the layer applied to
    the j-th basis image.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    h, w = _pair(input_shape)
    cin = kernel.shape[2]
    d_in = h * w * cin
    basis = np.eye(d_in, dtype=np.float64).reshape(d_in, h, w, cin)
    out = conv_apply(basis, kernel, strides, padding)
    return out.reshape(d_in, -1).T.copy()


def dense_operator(w) -> np.ndarray:
    """Operator matrix (acting on column vectors) of the flax ``nnx.Linear`` layer x ↦ x @ w."""
    return np.asarray(w, dtype=np.float64).T


def singular_values(m) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0:
        return np.zeros(0)
    return np.linalg.svd(m, compute_uv=False)


def spectral_norm_truth(m) -> float:
    """Largest singular value (float64 SVD)."""
    s = singular_values(m)
    return float(s[0]) if s.size else 0.0


def linf_truth(m) -> float:
    """Induced l_inf → l_inf norm of the operator matrix ``m`` acting on column vectors:
    the max row abs-sum."""
    m = np.asarray(m, dtype=np.float64)
    return float(np.max(np.sum(np.abs(m), axis=1)))


def l1_truth(m) -> float:
    """Induced l_1 → l_1 norm of the operator matrix ``m`` acting on column vectors:
    the max column abs-sum."""
    m = np.asarray(m, dtype=np.float64)
    return float(np.max(np.sum(np.abs(m), axis=0)))


def top_singular_space(m, rel_gap: float = 1e-9):
    """(sigma1, U1, V1): the top singular value and orthonormal bases of its left/right singular
    spaces (columns), grouping singular values within ``rel_gap`` of sigma1."""
    u, s, vt = np.linalg.svd(np.asarray(m, dtype=np.float64), full_matrices=False)
    mult = int(np.sum(s >= s[0] * (1.0 - rel_gap)))
    return float(s[0]), u[:, :mult], vt[:mult].T


def conv_kernel_gradient_of_sigma1(kernel, input_shape, strides=1, padding="SAME"):
    """d sigma_1(operator) / d kernel, from the reference SVD (float64).

    The operator is linear in the kernel, M(k) = Σ_j k_j M(e_j), so
    d sigma_1 / d k_j = <u1 v1ᵀ, M(e_j)>. A real circular convolution has its top singular value
    doubly degenerate when it sits at a conjugate pair of frequencies (ω, −ω); that degeneracy is
    preserved by every kernel perturbation, so sigma_1 stays differentiable and its derivative is
    the average (1/m) Σ_i u_iᵀ M(e_j) v_i over the m-dimensional top singular space.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    m = conv_operator(kernel, input_shape, strides, padding)
    _, u1, v1 = top_singular_space(m)
    mult = u1.shape[1]
    grad = np.zeros(kernel.size)
    for j in range(kernel.size):
        e = np.zeros(kernel.size)
        e[j] = 1.0
        mj = conv_operator(e.reshape(kernel.shape), input_shape, strides, padding)
        grad[j] = np.trace(u1.T @ mj @ v1) / mult
    return grad.reshape(kernel.shape), mult


@functools.lru_cache(maxsize=4096)
def _cached_truths(key: bytes, shape, dtype_str, input_shape, strides, padding):
    kernel = np.frombuffer(key, dtype=np.dtype(dtype_str)).reshape(shape)
    m = conv_operator(kernel, input_shape, strides, padding)
    return spectral_norm_truth(m), linf_truth(m)


def _hashable_padding(padding):
    if isinstance(padding, str) or isinstance(padding, int | np.integer):
        return padding
    return tuple(_pair(p) for p in padding)


def conv_truths(kernel, input_shape, strides=1, padding="SAME") -> tuple[float, float]:
    """(spectral norm, l_inf norm) of the layer's operator, cached on the kernel's bytes.

    The kernel is cast to float64 first (the truth of the values actually stored, e.g. of a
    bfloat16 or float32 kernel)."""
    k = np.ascontiguousarray(np.asarray(kernel, dtype=np.float64))
    return _cached_truths(
        k.tobytes(),
        k.shape,
        k.dtype.str,
        tuple(_pair(input_shape)),
        _pair(strides) if not isinstance(strides, int) else strides,
        _hashable_padding(padding),
    )


def circular_spectral_norm_fft(kernel, n_hw) -> float:
    """sup over the n_hw DFT grid of sigma_1(K̂(u, v)) — a second, independent route to the
    exact stride-1 circular norm (Sedghi et al.), used to test the explicit operator itself.
    Taps are aliased modulo n (the kernel wraps; it is never cropped)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw, cin, cout = kernel.shape
    n1, n2 = n_hw
    wrapped = np.zeros((n1, n2, cin, cout))
    for p in range(kh):
        for q in range(kw):
            wrapped[p % n1, q % n2] += kernel[p, q]
    khat = np.fft.fft2(wrapped, axes=(0, 1))  # (n1, n2, cin, cout)
    s = np.linalg.svd(khat, compute_uv=False)
    return float(np.max(s))


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def isclose_rel(a: float, b: float, rtol: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= rtol * abs(b)
