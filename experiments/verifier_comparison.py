r"""Experiment 4: trivial bound, LipSDP, LiPopt, exact constant and lower bound on random ReLU
networks of growing width and of growing sparsity (the comparison of Latorre, Rolland, Cevher,
*Lipschitz constant estimation of neural networks via sparse polynomial optimization*, ICLR 2020).

Networks: bias-free x ↦ relu(x W1) W2 with input dimension d, hidden width n, one output,
Gaussian weights N(0, 1/fan_in); the sparse ones keep each weight with probability 1 − s.
For each network and each norm (flax ``(in, out)`` layout, :mod:`liplax.verify` conventions):

- ℓ2: the trivial bound ‖W1‖₂‖W2‖₂ (``upper``), LipSDP-Neuron (``upper``; SCS, and Clarabel when
  SCS's multipliers do not certify), the exact constant (pattern enumeration, while
  2^n ≤ 2^22 and n ≤ d) and the empirical lower bound of
  :func:`liplax.certify.lipschitz_lower_bound` (attained, an ``estimate``);
- ℓ∞: the trivial bound ‖W1‖_∞‖W2‖_∞, LiPopt at degree 2 with and without the sparsity
  (clique) reduction (``upper``), the exact constant and the lower bound.

Each run records its value and wall time, and the chain lower ≤ exact ≤ verifier ≤ trivial is
checked per network and norm (float32 lower bounds get a relative slack of 1e-5; the float64
upper bounds none beyond 1e-9). The lower bound runs on the network padded with dead hidden
units to the largest width of the experiment (the same function), so one compilation serves
every network. LipSDP is run on the input-reduced LMI only when that shrinks it
(n < d): with n ≥ d the reduction enlarges the LMI from d + n to 2n.

Run: ``python experiments/verifier_comparison.py [--quick] [--out results] [--seed 0]``.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from liplax.certify import lipschitz_lower_bound
from liplax.verify import (
    SolverError,
    TooLarge,
    exact_lipschitz,
    lipopt,
    lipsdp,
    trivial_bound,
)

NAME = "verifier_comparison"
FULL = {
    "input_dim": 20, "widths": [4, 8, 12, 16, 20, 32, 48, 64],
    "sparse_width": 16, "sparsities": [0.0, 0.25, 0.5, 0.75, 0.9],
    "lower_steps": 100, "lower_restarts": 8,
}
QUICK = {
    "input_dim": 10, "widths": [4, 8],
    "sparse_width": 8, "sparsities": [0.0, 0.6],
    "lower_steps": 40, "lower_restarts": 4,
}
REL_LOWER = 1e-5  # float32 lower bounds vs float64 values
REL_UPPER = 1e-9
METHODS = {
    "l2": ("trivial", "lipsdp", "exact", "lower"),
    "linf": ("trivial", "lipopt", "lipopt_dense", "exact", "lower"),
}


def random_network(d: int, n: int, sparsity: float, seed: int) -> list[np.ndarray]:
    """[W1 (d, n), W2 (n, 1)], Gaussian N(0, 1/fan_in), each entry kept with prob. 1 − s."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(a, b)) / math.sqrt(a) for a, b in ((d, n), (n, 1))]
    return [w * (rng.random(w.shape) >= sparsity) for w in ws]


def _relu_net(ws, x):
    for w in ws[:-1]:
        x = jax.nn.relu(x @ w)
    return x @ ws[-1]


@functools.partial(jax.jit, static_argnames=("p", "steps", "restarts"))
def _lower(ws, xs, key, *, p, steps, restarts):
    """The lower bound's value; the weights are arguments, so equal shapes share a compilation."""
    f = functools.partial(_relu_net, ws)
    return lipschitz_lower_bound(f, xs, key=key, p=p, steps=steps, restarts=restarts).value


