r"""Experiment 3: estimate W1 through the Kantorovich–Rubinstein dual with 1-Lipschitz critics.

W1(P, Q) = sup_{Lip(f) ≤ 1} E_P f − E_Q f (Villani, *Optimal Transport*, Thm. 5.10; the dual
behind Wasserstein GANs). A critic that is certified 1-Lipschitz (here ℓ2, trivial bound ≤ 1)
gives E_P f − E_Q f ≤ W1 for every parameter value, so training it to maximize the gap
approaches W1 from below, as far as the architecture can follow the optimal critic. Anil, Lucas,
Grosse (ICML 2019) show that GroupSort critics reach the optimal dual while ReLU critics with
norm-constrained weights fall short wherever the optimal critic needs slope ±1 on both sides of
a kink (such as |x|).

Cases with a known W1 (ℓ2 ground metric):

- ``shift_*``: N(0, I_d) against N(μ, I_d): W1 = ‖μ‖₂ (a translation; the optimal critic is
  linear, f(x) = ⟨x, μ⟩/‖μ‖, so both critics should reach it).
- ``point_vs_uniform``: δ₀ against U[−1, 1] (1-D): W1 = E|X| = 1/2, optimal critic −|x| (+c).
- ``gauss_vs_bimodal``: N(0, 1) against ½N(−2, 0.5²) + ½N(2, 0.5²) (1-D): W1 = ∫|F − G| dx,
  integrated numerically (trapezoid rule on a fine grid; error far below the Monte-Carlo error).

Critics (``liplax.nn``, biases everywhere): MaxMin + :class:`~liplax.nn.BjorckDense` and ReLU +
``BjorckDense``, trained with Adam on fresh batches drawn from pools of samples; the estimate is
E_P f − E_Q f on fresh held-out samples, with its Monte-Carlo standard error.

Run: ``python experiments/wasserstein.py [--quick] [--out results] [--seed 0]``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import _common
from liplax import training
from liplax.bounds import trivial_bound

NAME = "wasserstein"
CRITICS = {"maxmin_bjorck": "maxmin", "relu_bjorck": "relu"}
FULL = {
    "cases": ["shift_1d", "shift_2d", "shift_8d", "point_vs_uniform", "gauss_vs_bimodal"],
    "hidden": [64, 64], "steps": 2000, "batch": 512, "lr": 3e-3, "pool": 65536, "eval": 400_000,
}
QUICK = {
    "cases": ["shift_1d", "point_vs_uniform", "gauss_vs_bimodal"],
    "hidden": [16, 16], "steps": 500, "batch": 256, "lr": 1e-2, "pool": 8192, "eval": 100_000,
}


def _normal_cdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr((x - mean) / std)


def _w1_1d(cdf_p, cdf_q, lo: float, hi: float, n: int = 400_001) -> float:
    """∫ |F_P − F_Q| dx on [lo, hi] by the trapezoid rule (both CDFs 0 below lo, 1 above hi)."""
    x = np.linspace(lo, hi, n)
    return float(np.trapezoid(np.abs(cdf_p(x) - cdf_q(x)), x))


def _shift(d: int) -> np.ndarray:
    return np.full(d, 1.5 / math.sqrt(d))  # ‖μ‖₂ = 1.5 in every dimension


def sample(case: str, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """(n samples of P, n samples of Q) for a case, each (n, d)."""
    kp, kq, kc = jax.random.split(key, 3)
    if case.startswith("shift_"):
        mu = jnp.asarray(_shift(int(case[len("shift_"):-1])), jnp.float32)
        d = mu.shape[0]
        return jax.random.normal(kp, (n, d)), mu + jax.random.normal(kq, (n, d))
    if case == "point_vs_uniform":
        return jnp.zeros((n, 1)), jax.random.uniform(kq, (n, 1), minval=-1.0, maxval=1.0)
    if case == "gauss_vs_bimodal":
        sign = jnp.where(jax.random.bernoulli(kc, 0.5, (n, 1)), 1.0, -1.0)
        return jax.random.normal(kp, (n, 1)), 2.0 * sign + 0.5 * jax.random.normal(kq, (n, 1))
    raise ValueError(f"case must be one of {FULL['cases']}, got {case!r}")


def true_w1(case: str) -> float:
    """The closed-form (or numerically integrated) W1 of a case."""
    if case.startswith("shift_"):
        return float(np.linalg.norm(_shift(int(case[len("shift_"):-1]))))
    if case == "point_vs_uniform":
        return 0.5
    if case == "gauss_vs_bimodal":
        def mix(x):
            return 0.5 * (_normal_cdf(x, -2.0, 0.5) + _normal_cdf(x, 2.0, 0.5))

        return _w1_1d(lambda x: _normal_cdf(x, 0.0, 1.0), mix, -15.0, 15.0)
    raise ValueError(f"case must be one of {FULL['cases']}, got {case!r}")


def _neg_dual(model, key: jax.Array, pools: tuple[jax.Array, jax.Array, jax.Array]):
    """−(mean f(P batch) − mean f(Q batch)), batches drawn with replacement from the pools."""
    pool_p, pool_q, batch = pools
    kp, kq = jax.random.split(key)
    ip = jax.random.randint(kp, batch.shape, 0, pool_p.shape[0])
    iq = jax.random.randint(kq, batch.shape, 0, pool_q.shape[0])
    return jnp.mean(model(pool_q[iq])) - jnp.mean(model(pool_p[ip]))


@nnx.jit
def _critic_values(model, x: jax.Array) -> jax.Array:
    return model(x)[:, 0]


def _estimate(model, xp, xq) -> tuple[float, float]:
    """E_P f − E_Q f on held-out samples and its Monte-Carlo standard error."""
    fp = np.asarray(_critic_values(model, xp), np.float64)
    fq = np.asarray(_critic_values(model, xq), np.float64)
    se = math.sqrt(fp.var() / fp.size + fq.var() / fq.size)
    return float(fp.mean() - fq.mean()), se


def _plot(data: dict, curves: dict, path) -> None:
    fig, axes = _common.figure(2, width=5.5)
    ax, ax_c = axes[0]
    cases = list(data["cases"])
    width = 0.8 / len(CRITICS)
    for i, critic in enumerate(CRITICS):
        ratios = [data["cases"][c]["critics"][critic]["estimate_over_true"] for c in cases]
        ax.bar(np.arange(len(cases)) + (i - 0.5) * width, ratios, width, label=critic)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="true W1")
    ax.set_xticks(np.arange(len(cases)), cases, rotation=20, fontsize=8)
    ax.set(ylabel="estimated W1 / true W1", title="Kantorovich–Rubinstein estimates")
    ax.legend(fontsize=8)
    grid = curves.pop("_grid")
    ax_c.plot(grid, np.abs(grid) - np.abs(grid).mean(), "k--", label="|x| (optimal, centred)")
    for critic, f in curves.items():
        ax_c.plot(grid, -(f - f.mean()), label=f"−critic: {critic}")
    ax_c.set(xlabel="x", title="point_vs_uniform: learned critics (centred)")
    ax_c.legend(fontsize=8)
    _common.save_figure(fig, path)


def run(out_dir, *, quick: bool = False, seed: int = 0) -> dict:
    """Train both critics on every case, compare with the true W1; write JSON/PNG/markdown."""
    cfg = QUICK if quick else FULL
    out = _common.experiment_dir(out_dir, NAME)
    key = jax.random.key(seed)
    cases, rows, curves = {}, [], {"_grid": np.linspace(-1.0, 1.0, 401)}
    batch = jnp.zeros((cfg["batch"],), jnp.int32)
    for ci, case in enumerate(cfg["cases"]):
        k_case = jax.random.fold_in(key, ci)
        k_pool, k_eval = jax.random.split(k_case)
        pool_p, pool_q = sample(case, k_pool, cfg["pool"])
        xp, xq = sample(case, k_eval, cfg["eval"])
        d = pool_p.shape[1]
        truth = true_w1(case)
        entry = {"dim": d, "true_w1": truth, "critics": {}}
        for cj, (critic, activation) in enumerate(CRITICS.items()):
            k_init, k_train = jax.random.split(jax.random.fold_in(k_case, 100 + cj))
            model = training.lipschitz_mlp(
                [d, *cfg["hidden"], 1], activation=activation, weights="bjorck", key=k_init
            )
            seconds, _ = _common.timed(
                lambda model=model, k=k_train, pp=pool_p, pq=pool_q: training.fit(
                    model, _neg_dual, (pp, pq, batch), steps=cfg["steps"], lr=cfg["lr"], key=k
                )
            )
            est, se = _estimate(model, xp, xq)
            bound = trivial_bound(model, (d,), p=2)
            r = {
                "estimate": est,
                "mc_standard_error": se,
                "estimate_over_true": est / truth,
                "abs_error": abs(est - truth),
                "trivial_bound": float(bound.value),
                "bound_kind": bound.kind,
                "train_seconds": seconds,
            }
            entry["critics"][critic] = r
            rows.append({"case": case, "critic": critic, **{k: v for k, v in entry.items()
                                                           if k in ("dim", "true_w1")}, **r})
            if case == "point_vs_uniform":
                grid = jnp.asarray(curves["_grid"], jnp.float32)[:, None]
                curves[critic] = np.asarray(_critic_values(model, grid))
        cases[case] = entry
    data = {
        **_common.header(NAME, quick=quick, seed=seed),
        "config": cfg,
        "cases": cases,
        "findings": {
            "max_rel_error_maxmin": max(
                c["critics"]["maxmin_bjorck"]["abs_error"] / c["true_w1"] for c in cases.values()
            ),
            "max_rel_error_relu": max(
                c["critics"]["relu_bjorck"]["abs_error"] / c["true_w1"] for c in cases.values()
            ),
            "all_certified_at_most_1_plus_1e-4": all(
                r["trivial_bound"] <= 1.0 + 1e-4
                for c in cases.values() for r in c["critics"].values()
            ),
        },
    }
    _plot(data, curves, out / f"{NAME}.png")
    _common.write_markdown_table(
        rows,
        ["case", "dim", "critic", "true_w1", "estimate", "mc_standard_error",
         "estimate_over_true", "trivial_bound", "train_seconds"],
        out / f"{NAME}.md",
        title="W1 through the Kantorovich-Rubinstein dual, 1-Lipschitz critics",
    )
    return _common.write_json(data, out / f"{NAME}.json")


if __name__ == "__main__":
    _common.main(NAME, run, __doc__.split("\n\n")[0])
