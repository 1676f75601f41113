"""Time and value of the convolution norm operators against a plain NumPy baseline, same process.

Writes JSON to stdout and to ``benchmarks/results/conv_norms.json``. Each timing is the median of
``--repeats`` runs after a warm-up (compilation excluded), with ``block_until_ready``. The
baseline is the textbook method: ``np.fft.fft2`` of the zero-padded kernel and a batched
``np.linalg.svd(compute_uv=False)`` over all N² frequencies. NumPy's BLAS thread pool can fight
JAX's threads on a small machine, so the baseline is timed both with its default pool and with
one BLAS thread (threadpoolctl), and the faster of the two is the reference for the speedups.
``exact_spectral_norm`` is also timed with one LAPACK thread: jaxlib's CPU SVD runs in scipy's
OpenBLAS, whose default thread pool can cost ~100× on a small loaded machine.

Floors (issue 2): ``gram_bound`` (6 iterations) and ``exact_spectral_norm`` each ≥ 3× faster than
the baseline; the zero-padding bound within 1% of the converged power-iteration value.

``gram_grad`` (issue 16): the value and gradient of ``gram_bound`` (circular, 6 iterations) with
the closed-form gradient (:mod:`liplax.norms.gram_vjp`) against reverse mode through every Gram
step (the implementation before it, :func:`~liplax.norms.gram_vjp.reverse_mode_reference`), and
the value alone; the three are timed interleaved (one call of each per round, medians). Target:
value and gradient ≤ ~230 ms at 64 channels, 32², on 2 threads (2× lip4conv's 465 ms).

Run: ``python benchmarks/conv_norms.py [--repeats 10] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from liplax import conv
from liplax.norms.gram_vjp import reverse_mode_reference

CASES = [  # (cin, cout, kh, kw, n): HWIO kernels (kh, kw, cin, cout) at n×n.
    (64, 64, 3, 3, 32),
    (128, 128, 3, 3, 16),
]


def _time(fn, repeats: int) -> tuple[float, object]:
    out = fn()
    jax.block_until_ready(out)  # warm-up: compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _time_interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument function, one call of each per round."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # warm-up: compile
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def gram_grad_rows(kernel: jax.Array, hw: tuple[int, int], repeats: int, num_iters: int = 6):
    """Value + gradient of the circular Gram bound: closed form vs reverse mode vs value only."""
    def value(k):
        return conv.gram_bound(k, hw, padding="CIRCULAR", num_iters=num_iters).value

    closed = jax.jit(jax.value_and_grad(value))
    fwd = jax.jit(value)
    with reverse_mode_reference():
        def value_ref(k):  # a new function: traced under the reference
            return conv.gram_bound(k, hw, padding="CIRCULAR", num_iters=num_iters).value

        reverse = jax.jit(jax.value_and_grad(value_ref))
        jax.block_until_ready(reverse(kernel))
    t = _time_interleaved({"closed": lambda: closed(kernel), "reverse": lambda: reverse(kernel),
                           "fwd": lambda: fwd(kernel)}, repeats)
    (v, g), (rv, rg) = closed(kernel), reverse(kernel)
    return {
        "num_iters": num_iters,
        "fwd_bwd_closed_form_seconds": t["closed"],
        "fwd_bwd_reverse_mode_seconds": t["reverse"],
        "fwd_seconds": t["fwd"],
        "reverse_over_closed_form": t["reverse"] / t["closed"],
        "closed_form_over_fwd": t["closed"] / t["fwd"],
        "values_equal": float(v) == float(rv),
        "gradient_max_rel_diff": float(jnp.max(jnp.abs(g - rg)) / jnp.max(jnp.abs(rg))),
        "lip4conv_fwd_bwd_seconds_issue16": 0.465,
    }


def numpy_baseline(kernel: np.ndarray, n: int) -> float:
    """Sedghi et al.'s method in NumPy: full FFT of the zero-padded kernel, SVD per frequency."""
    k = np.transpose(kernel, (2, 3, 0, 1))  # (cin, cout, kh, kw)
    mats = np.fft.fft2(k, s=(n, n), axes=(2, 3))  # (cin, cout, n, n)
    mats = np.transpose(mats, (2, 3, 0, 1)).reshape(n * n, k.shape[0], k.shape[1])
    return float(np.linalg.svd(mats, compute_uv=False).max())


