"""Shared plumbing of the experiment scripts: output folders, JSON/markdown/PNG writers, timing,
seeds and the command line.

Every experiment ``experiments/<name>.py`` exposes ``run(out_dir, *, quick=False, seed=0) -> dict``
and writes ``<name>.json``, ``<name>.png`` and ``<name>.md`` into ``<out>/<name>/``. ``--quick`` is
the small configuration the tests run (a few seconds each); the full configuration is what
``experiments/README.md`` reports.

The networks and their training come from :mod:`liplax.training` (:func:`~liplax.training.fit`,
:func:`~liplax.training.lipschitz_mlp`, :func:`~liplax.training.train`); this module holds only
what the experiment scripts share besides: files, tables, figures, timing and the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

DEFAULT_OUT = "results"


def experiment_dir(out: str | os.PathLike, name: str) -> Path:
    """``<out>/<name>/``, created if missing."""
    path = Path(out) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _plain(x: Any) -> Any:
    """JSON-ready copy: arrays and NumPy/JAX scalars become lists and Python numbers; a
    non-finite float becomes its string ("inf", "nan") so the file stays strict JSON."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, jax.Array | np.ndarray):
        return _plain(np.asarray(x).tolist())
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating | float):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    return x


def write_json(data: dict, path: str | os.PathLike) -> dict:
    """Write ``data`` as indented JSON and return the JSON-ready copy that was written."""
    plain = _plain(data)
    Path(path).write_text(json.dumps(plain, indent=2) + "\n")
    return plain


def _cell(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table: one line per row, the given columns (missing cells empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown_table(
    rows: Sequence[dict], columns: Sequence[str], path: str | os.PathLike, *, title: str = ""
) -> None:
    """Write :func:`markdown_table` of ``rows`` to ``path``, under a ``## title`` if given."""
    head = f"## {title}\n\n" if title else ""
    Path(path).write_text(head + markdown_table(rows, columns))


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 5.0, height: float = 4.0):
    """A matplotlib figure with the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, waiting for JAX's asynchronous results."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def timed_warm(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after one warm-up call (compilation excluded)."""
    jax.block_until_ready(fn())
    times = []
    out = None
    for _ in range(repeats):
        t, out = timed(fn)
        times.append(t)
    return float(np.median(times)), out


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


def header(name: str, *, quick: bool, seed: int) -> dict:
    """The fields every experiment's JSON starts with."""
    return {"experiment": name, "quick": quick, "seed": seed, "machine": machine()}


def parser(description: str) -> argparse.ArgumentParser:
    """``--out`` (default ``results/``), ``--seed`` and ``--quick``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=DEFAULT_OUT, help="results folder (default: results/)")
    ap.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="the small configuration of the tests")
    return ap


def main(name: str, run: Callable[..., dict], description: str) -> None:
    """Command-line entry point: parse the arguments, run, say where the files went."""
    args = parser(description).parse_args()
    from liplax.jaxcache import enable_compilation_cache

    enable_compilation_cache()  # $LIPLAX_CACHE_DIR (or ~/.cache/liplax/jax; "off" disables)
    t0 = time.perf_counter()
    run(args.out, quick=args.quick, seed=args.seed)
    out = experiment_dir(args.out, name)
    print(f"{name}: wrote {out}/{name}.json, .png, .md in {time.perf_counter() - t0:.1f} s")
