"""``liplax certify`` and ``liplax bound``: certificates and the bound table of a trained run.

- ``liplax certify RUN [--eps E ...] [--p P] [--data-dir D] [--json]``: certified accuracy of the
  run on its test set from its certified trivial bound (:mod:`liplax.certify`).
  With ``--lower``: also an attained lower bound with its budget (``--lower-steps``,
  ``--lower-restarts``, ``--data-starts``, ``--noise-starts``, ``--seed``), its witness re-checked
  in float64 and saved as ``.npz`` (``--witness``, default ``RUN/lower_witness.npz``)
  (:func:`liplax.certify.witness.attained_lower_bound`), and the tightness upper / lower.
- ``liplax bound RUN [--p P] [--json]``: the per-layer bound table (value, kind) and the product.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from liplax.cli.common import CliError, load_run, p_arg


def _lower(args, model, x_test, p: float, upper: float) -> dict:
    """The ``--lower`` block: the attained lower bound, its witness file and the tightness."""
    import jax

    from liplax.certify import tightness_ratio
    from liplax.certify.witness import attained_lower_bound, save_witness

    w = attained_lower_bound(
        model, x_test, key=jax.random.key(args.seed), p=p, steps=args.lower_steps,
        restarts=args.lower_restarts, data_starts=args.data_starts,
        noise_starts=args.noise_starts,
    )
    path = Path(args.witness) if args.witness else _run_folder(args.run) / "lower_witness.npz"
    save_witness(path, w, p=p)
    return {
        "value": w.value, "kind": "estimate", "witness_kind": w.kind, "witness": str(path),
        "search_value": w.search_value, "candidates": w.candidates,
        "tightness": float(tightness_ratio(upper, w.value)),
        "budget": {"steps": args.lower_steps, "restarts": args.lower_restarts,
                   "data_starts": args.data_starts, "noise_starts": args.noise_starts,
                   "seed": args.seed},
    }


def _run_folder(path: str) -> Path:
    """The run folder of ``path`` (a run, its ``checkpoints/`` or one checkpoint): the witness
    goes there by default, never inside the checkpoints."""
    folder = Path(path)
    if folder.name == "checkpoints":
        return folder.parent
    if folder.parent.name == "checkpoints" and folder.name.isdigit():
        return folder.parent.parent
    return folder


def _check_lower_args(args: argparse.Namespace) -> None:
    for name in ("lower_steps", "lower_restarts"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    for name in ("data_starts", "noise_starts"):
        if getattr(args, name) < 0:
            raise CliError(f"--{name.replace('_', '-')} must be ≥ 0, got {getattr(args, name)}")


def cmd_certify(args: argparse.Namespace) -> int:
    if args.lower:
        _check_lower_args(args)
    run, meta = load_run(args.run)
    import jax
    import jax.numpy as jnp

    from liplax import bounds, certify
    from liplax.training import data, eval_model

    config = run.config
    p = config.p if args.p is None else args.p
    ds = data.load(config.dataset, args.data_dir)
    model = eval_model(run)
    upper = bounds.trivial_bound(model, run.input_shape, p=p)
    logits = jax.jit(lambda x: model(x))(jnp.asarray(ds.x_test))
    eps = list(args.eps) if args.eps else list(config.eps)
    acc = certify.certified_accuracy(logits, jnp.asarray(ds.y_test), upper,
                                     jnp.asarray([0.0, *eps], jnp.float32), p=p)
    out = {
        "run": str(args.run), "step": meta["step"], "dataset": ds.name,
        "p": "inf" if p == math.inf else p,
        "lipschitz_upper": float(upper.value), "kind": upper.kind,
        "accuracy_ties_as_errors": float(acc[0]),
        "certified_accuracy": {f"{e:g}": float(a) for e, a in zip(eps, acc[1:], strict=True)},
    }
    if args.lower:
        out["lower_bound"] = _lower(args, model, jnp.asarray(ds.x_test), p, out["lipschitz_upper"])
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.run} (step {out['step']}, {ds.name}, test set of {len(ds.y_test)}, "
              f"p={out['p']}): L ≤ {out['lipschitz_upper']:.6g} ({upper.kind})")
        print(f"{'eps':>8} {'certified accuracy':>20}")
        print(f"{0:8g} {out['accuracy_ties_as_errors']:20.4f}")
        for e, a in out["certified_accuracy"].items():
            print(f"{e:>8} {a:20.4f}")
        if args.lower:
            lo = out["lower_bound"]
            print(f"L ≥ {lo['value']:.6g} (attained, {lo['witness_kind']} witness re-checked in "
                  f"float64, saved to {lo['witness']}); tightness {lo['tightness']:.4f}")
    return 0


def cmd_bound(args: argparse.Namespace) -> int:
    run, meta = load_run(args.run)
    from liplax import bounds
    from liplax.training import eval_model

    p = run.config.p if args.p is None else args.p
    model = eval_model(run)
    rows = bounds.layer_bounds(model, run.input_shape, p=p)
    total = bounds.trivial_bound(model, run.input_shape, p=p)
    out = {
        "run": str(args.run), "step": meta["step"], "p": "inf" if p == math.inf else p,
        "layers": [{"layer": n, "value": float(b.value), "kind": b.kind} for n, b in rows],
        "trivial_bound": {"value": float(total.value), "kind": total.kind},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.run} (step {out['step']}, p={out['p']})")
    print(f"{'#':>3} {'layer':<20} {'bound':>12} {'kind':<9}")
    for i, r in enumerate(out["layers"]):
        print(f"{i:>3} {r['layer']:<20} {r['value']:12.6g} {r['kind']:<9}")
    print(f"{'':>3} {'product (trivial)':<20} {out['trivial_bound']['value']:12.6g} "
          f"{total.kind:<9}")
    return 0


def add_parser(sub) -> None:
    """Register ``certify`` and ``bound`` on an ``argparse`` subparsers object."""
    c = sub.add_parser("certify", help="certified accuracy of a trained run")
    c.add_argument("run", help="run folder (holding checkpoints/) or a checkpoint folder")
    c.add_argument("--eps", type=float, nargs="+", default=None, help="radii (default: config's)")
    c.add_argument("--p", type=p_arg, default=None, help="norm (default: the run's)")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--json", action="store_true")
    c.add_argument("--lower", action="store_true",
                   help="also search an attained lower bound and save its witness")
    c.add_argument("--lower-steps", type=int, default=200, help="ascent steps per stage")
    c.add_argument("--lower-restarts", type=int, default=8, help="power/pair search restarts")
    c.add_argument("--data-starts", type=int, default=16, help="local ascent starts from data")
    c.add_argument("--noise-starts", type=int, default=8,
                   help="local ascent starts uniform in [0, 1]^d")
    c.add_argument("--seed", type=int, default=0, help="seed of the lower-bound search")
    c.add_argument("--witness", default=None,
                   help="witness .npz path (default: lower_witness.npz in the run folder)")
    c.set_defaults(func=cmd_certify)

    b = sub.add_parser("bound", help="per-layer bound table with kinds")
    b.add_argument("run", help="run folder (holding checkpoints/) or a checkpoint folder")
    b.add_argument("--p", type=p_arg, default=None, help="norm (default: the run's)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bound)


__all__ = ["add_parser", "cmd_bound", "cmd_certify"]
