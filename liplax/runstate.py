"""A run's state and model: the optax optimizer, the pytree checkpoints hold, loading a run.

:func:`init_run` builds a configuration's model (:func:`liplax.configs.build_model`) and a fresh
:class:`TrainState` (step, parameters, the rest of the NNX state, optimizer state, raw PRNG key);
:func:`state_to_flat`/:func:`flat_to_state` give it the plain ``{ordered name: array}`` form
checkpoints store; :func:`load_run` rebuilds a trained run from its folder. The training loop
is :func:`liplax.train.train` (which re-exports these names).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from liplax import losses
from liplax.checkpoint import CheckpointError, CheckpointStore
from liplax.configs import Config, build_model

PyTree = Any


class TrainState(NamedTuple):
    """The pytree a checkpoint holds (``key``: raw key data of the run's base PRNG key)."""

    step: jax.Array
    params: PyTree
    rest: PyTree
    opt_state: PyTree
    key: jax.Array


class Run(NamedTuple):
    """A model and its training state rebuilt from a config (see :func:`init_run`)."""

    config: Config
    graphdef: Any
    eval_graphdef: Any
    state: TrainState
    tx: optax.GradientTransformation
    input_shape: tuple[int, ...]
    num_classes: int


# ----------------------------------------------------------------------------- set-up


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """optax optimizer with linear warm-up then cosine decay of the learning rate to 0."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if config.lr_warmup else config.learning_rate,
        peak_value=config.learning_rate,
        warmup_steps=config.lr_warmup,
        decay_steps=max(config.steps, config.lr_warmup + 1),
        end_value=0.0,
    )
    if config.optimizer == "adam":
        if config.weight_decay:
            return optax.adamw(schedule, weight_decay=config.weight_decay)
        return optax.adam(schedule)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay), optax.sgd(schedule, momentum=0.9)
    )


def penalty_weight(config: Config, step: jax.Array) -> jax.Array:
    """λ(t) = λ·min(1, t / penalty_warmup) (λ from the start when the warm-up is 0)."""
    if config.penalty == "none":
        return jnp.zeros((), jnp.float32)
    lam = jnp.asarray(config.penalty_weight, jnp.float32)
    if config.penalty_warmup == 0:
        return lam
    return lam * jnp.minimum(1.0, step.astype(jnp.float32) / config.penalty_warmup)


def loss_function(config: Config) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The config's data loss with its parameters bound."""
    params = {
        "ce": {},
        "offset_ce": {"offset": config.offset, "temperature": config.temperature},
        "hinge": {"margin": config.margin},
        "hkr": {"alpha": config.alpha, "margin": config.margin},
    }[config.loss]
    return losses.get_loss(config.loss, **params)


def init_run(config: Config, input_shape, num_classes: int) -> Run:
    """Build the model, split it, and initialize the optimizer: a fresh training state."""
    key = jax.random.key(config.seed)
    model_key = jax.random.fold_in(key, 0)
    model = build_model(config, input_shape, num_classes, rngs=nnx.Rngs(params=model_key))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    tx = make_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        key=jax.random.key_data(key),
    )
    return Run(config, graphdef, eval_graphdef, state, tx, tuple(input_shape), int(num_classes))


def eval_model(run: Run, state: TrainState | None = None) -> nnx.Module:
    """The model of ``state`` (default: the run's) in evaluation mode (state frozen)."""
    st = run.state if state is None else state
    return nnx.merge(run.eval_graphdef, st.params, st.rest)


# ----------------------------------------------------------------------------- checkpoints form


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


# ----------------------------------------------------------------------------- loading runs


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
