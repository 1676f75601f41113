"""A run's state: the model split for ``jit``, the optax optimizer, the pytree a step carries.

:func:`init_run` builds a configuration's model (:func:`liplax.training.models.build_model`) and
a fresh :class:`TrainState` (step, parameters, the rest of the NNX state, optimizer state, raw
PRNG key); :func:`eval_model` merges a state back into a model in evaluation mode. Checkpoints
store the state (:mod:`liplax.training.checkpoint`); the step is :mod:`liplax.training.step`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from liplax.training.config import Config
from liplax.training.models import build_model

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


__all__ = ["Run", "TrainState", "eval_model", "init_run", "make_optimizer"]
