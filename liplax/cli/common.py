"""What the ``liplax`` subcommands share: the refused-argument error, the cache, ``--p``, runs.

Nothing here imports JAX at module level: the parser is built and arguments are refused
without it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class CliError(OSError):
    """A refused argument found before the library loads (same message as the library's)."""


def enable_cache() -> Path | None:
    """JAX's persistent compilation cache (:mod:`liplax.jaxcache`), before anything compiles."""
    from liplax.jaxcache import enable_compilation_cache

    return enable_compilation_cache()


def p_arg(value: str) -> float:
    """``--p``: 1, 2 or inf (argparse type)."""
    if value in ("inf", "Inf", "INF"):
        return math.inf
    try:
        p = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"p must be 1, 2 or inf, got {value!r}") from None
    if p not in (1.0, 2.0):
        raise argparse.ArgumentTypeError(f"p must be 1, 2 or inf, got {value!r}")
    return p


def load_run(path: str):
    """The trained run in folder ``path`` and its metadata, refusing a missing one before JAX."""
    if not Path(path).exists():
        raise CliError(  # the message training.load_run gives, before JAX loads
            f"{path!r}: not a liplax run folder (expected a 'checkpoints' folder inside)"
        )
    enable_cache()
    from liplax.training import load_run as load

    return load(path)


__all__ = ["CliError", "enable_cache", "load_run", "p_arg"]
