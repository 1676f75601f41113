"""Every benchmark of a GPU run, each section in its own subprocess with a timeout; ONE JSON.

Driven by ``benchmarks/gpu.sh`` (which sets the environment); runnable directly. Sections, in
order (each with its own time budget, clipped to what is left of ``--budget``, default 450 s,
so one slow section cannot take the whole run past 8 minutes):

- ``conv_norms``: ``conv.gram_bound`` (circular and zero padding, 6 iterations),
  ``conv.exact_spectral_norm`` and ``conv.power_iteration`` (zero padding, 100 steps) on
  N(0, 1/(9·C)) 3×3 C→C kernels for C in 64…512 and inputs 32…224; a case whose frequency
  matrices would exceed ``--max-gb`` is recorded as skipped.
- ``sweep``: ``conv.gram_bound`` of 1024 kernels, one ``liplax.sweep`` (chunked vmap) against a
  Python loop of the jitted single call (the accelerator is not filled by one kernel).
- ``train``: one jitted Adam step without and with the trivial-bound penalty
  (``benchmarks/penalty_step.py``'s models and timing, plus a 32×32×3 CNN of 64–128 channels).
- ``peers``: ``benchmarks/peers.py`` (liplax vs NumPy, and vs lip4conv when torch is installed
  and ``--lip4conv``/``$LIP4CONV`` names a checkout) with ``--threads 0``.

Each section prints one JSON object per line (``{"row": …}`` as each case finishes,
``{"meta": …}``), so a section stopped by its timeout keeps the rows it finished
(``"status": "timeout"``). Timings are medians of ``--repeats`` calls after a warm-up call whose
time (compilation included) is recorded as ``first_s``; every call ends with
``block_until_ready``. ``--tiny`` (or ``LIPLAX_BENCH_TINY=1``) runs every section with tiny
sizes in well under a minute on a CPU; the test suite runs it (tests/test_benchmark_scripts.py).

No GPU was available to the session that wrote this: its first GPU run is pending, and the
budgets below are estimates to be revised from that run's ``seconds`` per section.

Writes ``--out`` (default ``benchmarks/results/gpu.json``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGETS = {"conv_norms": 200, "sweep": 80, "train": 90, "peers": 70}  # seconds, full run
TINY_BUDGETS = {"conv_norms": 60, "sweep": 60, "train": 60, "peers": 90}
# (channels, input size), cheapest first: the section's timeout cuts the costliest cases.
CASES = [(64, 32), (128, 32), (256, 32), (512, 32), (64, 64), (128, 64), (256, 64), (64, 128),
         (512, 64), (128, 128), (64, 224), (256, 128), (128, 224)]


def emit(kind: str, obj: dict) -> None:
    print(json.dumps({kind: obj}), flush=True)


def median_time(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of ``repeats`` further calls)."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _kernel(key, shape):
    import jax
    import jax.numpy as jnp

    return jax.random.normal(key, shape, jnp.float32) / jnp.sqrt(float(shape[0] * shape[1]
                                                                       * shape[2]))


def section_conv_norms(tiny: bool, repeats: int, max_gb: float) -> None:
    import jax

    from liplax import conv

    cases = [(4, 8)] if tiny else CASES
    key = jax.random.key(0)
    methods = {  # the batched SVD last: the costliest on an accelerator
        "gram_circular_6": lambda k, hw: conv.gram_bound(k, hw, padding="CIRCULAR").value,
        "gram_same_6": lambda k, hw: conv.gram_bound(k, hw, padding="SAME").value,
        "power_same_100": lambda k, hw: conv.power_iteration(
            k, hw, padding="SAME", num_iters=100, key=key)[0].value,
        "exact_circular": lambda k, hw: conv.exact_spectral_norm(k, hw).value,
    }
    for c, n in cases:
        # the frequency matrices: (n + 2)·(n/2 + 2) complex64 C×C matrices, a few alive at once
        gb = 4 * (n + 2) * (n // 2 + 2) * c * c * 8 / 2**30
        case = {"channels": c, "size": n, "frequency_gb": gb}
        if gb > max_gb:
            emit("row", {**case, "skipped": f"frequency matrices ≈ {gb:.1f} GB > --max-gb"})
            continue
        kernel = _kernel(jax.random.fold_in(key, c * 1000 + n), (3, 3, c, c))
        for name, fn in methods.items():  # one row per method: a timeout keeps the finished ones
            f = jax.jit(lambda k, fn=fn, hw=(n, n): fn(k, hw))
            first, med = median_time(lambda f=f, k=kernel: f(k), repeats)
            emit("row", {**case, "method": name, "first_s": first, "seconds": med,
                         "value": float(f(kernel))})


def section_sweep(tiny: bool, repeats: int) -> None:
    import jax
    import jax.numpy as jnp

    import liplax
    from liplax import conv

    b, c, n, chunk = (8, 4, 8, 4) if tiny else (1024, 64, 32, 128)
    repeats = min(repeats, 3)  # the loop is 1024 dispatches
    kernels = _kernel(jax.random.key(1), (3, 3, c, c * b)).reshape(3, 3, c, b, c)
    kernels = jnp.moveaxis(kernels, 3, 0)  # (B, 3, 3, c, c)
    single = jax.jit(lambda k: conv.gram_bound(k, (n, n), padding="SAME").value)
    batched = jax.jit(lambda ks: liplax.sweep(
        lambda k: conv.gram_bound(k, (n, n), padding="SAME"), ks, chunk_size=chunk).value)

    def loop():
        return jnp.stack([single(kernels[i]) for i in range(b)])

    first_b, med_b = median_time(lambda: batched(kernels), repeats)
    first_l, med_l = median_time(loop, repeats)
    agree = float(jnp.max(jnp.abs(batched(kernels) - loop()) / loop()))
    emit("row", {"kernels": b, "channels": c, "size": n, "chunk_size": chunk,
                 "sweep": {"first_s": first_b, "seconds": med_b},
                 "loop": {"first_s": first_l, "seconds": med_l},
                 "speedup": med_l / med_b, "max_rel_diff": agree})


def section_train(tiny: bool, repeats: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import penalty_step
    from flax import nnx

    import liplax.nn as ln

    def tiny_cnn(rngs: nnx.Rngs):
        return ln.Sequential(
            ln.Conv(1, 4, 3, input_size=(8, 8), rngs=rngs), ln.MaxMin(), ln.AvgPool(2),
            ln.Flatten(), ln.Dense(4 * 4 * 4, 10, rngs=rngs))

    def cifar_cnn(rngs: nnx.Rngs):
        return ln.Sequential(
            ln.Conv(3, 64, 3, input_size=(32, 32), rngs=rngs), ln.MaxMin(),
            ln.Conv(64, 64, 3, input_size=(32, 32), rngs=rngs), ln.MaxMin(), ln.AvgPool(2),
            ln.Conv(64, 128, 3, input_size=(16, 16), rngs=rngs), ln.MaxMin(), ln.AvgPool(2),
            ln.Flatten(), ln.Dense(8 * 8 * 128, 10, rngs=rngs))

    if tiny:
        models = {"cnn_8x8": (tiny_cnn, (8, 8, 1), 8)}
    else:
        models = {"mlp_784_256_256_10": (penalty_step.mlp, (28, 28, 1), 128),
                  "cnn_28x28": (penalty_step.cnn, (28, 28, 1), 128),
                  "cnn_32x32x3_64_128": (cifar_cnn, (32, 32, 3), 256)}
    for name, (build, shape, batch) in models.items():
        res = penalty_step.time_pair(build, shape, batch, repeats, warmup=1 if tiny else 5)
        emit("row", {"model": name, **res})


def run_section(name: str, args) -> dict:
    """Run one section in a subprocess with its timeout; its rows, meta, status and stderr."""
    budgets = TINY_BUDGETS if args.tiny else BUDGETS
    remaining = args.budget - (time.perf_counter() - args.start)
    timeout = max(1.0, min(budgets[name] * args.timeout_scale, remaining))
    tmp = None
    if name == "peers":
        tmp = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        cmd = [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--out", tmp,
               "--threads", "0" if not args.tiny else "2"]
        if args.tiny:
            cmd.append("--tiny")
        if args.lip4conv:
            cmd += ["--lip4conv", args.lip4conv]
    else:
        cmd = [sys.executable, __file__, "--section", name, "--repeats", str(args.repeats),
               "--max-gb", str(args.max_gb)] + (["--tiny"] if args.tiny else [])
    t0 = time.perf_counter()
    status, out, err = "ok", "", ""
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # this checkout's liplax first
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=env)
        out, err = proc.stdout, proc.stderr
        if proc.returncode != 0:
            status = f"error (exit {proc.returncode})"
    except subprocess.TimeoutExpired as e:
        status = "timeout"
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    result = {"status": status, "seconds": time.perf_counter() - t0, "timeout_s": timeout,
              "rows": [], "stderr_tail": err[-2000:]}
    if name == "peers":
        try:
            result["table"] = json.loads(pathlib.Path(tmp).read_text())
            result["rows"] = result["table"]["rows"]
        except (OSError, ValueError, KeyError):
            if status == "ok":
                result["status"] = "error (no JSON written)"
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)
        return result
    for line in out.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "row" in obj:
            result["rows"].append(obj["row"])
        elif "meta" in obj:
            result["meta"] = obj["meta"]
    return result


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true",
                    default=os.environ.get("LIPLAX_BENCH_TINY", "") not in ("", "0"))
    ap.add_argument("--section", choices=[*BUDGETS], help=argparse.SUPPRESS)
    ap.add_argument("--only", default=",".join(BUDGETS), help="comma-separated sections")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all sections")
    ap.add_argument("--max-gb", type=float, default=24.0)
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiply every section's timeout (a slow or shared machine)")
    ap.add_argument("--lip4conv", default=os.environ.get("LIP4CONV"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 10
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.section:
        fn = {"conv_norms": lambda: section_conv_norms(args.tiny, args.repeats, args.max_gb),
              "sweep": lambda: section_sweep(args.tiny, args.repeats),
              "train": lambda: section_train(args.tiny, args.repeats)}[args.section]
        import jax

        emit("meta", {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
                      "jax": jax.__version__})
        fn()
        return
    args.start = time.perf_counter()
    sections = {}
    for name in args.only.split(","):
        sections[name] = run_section(name, args)
        print(f"gpu.py: {name}: {sections[name]['status']} in {sections[name]['seconds']:.1f} s",
              file=sys.stderr, flush=True)
    result = {
        "benchmark": "gpu",
        "what": "conv norms (64–512 channels, 32–224 inputs), a 1024-kernel sweep vs a loop, "
                "a training step with and without the penalty, and the peers table",
        "config": {"tiny": args.tiny, "repeats": args.repeats, "budget_s": args.budget,
                   "timeout_scale": args.timeout_scale,
                   "max_gb": args.max_gb, "budgets_s": TINY_BUDGETS if args.tiny else BUDGETS},
        "platform": platform.platform(),
        "total_s": time.perf_counter() - args.start,
        "sections": sections,
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
