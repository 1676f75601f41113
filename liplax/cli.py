"""The ``liplax`` command.

- ``liplax train --config NAME [--data digits|fashion-mnist|mnist] [--data-dir D] [--out DIR]
  [--resume] [--seed S] [--set key=value ...] [--quiet] [--devices N]``: train a configuration
  (:mod:`liplax.configs`), write ``report.json``, ``training.png``, ``metrics.jsonl`` and
  checkpoints into ``--out``.
- ``liplax certify RUN [--eps E ...] [--data-dir D] [--json]``: certified accuracy of a trained run
  on its test set from its certified trivial bound.
- ``liplax bound RUN [--p P] [--json]``: the per-layer bound table (value, kind) and the product.
- ``liplax sweep ...``: one bound operator over many kernels or checkpoints (see
  :mod:`liplax.sweep_cli`).
- ``liplax norms``: a report of every operator on a few dense and convolution layers, with the
  truth from the SVD of the materialized operator where it is small enough to build.
Errors (bad config, missing data, unreadable checkpoint, unwritable ``--out``) print one line
``liplax: error: ...`` and exit with status 2.

Latency: JAX, Flax and the bound modules are imported by the command that needs them, after
its arguments are checked, so ``liplax --help`` and refused arguments (a ``--out`` that holds a
run, a bad ``--set``) answer in a fraction of a second. Commands that compile turn on JAX's
persistent compilation cache first (:mod:`liplax.jaxcache`: ``$LIPLAX_CACHE_DIR``, default
``~/.cache/liplax/jax``, ``off`` to disable).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# JAX, Flax and the bound modules are imported inside the commands: ``liplax --help`` and
# refused arguments (an existing --out, a bad --set) answer without loading them.


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    import jax

    jax.block_until_ready(fn())  # compile
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    value = out[0] if isinstance(out, tuple) else out
    return float(value), time.perf_counter() - t0


def _materialized_norm(kernel, hw: tuple[int, int], padding: str) -> float:
    """σ₁ of the explicit operator (identity batch through the layer), float64 SVD."""
    import jax.numpy as jnp
    import numpy as np

    from liplax import conv

    d = hw[0] * hw[1] * kernel.shape[2]
    eye = jnp.eye(d, dtype=jnp.float32).reshape(d, *hw, kernel.shape[2])
    mat = np.asarray(conv.apply(kernel, eye, padding=padding), np.float64).reshape(d, -1)
    return float(np.linalg.norm(mat, 2))


def norms_report(seed: int = 0) -> int:
    """Print the operator report; exit code 1 if any bound contradicts the truth."""
    import jax
    import numpy as np

    from liplax import conv, linalg

    key = jax.random.key(seed)
    k_dense, k_small, k_big, k_pi = jax.random.split(key, 4)
    rows: list[tuple[str, str, str, float, float, float | None]] = []
    ok = True

    w = jax.random.normal(k_dense, (784, 256)) / 28.0
    truth = float(np.linalg.norm(np.asarray(w, np.float64), 2))
    dense_ops = [
        ("spectral_norm", "exact", lambda: linalg.spectral_norm(w)),
        ("gram_bound (6)", "upper", lambda: linalg.gram_bound(w)),
        ("power_iteration (20)", "estimate", lambda: linalg.power_iteration(w, key=k_pi)),
        ("norm_inf", "exact", lambda: linalg.norm_inf(w)),
    ]
    for name, kind, fn in dense_ops:
        v, t = _timed(fn)
        rows.append(("dense 784→256", name, kind, v, t, truth if "inf" not in name else None))

    for label, kk, shape, hw in [
        ("conv 3×3 16→16 @ 8×8", k_small, (3, 3, 16, 16), (8, 8)),
        ("conv 3×3 64→64 @ 32×32", k_big, (3, 3, 64, 64), (32, 32)),
    ]:
        kernel = jax.random.normal(kk, shape) / np.sqrt(9 * shape[2])
        small = hw[0] * hw[1] * shape[2] <= 1024
        truth_c = _materialized_norm(np.asarray(kernel), hw, "CIRCULAR") if small else None
        truth_s = _materialized_norm(np.asarray(kernel), hw, "SAME") if small else None
        ops = [
            ("exact_spectral_norm", "exact", "CIRCULAR",
             lambda k=kernel, hw=hw: conv.exact_spectral_norm(k, hw)),
            ("gram_bound CIRCULAR", "upper", "CIRCULAR",
             lambda k=kernel, hw=hw: conv.gram_bound(k, hw, padding="CIRCULAR")),
            ("gram_bound SAME", "upper", "SAME",
             lambda k=kernel, hw=hw: conv.gram_bound(k, hw, padding="SAME")),
            ("power_iteration SAME (50)", "estimate", "SAME",
             lambda k=kernel, hw=hw: conv.power_iteration(k, hw, padding="SAME", key=k_pi)),
        ]
        for name, kind, pad, fn in ops:
            v, t = _timed(fn)
            ref = truth_c if pad == "CIRCULAR" else truth_s
            rows.append((label, name, kind, v, t, ref))

    print(f"liplax bound report (jax {jax.__version__}, {jax.default_backend()})\n")
    head = f"{'layer':<24} {'operator':<26} {'kind':<9} {'value':>10} {'truth':>10} {'ms':>8}"
    print(head)
    print("-" * len(head))
    for layer, name, kind, v, t, ref in rows:
        mark = ""
        if ref is not None:
            if kind == "upper" and v < ref:
                ok, mark = False, "  BELOW TRUTH"
            if kind == "estimate" and v > ref * (1 + 1e-5):
                ok, mark = False, "  ABOVE TRUTH"
        ref_s = f"{ref:10.5f}" if ref is not None else f"{'-':>10}"
        print(f"{layer:<24} {name:<26} {kind:<9} {v:10.5f} {ref_s} {1e3 * t:8.2f}{mark}")
    print(
        "\nexact: the norm itself; upper: never below it (rounding included); "
        "estimate: may be below it.\ntruth: SVD of the materialized operator (float64), "
        "shown where it is small enough to build."
    )
    return 0 if ok else 1


def _p_arg(value: str) -> float:
    if value in ("inf", "Inf", "INF"):
        return math.inf
    try:
        p = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"p must be 1, 2 or inf, got {value!r}") from None
    if p not in (1.0, 2.0):
        raise argparse.ArgumentTypeError(f"p must be 1, 2 or inf, got {value!r}")
    return p


def _refuse_existing_out(out: Path, resume: bool) -> None:
    """The cheap checks of ``--out`` that :func:`liplax.train.train` repeats, made before JAX loads.

    A file is not a folder; a folder with complete checkpoints (orbax names them by their step,
    unfinished ones carry a temporary suffix) is never overwritten without ``--resume``.
    """
    if out.exists() and not out.is_dir():
        raise _CliError(f"--out {str(out)!r}: exists and is not a folder")
    ckpt = out / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []
    if steps and not resume:
        raise FileExistsError(
            f"--out {str(out)!r} already holds checkpoints (steps {steps}); pass --resume to "
            f"continue that run or choose another --out"
        )


class _CliError(OSError):
    """A refused argument found before the library loads (same message as the library's)."""


def cmd_train(args: argparse.Namespace) -> int:
    from liplax import configs

    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"dataset={args.data}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config = configs.get_config(args.config, overrides)
    out = args.out or str(Path("runs") / config.name)
    _refuse_existing_out(Path(out), args.resume)
    cache = _enable_cache()
    from liplax import train

    report = train.train(
        config, out, data_dir=args.data_dir, resume=args.resume, quiet=args.quiet,
        devices=args.devices,
    )
    if not args.quiet:
        cert = ", ".join(f"ε={e}: {a:.3f}" for e, a in report["certified_accuracy"].items())
        print(
            f"{config.name} on {report['dataset']}: clean accuracy {report['clean_accuracy']:.4f}"
            f"\n  Lipschitz ({report['upper_kind']}) {report['lipschitz_upper']:.5g}, lower bound "
            f"{report['lipschitz_lower']:.5g}, tightness {report['tightness']:.4f}"
            f"\n  certified accuracy ({'ℓ∞' if config.p == math.inf else 'ℓ2'}): {cert}"
            f"\n  {report['steps']} steps in {report['seconds']:.1f} s; written to {out}/ "
            f"(report.json, training.png, metrics.jsonl, checkpoints/)"
            + (f"\n  compilation cache: {cache}" if cache is not None else "")
        )
    return 0


def _enable_cache() -> Path | None:
    from liplax.jaxcache import enable_compilation_cache

    return enable_compilation_cache()


def _load(args: argparse.Namespace):
    run = Path(args.run)
    if not run.exists():
        raise _CliError(  # the message train.load_run gives, before JAX loads
            f"{args.run!r}: not a liplax run folder (expected a 'checkpoints' folder inside)"
        )
    _enable_cache()
    from liplax import train

    return train.load_run(args.run)


def cmd_certify(args: argparse.Namespace) -> int:
    run, meta = _load(args)
    import jax
    import jax.numpy as jnp

    from liplax import bounds, certify, data
    from liplax.train import eval_model

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
    run, meta = _load(args)
    from liplax import bounds
    from liplax.train import eval_model

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


def build_parser() -> argparse.ArgumentParser:
    """The ``liplax`` argument parser (subcommands train, certify, bound, sweep, norms)."""
    from liplax.configs import CONFIGS

    parser = argparse.ArgumentParser(prog="liplax", description="Lipschitz bounds you can trust.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a configuration; report, plot and checkpoints")
    t.add_argument("--config", default="default", choices=sorted(CONFIGS),
                   help="named configuration (liplax/configs.py)")
    t.add_argument("--data", choices=("digits", "fashion-mnist", "mnist"), default=None,
                   help="dataset (default: the config's)")
    t.add_argument("--data-dir", default=None, help="folder of MNIST-format IDX files")
    t.add_argument("--out", default=None, help="output folder (default runs/<config>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
    t.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    t.add_argument("--devices", type=int, default=None,
                   help="local devices for data parallelism (default: all)")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("certify", help="certified accuracy of a trained run")
    c.add_argument("run", help="run folder (holding checkpoints/) or a checkpoint folder")
    c.add_argument("--eps", type=float, nargs="+", default=None, help="radii (default: config's)")
    c.add_argument("--p", type=_p_arg, default=None, help="norm (default: the run's)")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_certify)

    b = sub.add_parser("bound", help="per-layer bound table with kinds")
    b.add_argument("run", help="run folder (holding checkpoints/) or a checkpoint folder")
    b.add_argument("--p", type=_p_arg, default=None, help="norm (default: the run's)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bound)

    from liplax import sweep_cli

    sweep_cli.add_parser(sub)

    n = sub.add_parser("norms", help="every operator on a few layers, against the truth")
    n.add_argument("--seed", type=int, default=0)
    n.set_defaults(func=_cmd_norms)
    return parser


def _cmd_norms(args: argparse.Namespace) -> int:
    _enable_cache()
    return norms_report(args.seed)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (one line, status 2), not a bug (a traceback).

    The library's own error classes count only once their module is loaded: an error of a
    module that was never imported cannot have been raised.
    """
    errors: list[type[BaseException]] = [
        ValueError, TypeError, FileExistsError, FloatingPointError, _CliError,
    ]
    for module, names in (("liplax.checkpoint", ("CheckpointError", "OutputError")),
                          ("liplax.data", ("DataError",))):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors += [getattr(loaded, n) for n in names]
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``liplax`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"liplax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
