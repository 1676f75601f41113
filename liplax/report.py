"""The training figure of a run (``training.png``): bounds, loss, accuracy and per-layer bounds."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


def _log_axis(ax, values: Sequence[float]) -> None:
    """A log y axis with plain-number ticks (1, 2, 5 × 10ᵏ), or linear below a decade."""
    from matplotlib import ticker

    vals = [v for v in values if v > 0 and math.isfinite(v)]
    if not vals or max(vals) / min(vals) < 10:
        return  # a narrow range reads better on a linear axis
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _panel(ax, letter: str, title: str) -> None:
    ax.set_title(f"({letter}) {title}", loc="left", fontsize=10)
    ax.grid(True, which="major", alpha=0.3, lw=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_history(
    history: Sequence[dict],
    path: str | os.PathLike,
    *,
    title: str = "",
    layers: Sequence[dict] | None = None,
) -> None:
    """Write the run's figure to ``path``: four panels over one step axis, 0 to the last step.

    (a) certified trivial bound and attained lower bound of the Lipschitz constant, with the
    penalty's power-iteration estimate where the log penalty is on; (b) training loss (each
    chunk of steps); (c) test accuracy, clean and certified at each ε; (d) per layer, the
    certified bound next to the gain attained along the lower bound's witness direction
    (``layers``: the report's ``layer_bounds`` rows; the panel is left out without them).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h for h in history if "lipschitz_upper" in h]
    chunks = [h for h in history if "loss" in h]
    last = max([h["step"] for h in history], default=1)
    with plt.rc_context({"font.size": 9, "axes.labelsize": 9, "legend.fontsize": 8}):
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        ax_b, ax_l, ax_a, ax_g = axes.ravel()
        steps = [h["step"] for h in evals]
        if evals:
            up = [h["lipschitz_upper"] for h in evals]
            lo = [h["lipschitz_lower"] for h in evals]
            ax_b.fill_between(steps, lo, up, color="C0", alpha=0.12, lw=0)
            ax_b.plot(steps, up, "o-", color="C0", ms=3.5, label="certified upper bound")
            ax_b.plot(steps, lo, "s--", color="C3", ms=3.5, label="attained lower bound")
            est = [math.exp(h["penalty"]) for h in chunks
                   if h.get("penalty") is not None and math.isfinite(h["penalty"])
                   and h["penalty"] != 0.0]
            if len(est) == len(chunks) and est:
                ax_b.plot([h["step"] for h in chunks], est, color="0.55", lw=0.9,
                          label="power-iteration estimate (penalty)")
            _log_axis(ax_b, up + lo)
            fin = evals[-1]
            ax_a.plot(steps, [h["clean_accuracy"] for h in evals], "o-", color="k", ms=3.5,
                      label="clean")
            for i, eps in enumerate(fin["certified_accuracy"]):
                ax_a.plot(steps, [h["certified_accuracy"].get(eps, math.nan) for h in evals],
                          "o-", ms=3, color=f"C{i}", label=f"certified, ε = {eps}")
        tight = f" (final tightness {evals[-1]['tightness']:.3f})" if evals else ""
        _panel(ax_b, "a", f"Lipschitz constant{tight}")
        ax_b.set_ylabel("Lipschitz constant")
        ax_b.legend(loc="best", framealpha=0.9)
        if chunks:
            ax_l.plot([h["step"] for h in chunks], [h["loss"] for h in chunks], color="C2", lw=1.2,
                      label="training loss (mean over each chunk)")
            ax_l.legend(loc="best", framealpha=0.9)
            _log_axis(ax_l, [h["loss"] for h in chunks])
        _panel(ax_l, "b", "training loss")
        ax_l.set_ylabel("loss")
        _panel(ax_a, "c", "test accuracy")
        ax_a.set_ylabel("test accuracy (last point: whole test set)")
        ax_a.set_ylim(0, 1.02)
        ax_a.legend(loc="best", framealpha=0.9)
        for ax in (ax_b, ax_l, ax_a):
            ax.set_xlim(0, last)
            ax.set_xlabel("training step")
        if layers:
            _layer_panel(ax_g, layers)
        else:
            ax_g.set_axis_off()
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=150)
        plt.close(fig)


def _layer_panel(ax, layers: Sequence[dict]) -> None:
    """(d): grouped bars, certified bound and attained gain of each top-level layer."""
    import numpy as np

    idx = np.arange(len(layers))
    bound = [r["value"] for r in layers]
    gain = [r.get("attained_gain", math.nan) for r in layers]
    ax.bar(idx - 0.2, bound, 0.4, color="C0", label="certified bound")
    ax.bar(idx + 0.2, gain, 0.4, color="C3", alpha=0.8,
           label="gain attained along the witness direction")
    ax.set_xticks(idx, [f"{i}: {r['layer']}" for i, r in enumerate(layers)], rotation=20,
                  ha="right")
    prod_b, prod_g = math.prod(bound), math.prod(gain)
    _panel(ax, "d", f"per layer, final: products {prod_b:.4g} (bound) vs {prod_g:.4g} (attained)")
    ax.set_ylabel("Lipschitz constant of the layer")
    ax.set_ylim(0, 1.3 * max([b for b in bound + gain if math.isfinite(b)], default=1.0))
    ax.legend(loc="upper center", ncol=2, framealpha=0.9)
