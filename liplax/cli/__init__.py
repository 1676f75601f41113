"""The ``liplax`` command (``python -m liplax.cli`` runs it too).

One module per subcommand group, each with ``add_parser(subparsers)``:

- :mod:`liplax.cli.train`: ``liplax train`` (``--resume`` continues a run);
- :mod:`liplax.cli.certify`: ``liplax certify`` and ``liplax bound`` on a trained run;
- :mod:`liplax.cli.sweep` (inputs read by :mod:`liplax.cli.sweep_inputs`): ``liplax sweep``, one
  bound operator over many kernels or checkpoints;
- :mod:`liplax.cli.norms`: ``liplax norms``, every operator against the truth.

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
import sys
from collections.abc import Sequence

from liplax.cli import certify, norms, sweep, train
from liplax.cli.common import CliError

# JAX, Flax and the bound modules are imported inside the commands: ``liplax --help`` and
# refused arguments (an existing --out, a bad --set) answer without loading them.


def build_parser() -> argparse.ArgumentParser:
    """The ``liplax`` argument parser (subcommands train, certify, bound, sweep, norms)."""
    parser = argparse.ArgumentParser(prog="liplax", description="Lipschitz bounds you can trust.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, certify, sweep, norms):
        group.add_parser(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (one line, status 2), not a bug (a traceback).

    The library's own error classes count only once their module is loaded: an error of a
    module that was never imported cannot have been raised.
    """
    errors: list[type[BaseException]] = [
        ValueError, TypeError, FileExistsError, FloatingPointError, CliError,
    ]
    for module, names in (("liplax.training.checkpoint", ("CheckpointError", "OutputError")),
                          ("liplax.training.data", ("DataError",))):
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


__all__ = ["build_parser", "main"]
