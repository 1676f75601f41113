r"""The ``liplax sweep`` command: operator norms of many kernels from files, as a JSON/CSV table.

Inputs (any number, mixed):

- ``.npy``: one array; rank 2 is one dense kernel ``(in, out)`` (the map x ↦ x @ w), rank 4 one
  HWIO conv kernel ``(kh, kw, in, out)``; rank 3 / rank 5 are stacks of those (leading batch);
- ``.npz``: every array of rank 2–5 read as above (the others are skipped, with a note);
- a directory: every orbax pytree checkpoint below it (each folder holding a ``_METADATA``
  file, e.g. ``<step>/<item>`` of a ``CheckpointManager``); every array leaf of rank 2 (dense)
  or rank 4 (conv HWIO) is swept, named by its folder and key path (``--match`` keeps only the
  names containing a string, e.g. ``kernel``). Optimizer state (leaves under ``opt_state`` or
  named ``mu``/``nu``: Adam's moments have the kernels' shapes and names) is left out unless
  ``--optimizer-state`` is given.

Kernels of one shape are stacked and swept with :func:`liplax.sweep.sweep` (one vmapped call per
block of ``--chunk-size`` kernels, progress on stderr). ``--op`` picks the operator:

========  ==================================  =====================================  ==========
``--op``  dense ``(in, out)``                 conv (``--input-size H W`` required)   guarantee
========  ==================================  =====================================  ==========
exact     ``linalg.spectral_norm`` (SVD)      ``conv.exact_spectral_norm``           exact
                                              (``--padding CIRCULAR`` only)
gram      ``linalg.gram_bound``               ``conv.gram_bound``                    upper
power     ``linalg.power_iteration``          ``conv.power_iteration``               estimate
inf       ``linalg.norm_inf``                 ``conv.norm_inf``                      exact/upper
one       ``linalg.norm_1``                   ``conv.norm_1``                        exact/upper
========  ==================================  =====================================  ==========

The table (``--out table.json`` or ``table.csv``, by suffix; JSON on stdout without ``--out``)
has one row per kernel: source, name, index in its stack, shape, layer type, op, guarantee,
value. Exit codes: 0 on success, 2 on bad input (a missing file, no usable array, bad options),
with a message naming the file or option on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from liplax.cli.common import enable_cache
from liplax.cli.sweep_inputs import Entry, SweepInputError, is_optimizer_leaf, read_inputs
from liplax.training.outputs import Progress

# JAX and the bound modules load when a sweep runs, not when ``liplax`` builds its parser.
OPS = ("exact", "gram", "power", "inf", "one")


def _ops(layer: str) -> dict:
    """``{op: function of one kernel → Bound}`` for ``dense`` or ``conv`` kernels (the
    guarantee is read from the returned Bound, never restated here)."""
    from liplax import conv, linalg

    mod = linalg if layer == "dense" else conv
    exact = linalg.spectral_norm if layer == "dense" else conv.exact_spectral_norm
    return {"exact": exact, "gram": mod.gram_bound, "power": mod.power_iteration,
            "inf": mod.norm_inf, "one": mod.norm_1}
COLUMNS = ("source", "name", "index", "shape", "layer", "op", "guarantee", "value")


# Reading the inputs lives in liplax.cli.sweep_inputs (re-exported here).


# --------------------------------------------------------------------------------------------
# The operators.
# --------------------------------------------------------------------------------------------


def _padding(text: str):
    if text.upper() in ("SAME", "VALID", "CIRCULAR"):
        return text.upper()
    try:
        return int(text)
    except ValueError:
        raise SweepInputError(
            f"--padding must be SAME, VALID, CIRCULAR or an int, got {text!r}"
        ) from None


def operator(args, kernel_shape: tuple[int, ...]):
    """(fn of one kernel → Bound, layer) for ``--op`` on kernels of this shape."""
    import jax

    key = jax.random.key(args.seed)
    if len(kernel_shape) == 2:
        fn = _ops("dense")[args.op]
        if args.op == "gram":
            return partial(fn, num_iters=args.iters or 6), "dense"
        if args.op == "power":
            return _First(partial(fn, key=key, num_iters=args.iters or 50)), "dense"
        return fn, "dense"
    if args.input_size is None:
        raise SweepInputError(
            f"conv kernels (HWIO, shape {kernel_shape}) need --input-size H W (the norm of a "
            "convolution depends on the input size)"
        )
    hw, padding = tuple(args.input_size), _padding(args.padding)
    st = tuple(args.stride) if len(args.stride) == 2 else (args.stride[0],) * 2
    fn = _ops("conv")[args.op]
    if args.op == "exact":
        if padding != "CIRCULAR":
            raise SweepInputError(
                f"--op exact is the exact norm of a circular convolution: use --padding "
                f"CIRCULAR, or --op gram for an upper bound with padding {args.padding!r}"
            )
        return partial(fn, input_shape=hw, strides=st), "conv"
    kw = {"input_shape": hw, "strides": st, "padding": padding}
    if args.op == "gram":
        kw["num_iters"] = args.iters or 6
    if args.op == "power":
        return _First(partial(fn, key=key, num_iters=args.iters or 50, **kw)), "conv"
    return partial(fn, **kw), "conv"


@dataclass(frozen=True)
class _First:
    """The first output of a function returning a tuple (power iteration: (σ̂, vector))."""

    fn: object

    def __call__(self, x):
        return self.fn(x)[0]


# --------------------------------------------------------------------------------------------
# Progress, the sweep, the table.
# --------------------------------------------------------------------------------------------


def _sweep_blocks(fn, kernels: np.ndarray, block: int | None, progress, what: str):
    """(values, kind): fn over every kernel, one :func:`sweep` call per block of ``block``
    kernels (the last block padded with copies of its last kernel, so every block has one shape
    and compiles once); progress after each block. The kind is the returned Bound's."""
    import jax.numpy as jnp

    from liplax.sweep import sweep

    total = kernels.shape[0]
    block = total if block is None else min(block, total)
    out = []
    for start in range(0, total, block):
        part = kernels[start : start + block]
        n = part.shape[0]
        if n < block:
            part = np.concatenate([part, np.repeat(part[-1:], block - n, axis=0)])
        bound = sweep(fn, jnp.asarray(part))
        out.append(np.asarray(bound.value)[:n])
        progress.update(n, what)
    return np.concatenate(out), bound.kind


