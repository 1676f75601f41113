r"""Winograd F(4×4, 3×3): the stride-1 3×3 convolution and its adjoint as one batched matmul.

The power iteration (:mod:`liplax.norms.power`) applies A and Aᵀ of the same convolution
hundreds of times with the kernel fixed. XLA's CPU backend runs each convolution on one thread
(measured: the same time on one core as on two, at batch 1 and at batch 16), while its batched
matmuls use every thread. Winograd's minimal filtering algorithm (Lavin & Gray, *Fast
Algorithms for Convolutional Neural Networks*, CVPR 2016) rewrites a 3×3 correlation as

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

per 6×6 input tile d (stride 4) and 4×4 output tile, with the channel sum of ⊙ a matmul for each
of the 36 transformed positions: 36 matmuls of (tiles × in) by (in × out), 2.25× fewer
multiplications than the direct sum, all multi-threaded. The kernel transform G g Gᵀ is done
once, outside the loop; the tile transforms are sums of slices with small integer weights.

It is the same linear map in exact arithmetic; in floating point its rounding is larger than the
direct sum's (about 10⁻⁵ relative in float32 with the points 0, ±1, ±2). It is therefore used
**only inside** the power iteration's loop, which returns an ``estimate`` whose value is
recomputed with the direct convolution at the returned vector (so the reported ‖Av‖ is the real
operator's, ≤ σ₁ up to that rounding). ``docs/design.md §norms`` "the power iteration's fast
path".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: output tile size m of F(m×m, 3×3); input tiles are m + 2 = 6 wide.
TILE = 4
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)


def _combine(mat: np.ndarray, xs: list[jax.Array]) -> list[jax.Array]:
    """[Σ_j mat[i, j]·xs[j] for each row i], skipping zero weights (elementwise, fusable)."""
    out = []
    for row in mat:
        acc = None
        for c, x in zip(row, xs, strict=True):
            if c == 0:
                continue
            term = x if c == 1 else -x if c == -1 else float(c) * x
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def transform_kernel(kernel: jax.Array) -> jax.Array:
    """G g Gᵀ for an HWIO 3×3 kernel: shape (36, in, out), computed at the kernel's precision."""
    g = jnp.asarray(_G, kernel.dtype)
    u = jnp.einsum("ai,bj,ijco->abco", g, g, kernel, precision=jax.lax.Precision.HIGHEST)
    return u.reshape(36, *kernel.shape[2:])


def valid_correlation(x: jax.Array, u: jax.Array) -> jax.Array:
    """The VALID 3×3 cross-correlation of x (H, W, in) with the kernel whose transform is ``u``.

    Output (H − 2, W − 2, out), as ``lax.conv_general_dilated`` with padding VALID computes it
    (up to rounding). The input is zero-extended at the end to whole tiles and the output cropped.
    """
    h, w = x.shape[0] - 2, x.shape[1] - 2
    th, tw = -(-h // TILE), -(-w // TILE)
    x = jnp.pad(x, ((0, TILE * th - h), (0, TILE * tw - w), (0, 0)))
    rows = _combine(_BT, [x[a:a + TILE * th:TILE] for a in range(6)])        # 6 × (th, W', in)
    v = []
    for r in rows:
        v += _combine(_BT, [r[:, b:b + TILE * tw:TILE] for b in range(6)])   # 6 × (th, tw, in)
    v = jnp.stack(v).reshape(36, th * tw, x.shape[2])
    m = jnp.einsum("tnc,tco->tno", v, u, precision=jax.lax.Precision.HIGHEST)
    m = m.reshape(6, 6, th, tw, u.shape[2])
    m_rows = _combine(_AT, [m[p] for p in range(6)])                          # 4 × (6, th, tw, out)
    y = jnp.stack([jnp.stack(_combine(_AT, [mr[q] for q in range(6)]), axis=2)
                   for mr in m_rows], axis=1)                                  # (th, 4, tw, 4, out)
    return y.reshape(TILE * th, TILE * tw, u.shape[2])[:h, :w]


__all__ = ["TILE", "transform_kernel", "valid_correlation"]
