r"""Experiment 2: fit |x| on [−1, 1] with 1-Lipschitz networks, GroupSort against ReLU.

Anil, Lucas, Grosse, *Sorting out Lipschitz function approximation* (ICML 2019): with weights
whose ℓ2 norm is at most 1, a network can only reach slope ±1 where every layer preserves the
gradient norm. An orthonormal (Björck) layer does; GroupSort/MaxMin does (its Jacobian is a
permutation); ReLU does not (it zeroes the coordinates it switches off), so a ReLU network with
norm-constrained weights cannot represent |x|: its fit keeps a visible gap. A MaxMin network
represents |x| exactly with width 2: maxmin(x/√2, −x/√2) = (|x|, −|x|)/√2, then (1, −1)/√2.

Networks (biases everywhere, ``liplax.nn``): MaxMin + :class:`~liplax.nn.BjorckDense`; ReLU +
``BjorckDense``; ReLU + :class:`~liplax.nn.SpectralDense`. Each is trained with Adam on the mean
squared error on uniform samples of [−1, 1]. Reported per network: the fit error to |x| on a
fine grid (max and RMS), the mean slope f′ on [0.9, 1] and on [−1, −0.9] (|x| has ±1 there), the
largest |f′| on the grid (an attained lower bound of the constant) and the certified trivial
bound (:func:`liplax.bounds.trivial_bound`, ``upper``; ≤ 1 up to the convergence of the
normalization).

Run: ``python experiments/groupsort_abs.py [--quick] [--out results] [--seed 0]``.
"""

from __future__ import annotations

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

NAME = "groupsort_abs"
NETWORKS = {  # label: (activation, weights)
    "maxmin_bjorck": ("maxmin", "bjorck"),
    "relu_bjorck": ("relu", "bjorck"),
    "relu_spectral": ("relu", "spectral"),
}
FULL = {"sizes": [1, 32, 32, 32, 1], "steps": 3000, "batch": 256, "lr": 3e-3,
        "networks": list(NETWORKS)}
QUICK = {"sizes": [1, 16, 16, 1], "steps": 600, "batch": 128, "lr": 1e-2,
         "networks": ["maxmin_bjorck", "relu_bjorck"]}


def _mse_loss(model, key: jax.Array, shape: jax.Array) -> jax.Array:
    """Mean squared error to |x| on a fresh uniform batch of [−1, 1] (``shape``: its shape)."""
    x = jax.random.uniform(key, shape.shape, minval=-1.0, maxval=1.0)
    return jnp.mean((model(x) - jnp.abs(x)) ** 2)


@nnx.jit
def _values_and_slopes(model, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """f(x) and f'(x) of a scalar network at the points x (a 1-D array)."""

    def scalar(t):
        return model(t.reshape(1, 1))[0, 0]

    return jax.vmap(scalar)(x), jax.vmap(jax.grad(scalar))(x)


def _evaluate(model, grid: np.ndarray) -> dict:
    """Fit errors, slopes and the certified bound of a trained (eval-mode) model."""
    fx, slope = (np.asarray(a) for a in _values_and_slopes(model, jnp.asarray(grid)))
    err = fx - np.abs(grid)
    right, left = grid >= 0.9, grid <= -0.9
    bound = trivial_bound(model, (1,), p=2)
    return {
        "max_error": float(np.max(np.abs(err))),
        "rms_error": float(np.sqrt(np.mean(err**2))),
        "slope_near_plus_1": float(np.mean(slope[right])),
        "slope_near_minus_1": float(np.mean(slope[left])),
        "max_abs_slope": float(np.max(np.abs(slope))),
        "trivial_bound": float(bound.value),
        "bound_kind": bound.kind,
        "_fit": fx,
        "_slope": slope,
    }


def _plot(grid, results, path) -> None:
    fig, axes = _common.figure(2)
    ax_fit, ax_slope = axes[0]
    ax_fit.plot(grid, np.abs(grid), "k--", lw=2, label="|x|")
    for label, r in results.items():
        ax_fit.plot(grid, r["_fit"], label=f"{label} (max err {r['max_error']:.3f})")
        ax_slope.plot(grid, r["_slope"], label=label)
    ax_fit.set(xlabel="x", ylabel="f(x)", title="fits of |x| by 1-Lipschitz networks")
    ax_slope.axhline(1.0, color="k", ls="--", lw=1)
    ax_slope.axhline(-1.0, color="k", ls="--", lw=1)
    ax_slope.set(xlabel="x", ylabel="f'(x)", title="slope (|x| needs ±1)")
    ax_fit.legend(fontsize=8)
    ax_slope.legend(fontsize=8)
    _common.save_figure(fig, path)


def run(out_dir, *, quick: bool = False, seed: int = 0) -> dict:
    """Train the three networks, evaluate them, write JSON/PNG/markdown; return the JSON."""
    cfg = QUICK if quick else FULL
    out = _common.experiment_dir(out_dir, NAME)
    grid = np.linspace(-1.0, 1.0, 2001)
    key = jax.random.key(seed)
    results = {}
    for i, label in enumerate(cfg["networks"]):
        activation, weights = NETWORKS[label]
        k_init, k_train = jax.random.split(jax.random.fold_in(key, i))
        model = training.lipschitz_mlp(
            cfg["sizes"], activation=activation, weights=weights, key=k_init
        )
        seconds, losses = _common.timed(
            lambda model=model, k=k_train: training.fit(
                model, _mse_loss, jnp.zeros((cfg["batch"], 1)), steps=cfg["steps"],
                lr=cfg["lr"], key=k,
            )
        )
        if weights == "spectral":
            training.settle_power_iterations(model, jnp.zeros((1, 1)))
        r = _evaluate(model, grid)
        r.update(activation=activation, weights=weights, final_loss=float(losses[-1]),
                 train_seconds=seconds)
        results[label] = r
    _plot(grid, results, out / f"{NAME}.png")
    public = {k: {n: v for n, v in r.items() if not n.startswith("_")} for k, r in results.items()}
    gs, relu = public["maxmin_bjorck"], public["relu_bjorck"]
    data = {
        **_common.header(NAME, quick=quick, seed=seed),
        "config": cfg,
        "networks": public,
        "findings": {
            "maxmin_error_below_relu": gs["max_error"] < min(
                public[k]["max_error"] for k in public if k.startswith("relu")
            ),
            "maxmin_over_relu_bjorck_rms": gs["rms_error"] / relu["rms_error"],
            "all_certified_at_most_1_plus_1e-4": all(
                r["trivial_bound"] <= 1.0 + 1e-4 for r in public.values()
            ),
        },
    }
    rows = [{"network": k, **v} for k, v in public.items()]
    _common.write_markdown_table(
        rows,
        ["network", "max_error", "rms_error", "slope_near_minus_1", "slope_near_plus_1",
         "max_abs_slope", "trivial_bound", "bound_kind", "train_seconds"],
        out / f"{NAME}.md",
        title="Fit of |x| on [-1, 1] by 1-Lipschitz networks",
    )
    return _common.write_json(data, out / f"{NAME}.json")


if __name__ == "__main__":
    _common.main(NAME, run, __doc__.split("\n\n")[0])
