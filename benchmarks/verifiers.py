"""Value and time of the trivial bound, LipSDP, LiPopt (degrees 2–3), the exact constant and the
empirical lower bound on random bias-free ReLU networks 20-20-1, 64-20-10 and 784-20-10.

Writes JSON to stdout and to ``benchmarks/results/verifiers.json``. Fast methods (trivial bounds,
LipSDP) are timed as the median of ``--repeats`` runs after a warm-up (``block_until_ready`` for
JAX); the slow ones (LiPopt, exact, lower bound) as one run after warm-up/compilation, which is
recorded beside each time. What is infeasible is skipped with the reason recorded.

Floors: LipSDP on 784-20-10 under 2 s (the input-dimension reduction), and the trivial
bound at least 1000× faster than LipSDP there: the sound (``upper``) trivial bound, the product
of ``liplax.linalg.gram_bound``, jitted. The product of ``liplax.linalg.spectral_norm`` (SVD) is
recorded beside it.

Run: ``python benchmarks/verifiers.py [--repeats 10] [--out PATH] [--only 20-20-1,...]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from liplax import linalg
from liplax.certify import lipschitz_lower_bound
from liplax.verify import (
    TooLarge,
    exact_lipschitz,
    lipopt,
    lipsdp,
    network_function,
    trivial_bound,
)

NETS = {"20-20-1": [20, 20, 1], "64-20-10": [64, 20, 10], "784-20-10": [784, 20, 10]}


def _median_time(fn, repeats: int):
    out = jax.block_until_ready(fn())  # warm-up (compilation, solver set-up caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _once(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _entry(value, seconds, **extra):
    return {"value": float(value), "time_s": seconds, **extra}


def _network(dims, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(a, b)) / np.sqrt(a) for a, b in zip(dims[:-1], dims[1:], strict=True)]


def _lower(ws, p):
    f = network_function(ws, "relu", jnp.float32)
    xs = jax.random.normal(jax.random.key(0), (64, ws[0].shape[0]))
    run = jax.jit(functools.partial(lipschitz_lower_bound, f, p=p, steps=100, restarts=8))
    t0 = time.perf_counter()
    jax.block_until_ready(run(xs, key=jax.random.key(1)))
    compile_s = time.perf_counter() - t0
    seconds, res = _once(lambda: jax.block_until_ready(run(xs, key=jax.random.key(1))))
    return _entry(res.value, seconds, first_call_s=compile_s, repeats=1, kind="estimate")


def run_net(name: str, dims: list[int], repeats: int) -> dict:
    ws = _network(dims)
    ws32 = [jnp.asarray(w, jnp.float32) for w in ws]
    out: dict = {"dims": dims, "l2": {}, "linf": {}}
    l2, linf = out["l2"], out["linf"]

    spec = jax.jit(lambda ws: math.prod(linalg.spectral_norm(w).value for w in ws))
    gram = jax.jit(lambda ws: math.prod(linalg.gram_bound(w).value for w in ws))
    ninf = jax.jit(lambda ws: math.prod(linalg.norm_inf(w).value for w in ws))
    for key, fn in (("trivial_spectral_norm_jax", spec), ("trivial_gram_bound_jax", gram)):
        t, v = _median_time(lambda fn=fn: fn(ws32), repeats)
        l2[key] = _entry(v, t, repeats=repeats, kind="upper")
    t, v = _median_time(lambda: trivial_bound(ws).value, repeats)
    l2["trivial_numpy_float64"] = _entry(v, t, repeats=repeats, kind="upper")
    t, r = _median_time(lambda: lipsdp(ws), repeats)
    l2["lipsdp"] = _entry(r.bound.value, t, repeats=repeats, kind="upper",
                          lmi_size=r.details["lmi_size"], solver=r.details["solver"])
    if dims[0] <= 64:
        t, r = _median_time(lambda: lipsdp(ws, reduce=False), max(3, repeats // 3))
        l2["lipsdp_unreduced"] = _entry(r.bound.value, t, repeats=max(3, repeats // 3),
                                        lmi_size=r.details["lmi_size"], kind="upper")
    else:
        l2["lipsdp_unreduced"] = {"skipped": f"LMI of size {dims[0] + dims[1]} (not reduced): "
                                  "minutes per solve; the reduction is what this floor measures"}
    t, r = _once(lambda: exact_lipschitz(ws, p=2))
    l2["exact"] = _entry(r.bound.value, t, repeats=1, kind="exact", method=r.details["method"])
    l2["lower_bound"] = _lower(ws, 2)

    t, v = _median_time(lambda: ninf(ws32), repeats)
    linf["trivial_norm_inf_jax"] = _entry(v, t, repeats=repeats, kind="upper")
    for degree in (2, 3):
        try:
            t, r = _once(lambda degree=degree: lipopt(ws, degree=degree))
        except TooLarge as err:
            linf[f"lipopt_degree_{degree}"] = {"skipped": str(err)}
            continue
        rows = max(s["rows"] for s in r.details["lp_sizes"].values())
        linf[f"lipopt_degree_{degree}"] = _entry(
            r.bound.value, t, repeats=1, kind="upper", lp_rows_per_output=rows,
            outputs_solved=len(r.details["per_output"]), outputs_skipped=len(r.details["skipped"]),
        )
    t, r = _once(lambda: exact_lipschitz(ws, p="inf"))
    linf["exact"] = _entry(r.bound.value, t, repeats=1, kind="exact", method=r.details["method"])
    linf["lower_bound"] = _lower(ws, "inf")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", default=",".join(NETS))
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "verifiers.json")
    )
    args = parser.parse_args()
    results = {
        "benchmark": "verifiers",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "networks": {},
    }
    for name in args.only.split(","):
        results["networks"][name] = run_net(name, NETS[name], args.repeats)
    if "784-20-10" in results["networks"]:
        l2 = results["networks"]["784-20-10"]["l2"]
        sdp, triv = l2["lipsdp"]["time_s"], l2["trivial_gram_bound_jax"]["time_s"]
        results["floors"] = {
            "lipsdp_784_20_10_s": sdp,
            "lipsdp_under_2s": sdp < 2.0,
            "trivial_speedup_over_lipsdp": sdp / triv,
            "trivial_at_least_1000x_faster": sdp / triv >= 1000.0,
        }
    text = json.dumps(results, indent=2)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
