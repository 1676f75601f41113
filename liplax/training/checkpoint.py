r"""Checkpoints of a training run: atomic orbax writes, verified reads, fallback past corruption.

A run's folder holds ``checkpoints/<step>/``, written by an orbax ``CheckpointManager`` with two
items: ``state`` (the pytree of arrays: parameters, power-iteration state, optimizer
state, step, PRNG key data) and ``meta`` (JSON: the config, the metric history, the data order's
seed and the library version). Orbax writes each step into a temporary folder and renames it
when complete, so a run killed mid-write leaves either the previous checkpoints or the new one,
never a half-written step that looks complete.

:meth:`CheckpointStore.restore_latest` reads the newest step and checks every restored array
against the expected shapes, dtypes and finiteness; a step that fails (truncated or corrupted
files, wrong structure) is reported by name, moved aside into ``corrupt/`` (never deleted:
nothing already saved is lost) and the previous step is tried. Only when no step can be read does
it raise :class:`CheckpointError`.

:func:`state_to_flat`/:func:`flat_to_state` give a :class:`~liplax.training.state.TrainState` the
plain ``{ordered name: array}`` form a checkpoint stores; :func:`load_run` rebuilds a trained run
from its folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from liplax.training.config import Config
from liplax.training.state import Run, TrainState, init_run

PyTree = Any


class CheckpointError(RuntimeError):
    """No checkpoint could be read (message names the folder and what failed)."""


class OutputError(OSError):
    """The output folder cannot hold the run (unwritable, not a folder, or not enough space)."""


def check_output_dir(out: str | os.PathLike, need_bytes: int) -> Path:
    """Make sure ``out`` is a writable folder with ``need_bytes`` free; raise OutputError if not.

    Called before training starts, so a bad ``--out`` fails in the first second, not at the
    first checkpoint. Writes and removes a probe file (permissions are checked by doing).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {str(path)!r}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {str(path)!r}: cannot create the output folder ({e})") from None
    if not path.is_dir():
        raise OutputError(f"--out {str(path)!r}: exists and is not a folder")
    probe = path / f".liplax-write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputError(f"--out {str(path)!r}: not writable ({e})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise OutputError(
            f"--out {str(path)!r}: {free / 2**20:.1f} MiB free, the run needs about "
            f"{need_bytes / 2**20:.1f} MiB (checkpoints, report and plot)"
        )
    return path


def tree_bytes(tree: PyTree) -> int:
    """Total bytes of the array leaves of ``tree``."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                        if not hasattr(x, "sharding") else
                        jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _check_restored(restored: PyTree, like: PyTree) -> None:
    want, want_def = jax.tree.flatten(like)
    got, got_def = jax.tree.flatten(restored)
    if want_def != got_def:
        raise CheckpointError(f"state has structure {got_def}, expected {want_def}")
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype:
            raise CheckpointError(
                f"leaf {i} has shape {tuple(g.shape)} {g.dtype}, "
                f"expected {tuple(w.shape)} {w.dtype}"
            )
        if np.issubdtype(g.dtype, np.floating) and not np.all(np.isfinite(np.asarray(g))):
            raise CheckpointError(f"leaf {i} holds NaN or infinite values")


class CheckpointStore:
    """Orbax checkpoints under ``folder/checkpoints``; see the module docstring.

    Args:
      folder: the run's output folder.
      keep: how many checkpoints to keep (older ones are removed after a newer one is complete).
    """

    def __init__(self, folder: str | os.PathLike, *, keep: int = 3):
        self.folder = Path(folder)
        self.directory = self.folder / "checkpoints"
        self.keep = int(keep)
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, enable_async_checkpointing=False,
        )
        return ocp.CheckpointManager(
            self.directory.absolute(), options=options, item_names=("state", "meta")
        )

    def steps(self) -> list[int]:
        """The complete checkpoints' steps, ascending."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Write checkpoint ``step`` (blocking; atomic: complete or absent)."""
        state = jax.device_get(state)
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, dict]:
        """Read checkpoint ``step`` shaped like ``like``; CheckpointError if it is unreadable."""
        try:
            out = self._manager.restore(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(like)), meta=ocp.args.JsonRestore()
                ),
            )
            state, meta = out["state"], out["meta"]
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure means this step is unusable
            raise CheckpointError(f"{type(e).__name__}: {e}") from e
        if not isinstance(meta, dict):
            raise CheckpointError(f"meta is {type(meta).__name__}, expected a JSON object")
        _check_restored(state, like)
        return state, meta

    def restore_latest(
        self, like: PyTree, *, on_skip: Callable[[str], None] | None = None
    ) -> tuple[int, PyTree, dict] | None:
        """The newest readable checkpoint as ``(step, state, meta)``; ``None`` if there is none.

        A step that cannot be read is reported (``on_skip``, default a warning naming its path
        and the error), moved to ``folder/corrupt/<step>-<time>`` and the previous one tried.
        """
        report = on_skip or (lambda msg: warnings.warn(msg, stacklevel=3))
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, like)
                return step, state, meta
            except CheckpointError as e:
                path = self.directory / str(step)
                aside = self.folder / "corrupt" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), str(aside))
                msg = (
                    f"checkpoint {str(path)!r} is unreadable ({e}); moved to {str(aside)!r}, "
                    f"falling back to the previous checkpoint"
                )
                failures.append(msg)
                report(msg)
                self._manager.close()
                self._manager = self._open()
        if failures:
            raise CheckpointError(
                f"no readable checkpoint in {str(self.directory)!r}: " + "; ".join(failures)
            )
        return None

    def close(self) -> None:
        self._manager.close()


