"""``liplax train``: train a named configuration (``--resume`` continues a run).

``liplax train --config NAME [--data digits|fashion-mnist|mnist] [--data-dir D] [--out DIR]
[--resume] [--seed S] [--set key=value ...] [--quiet] [--devices N]`` writes ``report.json``,
``training.png``, ``metrics.jsonl`` and checkpoints into ``--out``
(:func:`liplax.training.train`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from liplax.cli.common import CliError, enable_cache


def refuse_existing_out(out: Path, resume: bool) -> None:
    """The cheap checks of ``--out`` that :func:`liplax.training.train` repeats, before JAX loads.

    A file is not a folder; a folder with complete checkpoints (orbax names them by their step,
    unfinished ones carry a temporary suffix) is never overwritten without ``--resume``.
    """
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {str(out)!r}: exists and is not a folder")
    ckpt = out / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []
    if steps and not resume:
        raise FileExistsError(
            f"--out {str(out)!r} already holds checkpoints (steps {steps}); pass --resume to "
            f"continue that run or choose another --out"
        )


def cmd_train(args: argparse.Namespace) -> int:
    from liplax.training import config as configs

    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"dataset={args.data}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config = configs.get_config(args.config, overrides)
    out = args.out or str(Path("runs") / config.name)
    refuse_existing_out(Path(out), args.resume)
    cache = enable_cache()
    from liplax.training import train

    report = train(
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


def add_parser(sub) -> None:
    """Register ``train`` on an ``argparse`` subparsers object."""
    from liplax.training.config import CONFIGS

    t = sub.add_parser("train", help="train a configuration; report, plot and checkpoints")
    t.add_argument("--config", default="default", choices=sorted(CONFIGS),
                   help="named configuration (liplax/training/config.py)")
    t.add_argument("--data", choices=("digits", "fashion-mnist", "mnist"), default=None,
                   help="dataset (default: the config's)")
    t.add_argument("--data-dir", default=None, help="folder of MNIST-format IDX files")
    t.add_argument("--out", default=None, help="output folder (default runs/<config>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE",
                   help="override config fields (repeatable: --set a=1 --set b=2)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    t.add_argument("--devices", type=int, default=None,
                   help="local devices for data parallelism (default: all)")
    t.set_defaults(func=cmd_train)


__all__ = ["add_parser", "cmd_train", "refuse_existing_out"]
