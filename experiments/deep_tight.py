r"""Experiment 6: is the trivial bound still tight at depth? Tightness, clean and certified
accuracy against the number of hidden layers (1, 2, 4, 8) for each family of networks.

Families (:data:`FAMILIES`, one line each; a CNN family can be added the same way):

- ``sin + gap``: the bias-free sinusoidal MLP trained with the log trivial-bound penalty and the
  gap penalty (:mod:`liplax.training.gap`: log U minus the log of the gain the network attains
  at data points along its top Jacobian direction): the recipe of ``fashion-mlp4`` (whose μ is
  now 0.5; the rows of experiments/README.md §6 were run with μ = 1);
- ``abs + gap``: the depth recipe: dense layers with |·| (Jacobian diag(±1) W: a square
  layer whose singular values are equal passes every direction at full gain, where a sinusoidal
  layer, doubling the features that the next layer halves, keeps only the part of a direction
  in the next layer's top singular space), orthogonal initial weights of norm 1
  (``init_norm=1``: the bound starts at 1, not at ~57 for LeCun-normal weights at depth 8), and
  the log and gap penalties (λ = 0.15, μ = 1);
- ``sin + log``: the sinusoidal MLP with the log penalty alone (the recipe before the gap
  penalty);
- ``sin``: the same network without any penalty (``fashion-mlp4-nopen``);
- ``groupsort + björck``: Björck-orthonormalized layers with MaxMin, HKR loss
  (1-Lipschitz by construction; Anil et al., ICML 2019);
- ``aol``: almost-orthogonal layers with MaxMin, HKR loss (Prach & Lampert, ECCV 2022).

Every network has the same width at every hidden layer and the same step budget, is trained by
:func:`liplax.training.train` (the loop of ``liplax train``) and evaluated on the whole test set:
``upper`` the certified trivial bound, ``lower`` the best attained gain found (ascent on the
exact local norm and on difference quotients: a value the network reaches), tightness their
ratio, certified accuracy at ε ∈ {0.1, 0.3, 0.5, 1.0} (ℓ2, inputs in [0, 1]).

Run: ``python experiments/deep_tight.py [--quick] [--steps N] [--out results] [--seed 0]
[--families LABEL ...] [--depths D ...]``
(full: Fashion-MNIST, width 128, ``--steps`` 2000 by default: 24 runs; quick: digits, width 16,
depths 1 and 2, 30 steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from experiments import _common
from liplax import training
from liplax.training import config as configs
from liplax.training import data

NAME = "deep_tight"
DEPTHS = (1, 2, 4, 8)
QUICK_DEPTHS = (1, 2)
EPS = "0.1,0.3,0.5,1"
HKR = ["penalty=none", "loss=hkr", "margin=0.1", "alpha=50"]

# label: (model, overrides). One line adds a family.
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "sin + gap": ("sin_mlp", ["penalty=log", "penalty_weight=0.15", "gap_weight=1"]),
    "abs + gap": ("abs_mlp", ["penalty=log", "penalty_weight=0.15", "gap_weight=1",
                              "init_norm=1"]),
    "sin + log": ("sin_mlp", ["penalty=log", "penalty_weight=0.15"]),
    "sin": ("sin_mlp", ["penalty=none"]),
    "groupsort + björck": ("groupsort_mlp", HKR),
    "aol": ("aol_mlp", HKR),
}
FULL = ["dataset=fashion-mnist", "batch_size=256", "learning_rate=2e-3", "eval_examples=2000"]
QUICK = ["dataset=digits", "batch_size=64", "lower_steps=10", "lower_restarts=2",
         "eval_examples=200"]


def family_config(label: str, depth: int, *, steps: int, width: int, quick: bool,
                  seed: int) -> configs.Config:
    """The configuration of ``label`` with ``depth`` hidden layers of ``width`` (module doc)."""
    model, extra = FAMILIES[label]
    every = max(1, steps // 4) if quick else 100
    overrides = [
        f"model={model}", f"widths={','.join([str(width)] * depth)}", f"eps={EPS}",
        f"seed={seed}", f"steps={steps}", f"log_every={every}", f"eval_every={every * 4}",
        f"checkpoint_every={every * 4}", *(QUICK if quick else FULL), *extra,
    ]
    slug = f"{label.replace(' + ', '-').replace(' ', '')}-{depth}"
    return configs.with_overrides(configs.CONFIGS["default"], [*overrides, f"name={slug}"])


def run(out_dir, *, quick: bool = False, seed: int = 0, steps: int | None = None,
        width: int | None = None, families=None, depths=None) -> dict:
    """Train every (family, depth), collect the reports; write JSON, PNG and markdown."""
    out = _common.experiment_dir(out_dir, NAME)
    steps = int(steps if steps is not None else (30 if quick else 2000))
    width = int(width if width is not None else (16 if quick else 128))
    families = list(families or FAMILIES)
    depths = tuple(depths or (QUICK_DEPTHS if quick else DEPTHS))
    dataset = data.load("digits" if quick else "fashion-mnist")
    rows = []
    # Depth-major order: an interrupted run (it resumes) has every family at the small depths.
    for depth, label in ((d, f) for d in depths for f in families):
        config = family_config(label, depth, steps=steps, width=width, quick=quick, seed=seed)
        run_dir = out / "runs" / config.name
        resume = (run_dir / "checkpoints").is_dir()
        report = training.train(config, run_dir, dataset=dataset, quiet=True, resume=resume)
        row = {
            "family": label, "depth": depth, "upper": report["lipschitz_upper"],
            "kind": report["upper_kind"], "lower": report["lipschitz_lower"],
            "tightness": report["tightness"], "clean": report["clean_accuracy"],
            **{f"cert@{e}": a for e, a in report["certified_accuracy"].items()},
            "seconds": report["seconds"], "run": str(run_dir),  # summed over resumed sessions
        }
        rows.append(row)
        print(f"{NAME}: {label:<20} depth {depth}: tightness {row['tightness']:.3f}, "
              f"clean {row['clean']:.3f}", flush=True)
    rows.sort(key=lambda r: (families.index(r["family"]), r["depth"]))
    result = {
        **_common.header(NAME, quick=quick, seed=seed),
        "dataset": dataset.name, "steps": steps, "width": width, "rows": rows,
    }
    _common.write_json(result, out / f"{NAME}.json")
    cols = ["family", "depth", "upper", "lower", "tightness", "clean",
            *[k for k in rows[0] if k.startswith("cert@")], "seconds"]
    _common.write_markdown_table(rows, cols, out / f"{NAME}.md",
                                 title=f"{dataset.name}, width {width}, {steps} steps")
    _plot(rows, out / f"{NAME}.png")
    return result


def _plot(rows: list[dict], path: Path) -> None:
    fig, axes = _common.figure(2, 1, width=5.2, height=4.0)
    ax_t, ax_c = axes[0]
    for label in dict.fromkeys(r["family"] for r in rows):
        sub = [r for r in rows if r["family"] == label]
        d = [r["depth"] for r in sub]
        ax_t.plot(d, [r["tightness"] for r in sub], "o-", label=label)
        ax_c.plot(d, [r.get("cert@0.5", np.nan) for r in sub], "o-", label=label)
    for ax in (ax_t, ax_c):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden layers")
    ax_t.set_yscale("log")
    ax_t.axhline(1.05, color="k", ls="--", lw=1, label="1.05")
    ax_t.set_ylabel("tightness = trivial bound / attained lower bound")
    ax_c.set_ylabel("certified accuracy at ε = 0.5 (ℓ2)")
    ax_t.legend(fontsize=7)
    _common.save_figure(fig, path)


def main() -> None:
    ap = _common.parser("Experiment 6: tightness of the trivial bound against depth.")
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps per run (default 2000; quick: 30)")
    ap.add_argument("--width", type=int, default=None, help="hidden width (default 128)")
    ap.add_argument("--families", nargs="*", default=None, choices=list(FAMILIES),
                    help="families to run (default: all)")
    ap.add_argument("--depths", nargs="*", type=int, default=None,
                    help="hidden-layer counts (default 1 2 4 8; quick: 1 2)")
    args: argparse.Namespace = ap.parse_args()
    from liplax.jaxcache import enable_compilation_cache

    enable_compilation_cache()
    t0 = time.perf_counter()
    run(args.out, quick=args.quick, seed=args.seed, steps=args.steps, width=args.width,
        families=args.families, depths=args.depths)
    print(f"{NAME}: wrote {args.out}/{NAME}/ in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
