"""What a run shows and leaves: progress on stderr, ``report.json``, checkpoint metadata, the plot.

- :class:`Progress` (the one progress bar, shared with ``liplax sweep``) and :class:`Stages`
  (one line per slow stage of the final evaluation);
- :func:`run_meta` (a checkpoint's JSON), :func:`run_report` (``report.json``, keys
  :data:`REPORT_KEYS` and more), :func:`layer_rows` (the per-layer table) and
  :func:`finished_report` (the report of a run that is already done);
- :func:`plot_history` (``training.png``: bounds, loss, accuracy and per-layer bounds).

No JAX at import: the command line imports this module for its progress bar.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from liplax._version import __version__

if TYPE_CHECKING:
    from liplax.training.config import Config
    from liplax.training.data import Dataset
    from liplax.training.state import Run

REPORT_KEYS = (
    "lipschitz_upper", "lipschitz_lower", "tightness", "clean_accuracy", "certified_accuracy",
    "p", "dataset", "config", "steps", "seconds",
)


# ----------------------------------------------------------------------------- progress


class Progress:
    """The one progress bar of the ``liplax`` commands (training steps, swept kernels).

    A tqdm bar on stderr with live metrics (``postfix``: a dict of short strings or one string);
    without tqdm, one plain line per update (``desc: done/total units (postfix)``); nothing when
    ``quiet``.
    """

    def __init__(self, total: int, *, initial: int = 0, quiet: bool = False,
                 desc: str = "liplax", unit: str = "step"):
        self.total, self.done, self.quiet = total, initial, quiet
        self.desc, self.unit, self.bar = desc, unit, None
        if quiet:
            return
        try:
            from tqdm import auto
        except ImportError:  # plain lines
            return
        self.bar = auto.tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                        file=sys.stderr)

    def update(self, n: int, postfix: dict | str = "") -> None:
        self.done += n
        if self.bar is not None:
            if isinstance(postfix, str):
                self.bar.set_postfix_str(postfix, refresh=False)
            else:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
        elif not self.quiet:
            text = postfix if isinstance(postfix, str) else ", ".join(
                f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({text})", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Stages:
    """One progress line per slow stage on stderr (``liplax: final evaluation: …``), or none."""

    def __init__(self, quiet: bool, prefix: str = "final evaluation"):
        self.quiet, self.prefix = quiet, prefix

    @contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if not self.quiet:
            print(f"liplax: {self.prefix}: {what} …", file=sys.stderr, flush=True)
        yield
        if not self.quiet:
            print(f"liplax: {self.prefix}: {what} done in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- reports


def run_meta(config: Config, history: list[dict], step: int, dataset: Dataset,
             elapsed: float) -> dict:
    """The JSON metadata a checkpoint stores beside the state (config, history, data order)."""
    return {
        "format": 1,
        "elapsed_seconds": round(elapsed, 3),
        "liplax_version": __version__,
        "config": config.to_dict(),
        "step": int(step),
        "history": history,
        "dataset": {"name": dataset.name, "n_train": int(len(dataset.y_train)),
                    "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes},
        "data_order": (
            "liplax.training.data.batch_indices(fold_in(key(seed), 1), n_train, batch_size, step)"
        ),
    }


def run_report(run: Run, final: dict, history: list[dict], dataset: Dataset, seconds: float,
               steps_done: int) -> dict:
    """``report.json``: the final evaluation, the run's settings, history and layer table."""
    c = run.config
    return {
        **{k: final[k] for k in ("lipschitz_upper", "lipschitz_lower", "tightness",
                                 "clean_accuracy", "certified_accuracy")},
        "upper_kind": final["upper_kind"],
        "p": "inf" if c.p == math.inf else c.p,
        "dataset": dataset.name,
        "config": c.to_dict(),
        "steps": int(steps_done),
        "seconds": round(seconds, 3),
        "devices": final.get("devices", 1),
        "layer_bounds": final.get("layer_bounds", []),
        "history": history,
        "liplax_version": __version__,
    }


def layer_rows(model, input_shape, p: float, witness) -> list[dict]:
    """Each top-level layer's certified bound and its gain attained along the lower bound's
    witness direction (:func:`liplax.training.evaluation.layer_gains`)."""
    from liplax import bounds
    from liplax.training.evaluation import layer_gains

    rows = bounds.layer_bounds(model, input_shape, p=p)
    gains = layer_gains(model, witness, p=p)
    return [
        {"layer": name, "value": float(b.value), "kind": b.kind, "attained_gain": g}
        for (name, b), g in zip(rows, gains, strict=True)
    ]


def finished_report(out: Path, step: int, config: Config) -> dict | None:
    """The report of a finished run in ``out`` (last checkpoint at ``config.steps`` and a
    readable ``report.json`` of that many steps), else ``None``."""
    if step != config.steps:
        return None
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("steps") == config.steps else None


# ----------------------------------------------------------------------------- the plot


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


__all__ = [
    "REPORT_KEYS", "Progress", "Stages", "finished_report", "layer_rows", "plot_history",
    "run_meta", "run_report",
]
