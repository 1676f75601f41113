"""``liplax norms``: every operator on a few dense and convolution layers, against the truth.

The truth is the float64 SVD of the materialized operator where it is small enough to build; a
row whose ``upper`` bound is below it, or whose ``estimate`` is above it, is marked and the
command exits with status 1.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from liplax.cli.common import enable_cache


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    import jax

    jax.block_until_ready(fn())  # compile
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    value = out[0] if isinstance(out, tuple) else out
    return float(value), time.perf_counter() - t0


def _materialized_norm(kernel, hw: tuple[int, int], padding: str) -> float:
    """σ₁ of the explicit operator (identity batch through the layer), float64 SVD."""
    import jax.numpy as jnp
    import numpy as np

    from liplax import conv

    d = hw[0] * hw[1] * kernel.shape[2]
    eye = jnp.eye(d, dtype=jnp.float32).reshape(d, *hw, kernel.shape[2])
    mat = np.asarray(conv.apply(kernel, eye, padding=padding), np.float64).reshape(d, -1)
    return float(np.linalg.norm(mat, 2))


def norms_report(seed: int = 0) -> int:
    """Print the operator report; exit code 1 if any bound contradicts the truth."""
    import jax
    import numpy as np

    from liplax import conv, linalg

    key = jax.random.key(seed)
    k_dense, k_small, k_big, k_pi = jax.random.split(key, 4)
    rows: list[tuple[str, str, str, float, float, float | None]] = []
    ok = True

    w = jax.random.normal(k_dense, (784, 256)) / 28.0
    truth = float(np.linalg.norm(np.asarray(w, np.float64), 2))
    dense_ops = [
        ("spectral_norm", "exact", lambda: linalg.spectral_norm(w)),
        ("gram_bound (6)", "upper", lambda: linalg.gram_bound(w)),
        ("power_iteration (20)", "estimate", lambda: linalg.power_iteration(w, key=k_pi)),
        ("norm_inf", "exact", lambda: linalg.norm_inf(w)),
    ]
    for name, kind, fn in dense_ops:
        v, t = _timed(fn)
        rows.append(("dense 784→256", name, kind, v, t, truth if "inf" not in name else None))

    for label, kk, shape, hw in [
        ("conv 3×3 16→16 @ 8×8", k_small, (3, 3, 16, 16), (8, 8)),
        ("conv 3×3 64→64 @ 32×32", k_big, (3, 3, 64, 64), (32, 32)),
    ]:
        kernel = jax.random.normal(kk, shape) / np.sqrt(9 * shape[2])
        small = hw[0] * hw[1] * shape[2] <= 1024
        truth_c = _materialized_norm(np.asarray(kernel), hw, "CIRCULAR") if small else None
        truth_s = _materialized_norm(np.asarray(kernel), hw, "SAME") if small else None
        ops = [
            ("exact_spectral_norm", "exact", "CIRCULAR",
             lambda k=kernel, hw=hw: conv.exact_spectral_norm(k, hw)),
            ("gram_bound CIRCULAR", "upper", "CIRCULAR",
             lambda k=kernel, hw=hw: conv.gram_bound(k, hw, padding="CIRCULAR")),
            ("gram_bound SAME", "upper", "SAME",
             lambda k=kernel, hw=hw: conv.gram_bound(k, hw, padding="SAME")),
            ("power_iteration SAME (50)", "estimate", "SAME",
             lambda k=kernel, hw=hw: conv.power_iteration(k, hw, padding="SAME", key=k_pi)),
        ]
        for name, kind, pad, fn in ops:
            v, t = _timed(fn)
            ref = truth_c if pad == "CIRCULAR" else truth_s
            rows.append((label, name, kind, v, t, ref))

    print(f"liplax bound report (jax {jax.__version__}, {jax.default_backend()})\n")
    head = f"{'layer':<24} {'operator':<26} {'kind':<9} {'value':>10} {'truth':>10} {'ms':>8}"
    print(head)
    print("-" * len(head))
    for layer, name, kind, v, t, ref in rows:
        mark = ""
        if ref is not None:
            if kind == "upper" and v < ref:
                ok, mark = False, "  BELOW TRUTH"
            if kind == "estimate" and v > ref * (1 + 1e-5):
                ok, mark = False, "  ABOVE TRUTH"
        ref_s = f"{ref:10.5f}" if ref is not None else f"{'-':>10}"
        print(f"{layer:<24} {name:<26} {kind:<9} {v:10.5f} {ref_s} {1e3 * t:8.2f}{mark}")
    print(
        "\nexact: the norm itself; upper: never below it (rounding included); "
        "estimate: may be below it.\ntruth: SVD of the materialized operator (float64), "
        "shown where it is small enough to build."
    )
    return 0 if ok else 1


def add_parser(sub) -> None:
    """Register ``norms`` on an ``argparse`` subparsers object."""
    n = sub.add_parser("norms", help="every operator on a few layers, against the truth")
    n.add_argument("--seed", type=int, default=0)
    n.set_defaults(func=_cmd_norms)


def _cmd_norms(args: argparse.Namespace) -> int:
    enable_cache()
    return norms_report(args.seed)


__all__ = ["add_parser", "norms_report"]
