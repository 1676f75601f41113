"""Plots and tables of training runs: the PNG of bounds and accuracy over training."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


def plot_history(history: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Plot trivial bound, lower bound (log scale) and accuracies against the step into ``path``.

    Uses the evaluation entries of ``history`` (those with ``lipschitz_upper``); the training
    loss is drawn from every entry.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h for h in history if "lipschitz_upper" in h]
    fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    if evals:
        steps = [h["step"] for h in evals]
        ax_b.plot(steps, [h["lipschitz_upper"] for h in evals], "o-", label="trivial bound (upper)")
        ax_b.plot(steps, [h["lipschitz_lower"] for h in evals], "s--", label="lower bound")
        ax_b.set_yscale("log")
        ax_a.plot(steps, [h["clean_accuracy"] for h in evals], "o-", color="k", label="clean")
        for eps in evals[-1]["certified_accuracy"]:
            ax_a.plot(steps, [h["certified_accuracy"].get(eps, math.nan) for h in evals], ".-",
                      label=f"certified ε={eps}")
    loss_steps = [h["step"] for h in history if "loss" in h]
    if loss_steps:
        twin = ax_b.twinx()
        twin.plot(loss_steps, [h["loss"] for h in history if "loss" in h], color="0.7", lw=1,
                  label="train loss")
        twin.set_ylabel("train loss")
    ax_b.set_xlabel("step")
    ax_b.set_ylabel("Lipschitz constant")
    ax_b.legend(loc="upper left", fontsize=8)
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("accuracy")
    ax_a.set_ylim(0, 1)
    ax_a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