def run_case(cin: int, cout: int, kh: int, kw: int, n: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    kernel_np = (rng.standard_normal((kh, kw, cin, cout)) / np.sqrt(kh * kw * cin)).astype(
        np.float32
    )
    kernel = jnp.asarray(kernel_np)
    hw = (n, n)
    rows = {}

    t, v = _time(lambda: numpy_baseline(kernel_np, n), repeats)
    rows["numpy_fft_svd"] = {"seconds": t, "value": v, "kind": "exact"}
    base = t
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the experiments extra is not installed: default pool only
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(1):
            t1, _ = _time(lambda: numpy_baseline(kernel_np, n), repeats)
        rows["numpy_fft_svd_1thread"] = {"seconds": t1, "value": v, "kind": "exact"}
        base = min(base, t1)

    def add(name, fn):
        jitted = jax.jit(fn)
        t, v = _time(lambda: jitted(kernel), repeats)
        if isinstance(v, tuple):
            v = v[0]
        rows[name] = {"seconds": t, "value": float(v.value), "kind": v.kind,
                      "speedup_vs_numpy": base / t}

    add("exact_spectral_norm", partial(conv.exact_spectral_norm, input_shape=hw))
    if threadpool_limits is not None:
        # jaxlib's CPU SVD calls scipy's OpenBLAS LAPACK; its default thread pool can be ~100×
        # slower on a small loaded machine (measured: two 64×64 complex SVDs 570 ms vs 0.6 ms)
        with threadpool_limits(1):
            add("exact_spectral_norm_lapack_1thread",
                partial(conv.exact_spectral_norm, input_shape=hw))
    for it in (4, 5, 6):
        add(
            f"gram_bound_circular_{it}",
            partial(conv.gram_bound, input_shape=hw, padding="CIRCULAR", num_iters=it),
        )
    add("gram_bound_same_6", partial(conv.gram_bound, input_shape=hw, padding="SAME"))
    key = jax.random.key(0)
    for it in (50, 100):
        add(
            f"power_iteration_same_{it}",
            partial(conv.power_iteration, input_shape=hw, padding="SAME", num_iters=it, key=key),
        )
    # A converged reference for the tightness floor (not timed against the floor).
    ref, _ = jax.jit(
        partial(conv.power_iteration, input_shape=hw, padding="SAME", num_iters=1000, key=key)
    )(kernel)
    ref = float(ref.value)
    grad_rows = gram_grad_rows(kernel, hw, repeats)
    return {
        "kernel_hwio": [kh, kw, cin, cout],
        "input_shape": [n, n],
        "baseline_seconds": base,
        "results": rows,
        "power_iteration_same_1000": ref,
        "zero_padding_bound_over_converged_power": rows["gram_bound_same_6"]["value"] / ref,
        "circular_gram6_over_exact": rows["gram_bound_circular_6"]["value"]
        / rows["exact_spectral_norm"]["value"],
        "gram_grad": grad_rows,
        "floors": {
            "gram6_speedup_ge_3": rows["gram_bound_circular_6"]["speedup_vs_numpy"] >= 3.0,
            "exact_speedup_ge_3": rows["exact_spectral_norm"]["speedup_vs_numpy"] >= 3.0,
            "exact_lapack_1thread_speedup_ge_3": rows.get(
                "exact_spectral_norm_lapack_1thread", {}).get("speedup_vs_numpy", 0.0) >= 3.0,
            "zero_padding_within_1pct": rows["gram_bound_same_6"]["value"] / ref <= 1.01,
            # absolute: meaningful on an idle machine with 2 threads (the setting)
            "gram_grad_fwd_bwd_2x_faster_than_lip4conv":
                grad_rows["fwd_bwd_closed_form_seconds"] <= 0.465 / 2,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "conv_norms.json")
    )
    ap.add_argument(
        "--case", action="append", default=None, metavar="CIN,COUT,KH,KW,N",
        help="run this case instead of the default ones (repeatable); 8,8,3,3,8: a smoke run",
    )
    args = ap.parse_args()
    cases = CASES if args.case is None else [tuple(int(v) for v in c.split(",")) for c in args.case]
    report = {
        "benchmark": "conv_norms",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "cases": [run_case(*c, repeats=args.repeats) for c in cases],
    }
    text = json.dumps(report, indent=2)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
