"""liplax against its peers on one convolution: lip4conv (PyTorch) and NumPy, same process.

The table of issue 16, on one kernel X = N(0, 1) of shape (out, in, 3, 3) (NumPy
``default_rng(seed)``, 64→64 channels at 32×32 unless ``--channels``/``--size``; liplax reads it
as HWIO ``X.transpose(2, 3, 1, 0)``, the same layer):

==========================  ==========================================  =======================
row                         liplax                                      peer
==========================  ==========================================  =======================
``gram_circular_6``/``_4``  ``conv.gram_bound(CIRCULAR, num_iters)``    lip4conv
                                                                        ``compute_delattre2023``
``exact_circular``          ``conv.exact_spectral_norm``                lip4conv Sedghi et al.;
                                                                        NumPy FFT + batched SVD
``zero_padding_upper``      ``conv.gram_bound(SAME, 6)``                lip4conv
                                                                        ``compute_delattre2024``
                                                                        (4 iterations)
``gram_fwd_bwd``            value and gradient of the circular Gram     lip4conv's custom
                            bound (6 iterations)                        backward
``power_iteration_100``     ``conv.power_iteration(SAME, 100)``         lip4conv Ryu et al.
                                                                        (conv2d/conv_transpose2d)
==========================  ==========================================  =======================

NumPy rows (the textbook FFT + ``np.linalg.svd`` per frequency) always run; the torch rows run
when ``torch`` is importable and ``--lip4conv PATH`` (or ``$LIP4CONV``) names a checkout of
https://github.com/blaisedelattre/lip4conv (MIT licence, © 2023 Blaise Delattre; imported from
that path, never copied here). Without them the script says what is missing and how to get it
(``pip install torch``; ``git clone https://github.com/blaisedelattre/lip4conv``), marks the
peer rows ``skipped`` in the JSON and exits 0. lip4conv's circular Gram iteration moves a
tensor to the GPU with ``.cuda()``; on a machine without CUDA, ``torch.Tensor.cuda`` is made the
identity for this process (recorded as ``cuda_shim`` in the JSON).

Timing: both libraries get the same threads (``--threads``, default 2: the process is pinned
to that many CPUs, ``torch.set_num_threads`` and XLA's ``intra_op_parallelism_threads`` are set
before either library loads; ``--threads 0`` leaves everything as found, for a GPU machine).
Each row times its contenders interleaved (one call of each per round), ``--repeats`` rounds
after a warm-up call (compilation excluded), medians; JAX calls end with
``block_until_ready``, CUDA calls with ``torch.cuda.synchronize``. ``ratio_peer`` (and
``ratio_numpy``) is the peer's median over liplax's: above 1, liplax is faster. The values are
recorded too; ``zero_padding_upper`` also gives each bound's excess over a converged power
iteration (an attained lower bound) in percent.

Writes JSON to stdout and ``--out`` (default ``benchmarks/results/peers.json``).
Run: ``python benchmarks/peers.py --lip4conv /path/to/lip4conv [--repeats 10]``;
``--tiny`` runs 8 channels at 8×8 with 2 repeats (the test suite's smoke run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOW_TORCH = "pip install torch (a CPU-only wheel: pip install torch --index-url " \
    "https://download.pytorch.org/whl/cpu)"
HOW_LIP4CONV = "git clone https://github.com/blaisedelattre/lip4conv and pass --lip4conv PATH " \
    "(or set LIP4CONV=PATH)"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lip4conv", default=os.environ.get("LIP4CONV"),
                    help="path of a lip4conv checkout (its bounds.py is imported)")
    ap.add_argument("--threads", type=int, default=2,
                    help="CPU threads for both libraries (0: leave as found)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=32, help="input H = W")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="8 channels, 8×8, 2 repeats")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers.json"))
    args = ap.parse_args(argv)
    if args.tiny:
        args.channels, args.size, args.repeats = 8, 8, 2
    return args


def limit_threads(threads: int) -> dict:
    """Pin this process to ``threads`` CPUs and tell XLA and torch; before either is imported."""
    if threads <= 0:
        return {"threads": "unrestricted"}
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    flags = os.environ.get("XLA_FLAGS", "")
    multi = "true" if threads > 1 else "false"
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen={multi} "
                               f"intra_op_parallelism_threads={threads}").strip()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    return {"threads": threads, "cpus": cpus, "xla_flags": os.environ["XLA_FLAGS"]}


def load_peers(path: str | None) -> tuple[object, object, dict]:
    """(torch or None, lip4conv's bounds module or None, {what: why skipped})."""
    skipped = {}
    try:
        import torch
    except ImportError as e:
        torch = None
        skipped["torch"] = f"torch is not importable ({e}): {HOW_TORCH}"
    if path is None:
        skipped["lip4conv"] = f"no lip4conv checkout given: {HOW_LIP4CONV}"
        return torch, None, skipped
    bounds_py = pathlib.Path(path) / "bounds.py"
    if not bounds_py.is_file():
        skipped["lip4conv"] = f"{bounds_py} does not exist: {HOW_LIP4CONV}"
        return torch, None, skipped
    if torch is None:
        skipped["lip4conv"] = f"lip4conv needs torch: {HOW_TORCH}"
        return None, None, skipped
    sys.path.insert(0, str(bounds_py.parent))  # its bounds.py imports spectral_rescaling
    spec = importlib.util.spec_from_file_location("lip4conv_bounds", bounds_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return torch, module, skipped


def timed(fns: dict, repeats: int, sync: dict) -> dict:
    """Median seconds of each callable, one call of each per round (after one warm-up each)."""
    outs = {}
    for name, fn in fns.items():
        outs[name] = sync[name](fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            sync[name](fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), outs[name]) for name, ts in times.items()}


def numpy_exact(x_oihw, n: int) -> float:
    """Sedghi et al. in NumPy: FFT of the zero-padded kernel, SVD of each frequency matrix."""
    import numpy as np

    mats = np.fft.fft2(x_oihw, s=(n, n), axes=(2, 3))  # (out, in, n, n)
    mats = np.transpose(mats, (2, 3, 0, 1)).reshape(n * n, *x_oihw.shape[:2])
    return float(np.linalg.svd(mats, compute_uv=False).max())


def run(args: argparse.Namespace) -> dict:
    threads = limit_threads(args.threads)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from liplax import conv

    torch, lip, skipped = load_peers(args.lip4conv)
    for what, why in skipped.items():
        print(f"peers.py: skipping {what}: {why}", file=sys.stderr)
    c, n = args.channels, args.size
    x_oihw = np.random.default_rng(args.seed).standard_normal((c, c, 3, 3)).astype(np.float32)
    kernel = jnp.asarray(x_oihw.transpose(2, 3, 1, 0))
    hw = (n, n)
    key = jax.random.key(args.seed)

    def gram(padding, iters):
        return jax.jit(lambda k: conv.gram_bound(k, hw, padding=padding, num_iters=iters).value)

    exact = jax.jit(lambda k: conv.exact_spectral_norm(k, hw).value)
    power = jax.jit(lambda k: conv.power_iteration(k, hw, padding="SAME", num_iters=100,
                                                   key=key)[0].value)
    fwd_bwd = jax.jit(jax.value_and_grad(
        lambda k: conv.gram_bound(k, hw, padding="CIRCULAR", num_iters=6).value))
    jitted = {
        "gram_circular_6": gram("CIRCULAR", 6),
        "gram_circular_4": gram("CIRCULAR", 4),
        "exact_circular": exact,
        "zero_padding_upper": gram("SAME", 6),
        "gram_fwd_bwd": fwd_bwd,
        "power_iteration_100": power,
    }
    ours = {name: (lambda f=f: f(kernel)) for name, f in jitted.items()}

    peers, cuda, shim = {}, False, False
    if lip is not None:
        cuda = bool(torch.cuda.is_available())
        if not cuda:
            torch.Tensor.cuda = lambda self, *a, **k: self  # lip4conv's .cuda() on a CPU box
            shim = True
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        device = "cuda" if cuda else "cpu"
        xt = torch.from_numpy(x_oihw).to(device)

        def fwd_bwd_peer():
            w = xt.clone().requires_grad_(True)
            s = lip.compute_delattre2023_backward(w, n=n, n_iter=6)
            s.backward()
            return s.detach(), w.grad

        peers = {
            "gram_circular_6": lambda: lip.compute_delattre2023(xt.clone(), n=n, n_iter=6,
                                                                return_time=False),
            "gram_circular_4": lambda: lip.compute_delattre2023(xt.clone(), n=n, n_iter=4,
                                                                return_time=False),
            "exact_circular": lambda: lip.compute_sedghi_2019(xt, n=n, return_time=False),
            "zero_padding_upper": lambda: lip.compute_delattre2024(xt, n_iter=4,
                                                                   return_time=False),
            "gram_fwd_bwd": fwd_bwd_peer,
            "power_iteration_100": lambda: lip.compute_ryu_2019(xt, n=n, n_iter=100,
                                                                return_time=False),
        }
    numpy_rows = {"gram_circular_6", "gram_circular_4", "exact_circular"}

    def jax_sync(out):
        return jax.block_until_ready(out)

    def torch_sync(out):
        if cuda:
            torch.cuda.synchronize()
        return out

    rows = []
    for name, mine in ours.items():
        fns, sync = {"liplax": mine}, {"liplax": jax_sync}
        if name in peers:
            fns["peer"], sync["peer"] = peers[name], torch_sync
        if name in numpy_rows:
            fns["numpy"], sync["numpy"] = (lambda: numpy_exact(x_oihw, n)), (lambda o: o)
        res = timed(fns, args.repeats, sync)
        row = {"name": name, "liplax_s": res["liplax"][0],
               "liplax_value": _scalar(res["liplax"][1])}
        for who in ("peer", "numpy"):
            if who in res:
                row[f"{who}_s"] = res[who][0]
                row[f"{who}_value"] = _scalar(res[who][1])
                row[f"ratio_{who}"] = res[who][0] / res["liplax"][0]
            elif who == "peer":
                row["peer_s"] = None
                row["peer_skipped"] = "; ".join(skipped.values())
        rows.append(row)

    # the zero-padding row's tightness: excess over a converged power iteration (attained)
    lower = float(jax.jit(lambda k: conv.power_iteration(k, hw, padding="SAME", num_iters=1000,
                                                         key=key)[0].value)(kernel))
    for row in rows:
        if row["name"] == "zero_padding_upper":
            row["power_iteration_1000"] = lower
            row["liplax_excess_pct"] = 100 * (row["liplax_value"] / lower - 1)
            if row.get("peer_value") is not None:
                row["peer_excess_pct"] = 100 * (row["peer_value"] / lower - 1)

    return {
        "benchmark": "peers",
        "what": "liplax vs lip4conv (torch) and NumPy on one (out, in, 3, 3) kernel; "
                "ratio_* = other's median / liplax's (> 1: liplax faster)",
        "config": {"channels": c, "size": n, "repeats": args.repeats, "seed": args.seed,
                   "tiny": args.tiny, **threads, "cuda_shim": shim},
        "versions": {"jax": jax.__version__, "numpy": np.__version__,
                     "torch": getattr(torch, "__version__", None),
                     "lip4conv": args.lip4conv if lip is not None else None},
        "device": {"jax": str(jax.devices()[0]), "torch": ("cuda" if cuda else "cpu")
                   if torch is not None else None},
        "platform": platform.platform(),
        "skipped": skipped,
        "rows": rows,
    }


def _scalar(out) -> float:
    """The bound's value of a result: a scalar, or the first of (value, gradient)/(σ, time)."""
    if isinstance(out, tuple):
        out = out[0]
    v = float(out.detach().cpu()) if hasattr(out, "detach") else float(out)
    return v if math.isfinite(v) else float("nan")


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