def _attempt(fn) -> dict:
    """Run one verifier: value, time and details, or the reason it did not give a bound."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except (TooLarge, SolverError) as err:
        return {"value": None, "time_s": time.perf_counter() - t0,
                "skipped": f"{type(err).__name__}: {err}"}
    out = {"value": float(res.bound.value), "time_s": time.perf_counter() - t0,
           "kind": res.bound.kind}
    if "method" in res.details:
        out["method"] = res.details["method"]
    return out


def _lipsdp(ws: list[np.ndarray]) -> dict:
    reduce = ws[0].shape[1] < ws[0].shape[0]
    first = _attempt(lambda: lipsdp(ws, reduce=reduce))
    first["solver"] = "SCS"
    if first["value"] is not None:
        return first
    second = _attempt(lambda: lipsdp(ws, reduce=reduce, solver="CLARABEL"))
    second.update(solver="CLARABEL", scs_failure=first["skipped"])
    second["time_s"] += first["time_s"]
    return second


def _chain(entry: dict) -> dict:
    """lower ≤ exact ≤ each verifier ≤ trivial, with the missing links left out."""
    lower, exact, trivial = (entry.get(k, {}).get("value") for k in ("lower", "exact", "trivial"))
    verifiers = {k: v["value"] for k, v in entry.items()
                 if k.startswith(("lipsdp", "lipopt")) and v.get("value") is not None}
    checks = {}
    if exact is not None:
        checks["lower<=exact"] = lower <= exact * (1 + REL_LOWER)
    for name, v in verifiers.items():
        if exact is not None:
            checks[f"exact<={name}"] = exact <= v * (1 + REL_UPPER)
        else:
            checks[f"lower<={name}"] = lower <= v * (1 + REL_LOWER)
        checks[f"{name}<=trivial"] = v <= trivial * (1 + REL_UPPER)
    checks["lower<=trivial"] = lower <= trivial * (1 + REL_LOWER)
    return {"checks": checks, "holds": all(checks.values())}


def _padded(ws: list[np.ndarray], width: int) -> list[jax.Array]:
    """The same function with the hidden layer padded by dead units to ``width`` (float32), so
    that every network of the experiment shares one compilation of the lower bound."""
    extra = width - ws[0].shape[1]
    return [jnp.asarray(np.pad(ws[0], ((0, 0), (0, extra))), jnp.float32),
            jnp.asarray(np.pad(ws[1], ((0, extra), (0, 0))), jnp.float32)]


def evaluate(ws: list[np.ndarray], cfg: dict, key: jax.Array) -> dict:
    """Every method on one network, both norms, with the chain check."""
    d = ws[0].shape[0]
    xs = jax.random.normal(jax.random.fold_in(key, 0), (64, d))
    ws32 = _padded(ws, max(*cfg["widths"], cfg["sparse_width"]))
    result = {}
    for norm, p in (("l2", 2), ("linf", math.inf)):
        entry = {"trivial": _attempt(lambda p=p: _Result(trivial_bound(ws, p=p)))}
        if p == 2:
            entry["lipsdp"] = _lipsdp(ws)
        else:
            entry["lipopt"] = _attempt(lambda: lipopt(ws, degree=2, sparse=True))
            entry["lipopt_dense"] = _attempt(lambda: lipopt(ws, degree=2, sparse=False))
        entry["exact"] = _attempt(lambda p=p: exact_lipschitz(ws, p=p))
        lower = functools.partial(_lower, p=p, steps=cfg["lower_steps"],
                                  restarts=cfg["lower_restarts"])
        k = jax.random.fold_in(key, 1 + int(p == 2))
        first, _ = _common.timed(lambda lower=lower, k=k: lower(ws32, xs, k))
        seconds, value = _common.timed(lambda lower=lower, k=k: lower(ws32, xs, k))
        entry["lower"] = {"value": float(value), "time_s": seconds, "first_call_s": first,
                          "kind": "estimate"}
        entry["chain"] = _chain(entry)
        result[norm] = entry
    return result


class _Result:
    """A trivial ``Bound`` dressed as a verifier result (for :func:`_attempt`)."""

    def __init__(self, bound):
        self.bound, self.details = bound, {}


def _rows(sweep: str, x_name: str, x, res: dict) -> list[dict]:
    rows = []
    for norm, entry in res.items():
        row = {"sweep": sweep, x_name: x, "norm": norm, "chain_holds": entry["chain"]["holds"]}
        for m in METHODS[norm]:
            v = entry.get(m, {})
            row[m] = v.get("value")
            row[f"{m}_s"] = v.get("time_s")
        rows.append(row)
    return rows


def _plot(data: dict, path) -> None:
    fig, axes = _common.figure(3, 2, width=4.6, height=3.6)
    for r, (sweep, x_name) in enumerate((("width", "width"), ("sparsity", "sparsity"))):
        entries = data[sweep]
        xs = [e[x_name] for e in entries]
        for c, norm in enumerate(("l2", "linf")):
            ax = axes[r][c]
            for m in METHODS[norm]:
                ys = [e["results"][norm][m]["value"] for e in entries]
                lows = [e["results"][norm]["lower"]["value"] for e in entries]
                pts = [(x, y / lo) for x, y, lo in zip(xs, ys, lows, strict=True)
                       if y is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", label=m)
            ax.set(xlabel=x_name, ylabel="value / lower bound", yscale="log",
                   title=f"{norm}: bounds vs {x_name}")
            ax.legend(fontsize=7)
        ax = axes[r][2]
        for norm in ("l2", "linf"):
            for m in METHODS[norm]:
                if m == "trivial":
                    continue
                pts = [(x, e["results"][norm][m]["time_s"]) for x, e in zip(xs, entries,
                                                                         strict=True)
                       if e["results"][norm][m].get("value") is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", label=f"{norm} {m}")
        ax.set(xlabel=x_name, ylabel="seconds", yscale="log", title=f"time vs {x_name}")
        ax.legend(fontsize=6)
    _common.save_figure(fig, path)


def run(out_dir, *, quick: bool = False, seed: int = 0) -> dict:
    """Both sweeps, both norms; write JSON/PNG/markdown; return the JSON."""
    cfg = QUICK if quick else FULL
    out = _common.experiment_dir(out_dir, NAME)
    key = jax.random.key(seed)
    d = cfg["input_dim"]
    data = {**_common.header(NAME, quick=quick, seed=seed), "config": cfg,
            "width": [], "sparsity": []}
    rows = []
    for i, n in enumerate(cfg["widths"]):
        ws = random_network(d, n, 0.0, seed * 1000 + i)
        res = evaluate(ws, cfg, jax.random.fold_in(key, i))
        data["width"].append({"width": n, "input_dim": d, "results": res})
        rows += _rows("width", "width", n, res)
    n = cfg["sparse_width"]
    for i, s in enumerate(cfg["sparsities"]):
        ws = random_network(d, n, s, seed * 1000 + 500 + i)
        res = evaluate(ws, cfg, jax.random.fold_in(key, 500 + i))
        data["sparsity"].append({"sparsity": s, "width": n, "input_dim": d,
                                 "zero_fraction": float(np.mean([np.mean(w == 0) for w in ws])),
                                 "results": res})
        rows += [{**r, "width": n} for r in _rows("sparsity", "sparsity", s, res)]
    data["chain_holds_everywhere"] = all(
        e["results"][norm]["chain"]["holds"]
        for sweep in ("width", "sparsity") for e in data[sweep] for norm in ("l2", "linf")
    )
    _plot(data, out / f"{NAME}.png")
    cols = ["sweep", "width", "sparsity", "norm", "lower", "exact", "lipsdp", "lipopt",
            "lipopt_dense", "trivial", "exact_s", "lipsdp_s", "lipopt_s", "lipopt_dense_s",
            "lower_s", "chain_holds"]
    _common.write_markdown_table(rows, cols, out / f"{NAME}.md",
                                 title="Lipschitz bounds of random 1-hidden-layer ReLU networks")
    return _common.write_json(data, out / f"{NAME}.json")


if __name__ == "__main__":
    _common.main(NAME, run, __doc__.split("\n\n")[0])
