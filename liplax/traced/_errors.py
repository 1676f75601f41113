"""Refusals of the traced bound: a ``ValueError`` naming the primitive and where it is.

The place is the innermost frame of the equation's traceback that is the user's code: frames
inside JAX, Flax and liplax are skipped (``jax._src.source_info_util.user_frames`` drops JAX's
own; this module drops the other two), so ``x * x`` in a module's ``__call__`` is reported at
that line, and a refusal inside ``nnx.Linear`` at the line that calls the layer.
"""

from __future__ import annotations

import os

from jax._src import source_info_util

_SKIP = tuple(
    os.sep + part + os.sep for part in ("flax", "liplax" + os.sep + "traced", "jax", "jaxlib")
)


def where(eqn) -> str:
    """``file:line (function)`` of the user's code that created ``eqn``, or ``<unknown>``."""
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is not None:
        try:
            frames = list(source_info_util.user_frames(tb))
        except (AttributeError, TypeError):  # private JAX API: fall back to its summary
            frames = []
        for frame in frames:
            if not any(s in frame.file_name for s in _SKIP):
                return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"
    try:
        return source_info_util.summarize(eqn.source_info) or "<unknown>"
    except (AttributeError, TypeError):
        return "<unknown>"


class TracedBoundError(ValueError):
    """An operation of the traced function that liplax cannot bound (a ``ValueError``)."""


def refuse(eqn, why: str) -> TracedBoundError:
    """The error for ``eqn``: ``lipschitz_bound: cannot bound <primitive> at <place>: <why>``."""
    return TracedBoundError(
        f"lipschitz_bound: cannot bound '{eqn.primitive.name}' at {where(eqn)}: {why}"
    )


def inside(eqn, thunk):
    """Run ``thunk`` (the walk of ``eqn``'s body); a refusal in it gets the call site added."""
    try:
        return thunk()
    except TracedBoundError as e:
        name = eqn.params.get("name", eqn.primitive.name)
        raise TracedBoundError(f"{e.args[0]} (inside '{name}' called at {where(eqn)})") from None
