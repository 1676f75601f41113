"""Reading the kernels ``liplax sweep`` sweeps: ``.npy``/``.npz`` files and orbax checkpoints.

See :mod:`liplax.cli.sweep` for the formats; this module turns paths into :class:`Entry` stacks
of one shape each, naming the file in every error (:class:`SweepInputError`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class SweepInputError(ValueError):
    """Bad input to ``liplax sweep``: reported on stderr with exit code 2."""


@dataclass(frozen=True)
class Entry:
    """Kernels from one array: ``stacked`` (B, …) with B kernels of one shape."""

    source: str
    name: str
    stacked: np.ndarray
    was_stacked: bool


# --------------------------------------------------------------------------------------------
# Reading kernels.
# --------------------------------------------------------------------------------------------


def _as_entry(source: str, name: str, arr: np.ndarray, ranks: tuple[int, ...]) -> Entry | None:
    if arr.ndim not in ranks or not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return None
    if arr.ndim in (2, 4):
        return Entry(source, name, arr[None], False)
    return Entry(source, name, arr, True)


def _checkpoint_dirs(root: Path) -> list[Path]:
    """Folders below ``root`` (inclusive) holding an orbax pytree item (a ``_METADATA`` file)."""
    found = [p.parent for p in root.rglob("_METADATA")]

    def natural(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p.relative_to(root)))]

    return sorted(set(found), key=natural)


def _key_name(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return "/".join(parts)


_OPTIMIZER_LEAF = re.compile(r"(^|[/_])(opt_state|mu|nu)([/_]|$)")


def is_optimizer_leaf(name: str) -> bool:
    """Whether a checkpoint leaf name is optimizer state (``opt_state``, Adam's ``mu``/``nu``)."""
    return _OPTIMIZER_LEAF.search(name) is not None


def _read_checkpoints(root: Path, note, optimizer_state: bool = False) -> list[Entry]:
    import jax
    import orbax.checkpoint as ocp  # a dependency of liplax; imported only when needed

    dirs = _checkpoint_dirs(root)
    if not dirs:
        raise SweepInputError(
            f"{root}: a directory must hold orbax pytree checkpoints (folders with a _METADATA "
            "file, e.g. <step>/<item> of a CheckpointManager); found none"
        )
    entries, skipped = [], 0
    for d in dirs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # orbax warns when restoring without a target
            tree = ocp.PyTreeCheckpointer().restore(d.resolve())
        rel = d.relative_to(root).as_posix()
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            arr = np.asarray(leaf) if hasattr(leaf, "shape") else None
            if arr is None:
                continue
            name = "/".join(s for s in (rel if rel != "." else "", _key_name(path)) if s)
            if not optimizer_state and is_optimizer_leaf(_key_name(path)):
                skipped += 1
                continue
            entry = _as_entry(str(root), name, arr, (2, 4))
            if entry is not None:
                entries.append(entry)
    note(f"{root}: {len(dirs)} checkpoint item(s), {len(entries)} kernel(s) of rank 2 or 4"
         + (f" ({skipped} optimizer-state leaves left out; --optimizer-state keeps them)"
            if skipped else ""))
    return entries


def read_inputs(paths, note, *, optimizer_state: bool = False) -> list[Entry]:
    """All kernels of ``paths`` (see the module docstring); SweepInputError naming a bad file.

    ``optimizer_state``: also read checkpoint leaves that are optimizer state (default: not).
    """
    entries: list[Entry] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SweepInputError(f"{raw}: no such file or directory")
        try:
            found = _read_one(path, raw, note, optimizer_state)
        except (OSError, ValueError) as err:
            if isinstance(err, SweepInputError):
                raise
            raise SweepInputError(f"{raw}: cannot be read ({type(err).__name__}: {err})") from err
        if not found:
            raise SweepInputError(
                f"{raw}: holds no float array of usable rank (2: dense (in, out); 4: conv HWIO; "
                "3 or 5: a stack of those in .npy/.npz)"
            )
        entries.extend(found)
    return entries


def _read_one(path: Path, raw: str, note, optimizer_state: bool) -> list[Entry]:
    """The kernels of one input path (a .npy/.npz file or a checkpoint directory)."""
    if path.is_dir():
        return _read_checkpoints(path, note, optimizer_state)
    if path.suffix == ".npy":
        entry = _as_entry(str(path), path.stem, np.load(path, allow_pickle=False), (2, 3, 4, 5))
        return [] if entry is None else [entry]
    if path.suffix != ".npz":
        raise SweepInputError(
            f"{raw}: expected a .npy or .npz file or an orbax checkpoint directory"
        )
    found = []
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            entry = _as_entry(str(path), key, z[key], (2, 3, 4, 5))
            if entry is None:
                note(f"{path}: skipping {key!r} (shape {z[key].shape}, {z[key].dtype}): "
                     "not a float array of rank 2-5")
            else:
                found.append(entry)
    return found