def sweep_entries(entries: list[Entry], args, progress) -> list[dict]:
    """Rows of the table, in input order (kernels of one shape swept together)."""
    flat = [(e, i) for e in entries for i in range(e.stacked.shape[0])]
    by_shape: dict[tuple, list[int]] = {}
    for j, (e, _) in enumerate(flat):
        by_shape.setdefault(e.stacked.shape[1:], []).append(j)
    values: list[float] = [math.nan] * len(flat)
    kinds: list[tuple[str, str]] = [("", "")] * len(flat)
    for shape, idx in by_shape.items():
        fn, layer = operator(args, shape)
        dtype = np.result_type(*[flat[j][0].stacked.dtype for j in idx], np.float32)
        stack = np.stack([flat[j][0].stacked[flat[j][1]] for j in idx]).astype(dtype)
        what = "x".join(map(str, shape))
        got, guarantee = _sweep_blocks(fn, stack, args.chunk_size, progress, what)
        for j, v in zip(idx, got, strict=True):
            values[j], kinds[j] = float(v), (layer, guarantee)
    rows = []
    for j, (e, i) in enumerate(flat):
        rows.append({
            "source": e.source,
            "name": e.name,
            "index": i if e.was_stacked else None,
            "shape": list(e.stacked.shape[1:]),
            "layer": kinds[j][0],
            "op": args.op,
            "guarantee": kinds[j][1],
            "value": values[j],
        })
    return rows


def _settings(args) -> dict:
    return {
        "op": args.op,
        "input_size": list(args.input_size) if args.input_size else None,
        "padding": args.padding.upper() if args.padding.isalpha() else args.padding,
        "stride": list(args.stride),
        "iters": args.iters,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "match": args.match,
    }


