"""``liplax certify`` and ``liplax bound``: certificates and the bound table of a trained run.

- ``liplax certify RUN [--eps E ...] [--p P] [--data-dir D] [--json]``: certified accuracy of the
  run on its test set from its certified trivial bound (:mod:`liplax.certify`).
- ``liplax bound RUN [--p P] [--json]``: the per-layer bound table (value, kind) and the product.
"""

from __future__ import annotations

import argparse
import json
import math

from liplax.cli.common import load_run, p_arg


def cmd_certify(args: argparse.Namespace) -> int:
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
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.run} (step {out['step']}, {ds.name}, test set of {len(ds.y_test)}, "
              f"p={out['p']}): L ≤ {out['lipschitz_upper']:.6g} ({upper.kind})")
        print(f"{'eps':>8} {'certified accuracy':>20}")
        print(f"{0:8g} {out['accuracy_ties_as_errors']:20.4f}")
        for e, a in out["certified_accuracy"].items():
            print(f"{e:>8} {a:20.4f}")
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
    c.set_defaults(func=cmd_certify)

    b = sub.add_parser("bound", help="per-layer bound table with kinds")
    b.add_argument("run", help="run folder (holding checkpoints/) or a checkpoint folder")
    b.add_argument("--p", type=p_arg, default=None, help="norm (default: the run's)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bound)


__all__ = ["add_parser", "cmd_bound", "cmd_certify"]
