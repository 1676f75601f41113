r"""Experiment 1: networks verifiable by the trivial bound.

The trivial bound Π_l Lip(f_l) of a network is usually hopelessly loose; trained with the
trivial-bound penalty (``loss + λ·Σ_l log Lip_l``), networks whose layers *attain* their bounds
make it tight:

- bias-free sinusoidal layers x ↦ (cos xW, sin xW) have ‖J(x)‖ = ‖W‖₂ at every x
  (:class:`liplax.nn.SinusoidalDense`);
- norm-saturating activations |z| and CReLU (relu z, relu −z) preserve gradient norms almost
  everywhere;
- against ReLU networks with and without the penalty, and the GroupSort + Björck baseline
  (1-Lipschitz by construction; Anil et al., ICML 2019).

Every network is trained by :func:`liplax.training.train` (the same loop as ``liplax train``) and
evaluated on the test set: the certified trivial bound (``upper``), the best lower bound found
(attained local Jacobian norms: Adam ascent on ‖J(x)‖ and gradient ascent with random kicks),
their ratio (tightness ≥ 1: how far the certificate is from the truth at most), clean accuracy and
certified accuracy at each ε (inputs in [0, 1]). The published claim to beat: bounds within 10% of
the ground truth on MNIST; MNIST cannot be downloaded here, Fashion-MNIST (harder) stands in.

Run: ``python experiments/tight_bound.py [--quick] [--out results] [--seed 0]``
(full: digits and Fashion-MNIST when its Debian files are installed, ℓ2 and ℓ∞; ~25 min on 2 CPU
cores; quick: digits, ℓ2, three networks, short runs).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from experiments import _common
from liplax import training
from liplax.training import config as configs
from liplax.training import data

NAME = "tight_bound"

# label: (model, penalty, loss overrides)
NETWORKS = {
    "sin + penalty": ("sin_mlp", "log", []),
    "sin (2 layers) + penalty": ("sin_mlp", "log", ["deep"]),
    "abs + penalty": ("abs_mlp", "log", []),
    "crelu + penalty": ("crelu_mlp", "log", []),
    "relu + penalty": ("relu_mlp", "log", []),
    "relu": ("relu_mlp", "none", []),
    "groupsort + björck": ("groupsort_mlp", "none", ["loss=hkr", "margin=0.1", "alpha=50"]),
}
DATASETS = {
    "digits": {"width": 128, "set": ["steps=1000", "batch_size=128", "learning_rate=3e-3"]},
    "fashion-mnist": {
        "width": 256,
        "set": ["steps=4000", "batch_size=256", "learning_rate=2e-3", "log_every=100",
                "eval_every=1000", "checkpoint_every=1000", "eval_examples=2000"],
    },
}
EPS = {2.0: "0.1,0.3,0.5", math.inf: "0.01,0.02,0.05"}
LINF_NETWORKS = ("sin + penalty", "abs + penalty", "relu + penalty", "relu")
QUICK_NETWORKS = ("sin + penalty", "relu", "groupsort + björck")


def _config(dataset: str, label: str, p: float, seed: int, quick: bool) -> configs.Config:
    model, penalty, extra = NETWORKS[label]
    ds = DATASETS[dataset]
    width = 16 if quick else ds["width"]
    widths = f"{width},{width}" if ("deep" in extra or model != "sin_mlp") else f"{width}"
    overrides = [
        f"dataset={dataset}", f"model={model}", f"penalty={penalty}", f"widths={widths}",
        f"p={'inf' if p == math.inf else 2}", f"eps={EPS[p]}", f"seed={seed}",
        *ds["set"], *[e for e in extra if e != "deep"],
    ]
    if quick:
        overrides += ["steps=100", "log_every=10", "eval_every=100", "checkpoint_every=100",
                      "lower_steps=20", "lower_restarts=2", "eval_examples=200"]
    c = configs.with_overrides(configs.CONFIGS["default"], overrides)
    slug = f"{dataset}-{label}-{'linf' if p == math.inf else 'l2'}"
    return configs.with_overrides(c, [f"name={slug.replace(' ', '').replace('+', '-')}"])


def run(out_dir, *, quick: bool = False, seed: int = 0) -> dict:
    """Train every network of the grid, collect its report; write JSON/PNG/markdown."""
    out = _common.experiment_dir(out_dir, NAME)
    have_fashion = os.path.isdir(data.FASHION_MNIST_DIR)
    datasets = ["digits"] if quick else ["digits"] + (["fashion-mnist"] if have_fashion else [])
    grid = []
    for dataset in datasets:
        for label in QUICK_NETWORKS if quick else NETWORKS:
            grid.append((dataset, label, 2.0))
        if not quick:
            grid += [(dataset, label, math.inf) for label in LINF_NETWORKS]
    loaded = {name: data.load(name) for name in datasets}
    rows = []
    for dataset, label, p in grid:
        config = _config(dataset, label, p, seed, quick)
        run_dir = out / "runs" / config.name
        resume = (run_dir / "checkpoints").is_dir()
        report = training.train(config, run_dir, dataset=loaded[dataset], quiet=True, resume=resume)
        row = {
            "dataset": dataset, "network": label, "p": "inf" if p == math.inf else "2",
            "upper": report["lipschitz_upper"], "kind": report["upper_kind"],
            "lower": report["lipschitz_lower"], "tightness": report["tightness"],
            "clean": report["clean_accuracy"],
            **{f"cert@{e}": a for e, a in report["certified_accuracy"].items()},
            "seconds": report["seconds"], "run": str(run_dir),
        }
        rows.append(row)
        print(f"{NAME}: {dataset:>13} {label:<26} p={row['p']:<3} tightness "
              f"{row['tightness']:.3f}, clean {row['clean']:.3f}", flush=True)
    result = {
        **_common.header(NAME, quick=quick, seed=seed),
        "fashion_mnist_available": have_fashion,
        "rows": rows,
    }
    _common.write_json(result, out / f"{NAME}.json")
    _write_tables(rows, out / f"{NAME}.md")
    _plot(rows, out / f"{NAME}.png")
    return result


def _write_tables(rows: list[dict], path: Path) -> None:
    parts = []
    for p in ("2", "inf"):
        sub = [r for r in rows if r["p"] == p]
        if not sub:
            continue
        eps = [k for k in sub[0] if k.startswith("cert@")]
        cols = ["dataset", "network", "upper", "lower", "tightness", "clean", *eps, "seconds"]
        parts.append(f"## ℓ{'∞' if p == 'inf' else '2'}\n\n" + _common.markdown_table(sub, cols))
    path.write_text("\n".join(parts))


def _plot(rows: list[dict], path: Path) -> None:
    l2 = [r for r in rows if r["p"] == "2"]
    fig, axes = _common.figure(2, 1, width=6.5, height=4.2)
    ax_t, ax_c = axes[0]
    labels = [f"{r['network']}\n({r['dataset']})" for r in l2]
    y = np.arange(len(l2))
    ax_t.barh(y, [r["tightness"] for r in l2], color="tab:blue")
    ax_t.axvline(1.1, color="k", ls="--", lw=1, label="within 10%")
    ax_t.set_xscale("log")
    ax_t.set_yticks(y, labels, fontsize=7)
    ax_t.set_xlabel("tightness = trivial bound / lower bound (ℓ2, log)")
    ax_t.legend(fontsize=8)
    eps = [k for k in l2[0] if k.startswith("cert@")] if l2 else []
    ax_c.scatter([r["clean"] for r in l2], [r[eps[0]] if eps else 0 for r in l2], c="tab:red")
    for r in l2:
        ax_c.annotate(r["network"], (r["clean"], r[eps[0]] if eps else 0), fontsize=6)
    ax_c.set_xlabel("clean accuracy")
    ax_c.set_ylabel(f"certified accuracy at ε={eps[0][5:] if eps else '?'} (ℓ2)")
    _common.save_figure(fig, path)


if __name__ == "__main__":
    _common.main(NAME, run, "Experiment 1: networks verifiable by the trivial bound.")