def write_table(rows: list[dict], args) -> None:
    out = args.out
    if out is None:
        json.dump({"settings": _settings(args), "rows": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps({"settings": _settings(args), "rows": rows}, indent=2) + "\n")
        return
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "shape": "x".join(map(str, row["shape"])),
                             "index": "" if row["index"] is None else row["index"],
                             "value": repr(row["value"])})


# --------------------------------------------------------------------------------------------
# argparse.
# --------------------------------------------------------------------------------------------


def _check_args(args) -> None:
    if args.out is not None and Path(args.out).suffix not in (".json", ".csv"):
        raise SweepInputError(f"--out must end in .json or .csv, got {args.out!r}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise SweepInputError(f"--chunk-size must be a positive int, got {args.chunk_size}")
    if args.iters is not None and args.iters < 1:
        raise SweepInputError(f"--iters must be a positive int, got {args.iters}")
    if len(args.stride) not in (1, 2) or min(args.stride) < 1:
        raise SweepInputError(f"--stride must be one or two positive ints, got {args.stride}")
    if args.input_size is not None and min(args.input_size) < 1:
        raise SweepInputError(f"--input-size must be two positive ints, got {args.input_size}")


def add_parser(subparsers) -> None:
    """Register ``sweep`` on an ``argparse`` subparsers object (``set_defaults(func=run)``)."""
    p = subparsers.add_parser(
        "sweep",
        help="operator norms of many kernels (.npy, .npz, orbax checkpoints) as a JSON/CSV table",
        description="Operator norms of many kernels from .npy/.npz files or orbax checkpoints, "
                    "swept in vmapped blocks, written as a JSON or CSV table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="PATH",
                   help=".npy / .npz files or orbax checkpoint directories")
    p.add_argument("--op", choices=OPS, default="gram",
                   help="exact (SVD / circular FFT), gram (upper bound, default), power "
                        "(estimate), inf or one (induced l_inf / l_1 norms)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="input size of conv kernels (required for rank-4 kernels)")
    p.add_argument("--padding", default="SAME",
                   help="conv padding: SAME (default), VALID, CIRCULAR or an int")
    p.add_argument("--stride", nargs="+", type=int, default=[1], metavar="S",
                   help="conv stride: one int or two (default 1)")
    p.add_argument("--iters", type=int, default=None,
                   help="Gram steps (default 6) or power-iteration steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the power iteration start")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="kernels per vmapped call (bounds peak memory; progress per chunk)")
    p.add_argument("--match", default=None,
                   help="keep only kernels whose name contains this string (e.g. kernel)")
    p.add_argument("--out", default=None, metavar="TABLE",
                   help="table.json or table.csv (format from the suffix); JSON on stdout if unset")
    p.add_argument("--optimizer-state", action="store_true",
                   help="also sweep optimizer-state leaves of checkpoints (Adam's mu/nu)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``liplax sweep``; returns the exit code (2 on bad input, message on stderr)."""
    def note(msg: str) -> None:
        if not args.quiet:
            print(f"liplax sweep: {msg}", file=sys.stderr)

    try:
        _check_args(args)
        enable_cache()
        entries = read_inputs(args.inputs, note,
                              optimizer_state=getattr(args, "optimizer_state", False))
        if args.match is not None:
            entries = [e for e in entries if args.match in e.name]
            if not entries:
                raise SweepInputError(f"--match {args.match!r}: no kernel name contains it")
        total = sum(e.stacked.shape[0] for e in entries)
        progress = Progress(total, quiet=args.quiet, desc="liplax sweep", unit="kernel")
        try:
            rows = sweep_entries(entries, args, progress)
        finally:
            progress.close()
        write_table(rows, args)
    except ValueError as err:  # SweepInputError, or an operator refusing a kernel/size/padding
        print(f"liplax sweep: error: {err}", file=sys.stderr)
        return 2
    note(f"{total} kernel(s) swept" + (f", table written to {args.out}" if args.out else ""))
    return 0


__all__ = ["Entry", "SweepInputError", "add_parser", "is_optimizer_leaf", "read_inputs", "run"]