# ----------------------------------------------------------------------------- a run's state


def _leafname(i: int, path) -> str:
    return f"{i:04d}_" + re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")


def state_to_flat(state: TrainState) -> dict[str, np.ndarray]:
    """The state as ``{ordered name: array}``, the form checkpoints store (plain folder names)."""
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {_leafname(i, path): np.asarray(x) for i, (path, x) in enumerate(leaves)}


def flat_to_state(flat: dict, like: TrainState) -> TrainState:
    """Inverse of :func:`state_to_flat` with ``like``'s structure."""
    treedef = jax.tree.structure(like)
    return jax.tree.unflatten(treedef, [jnp.asarray(flat[k]) for k in sorted(flat)])




def load_run(path: str | os.PathLike, *, step: int | None = None) -> tuple[Run, dict]:
    """Rebuild a trained model from a run folder (or its ``checkpoints/`` folder).

    Returns ``(run, meta)`` where ``run.state`` holds the newest readable checkpoint (or
    ``step``) and ``meta`` its JSON metadata (config, history, dataset description).
    """
    folder = Path(path)
    if folder.name == "checkpoints":
        folder = folder.parent
    elif folder.parent.name == "checkpoints" and folder.name.isdigit():
        step = int(folder.name) if step is None else step
        folder = folder.parent.parent
    if not (folder / "checkpoints").is_dir():
        raise CheckpointError(
            f"{str(path)!r}: not a liplax run folder (expected a 'checkpoints' folder inside)"
        )
    store = CheckpointStore(folder)
    steps = store.steps()
    if not steps:
        raise CheckpointError(f"{str(folder / 'checkpoints')!r} holds no complete checkpoint")
    # The config comes from the newest metadata; the state is then restored with its shapes.
    meta_step = steps[-1] if step is None else step
    meta = _read_meta(folder / "checkpoints" / str(meta_step))
    config = Config.from_dict(meta["config"])
    ds = meta["dataset"]
    run = init_run(config, tuple(ds["input_shape"]), int(ds["num_classes"]))
    like = state_to_flat(run.state)
    if step is None:
        found = store.restore_latest(like)
        if found is None:
            raise CheckpointError(f"{str(folder)!r} holds no readable checkpoint")
        _, flat, meta = found
    else:
        if step not in steps:
            raise CheckpointError(f"{str(folder)!r} has no checkpoint {step}; it has {steps}")
        flat, meta = store.restore(step, like)
    store.close()
    return run._replace(state=flat_to_state(flat, run.state)), meta


def _read_meta(step_dir: Path) -> dict:
    path = step_dir / "meta" / "metadata"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(path)!r}: unreadable checkpoint metadata ({e})") from None


__all__ = [
    "CheckpointError", "CheckpointStore", "OutputError", "atomic_write_text", "check_output_dir",
    "flat_to_state", "load_run", "state_to_flat", "tree_bytes",
]
