r"""A chunk of training steps: the objective, its penalty weight, the batches.

:func:`make_chunk` runs ``num_steps`` optimizer steps, one compiled step per call (no host
round trip inside a chunk; why not ``lax.scan``: see :func:`make_chunk`). The batches come
from :func:`chunk_batch_indices`, a pure function of (seed, step) equal to
:func:`liplax.training.data.batch_indices` step by step, so a resumed run replays exactly the
computation of an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from liplax import bounds
from liplax.training import data, gap, losses
from liplax.training.config import Config
from liplax.training.state import Run, TrainState

#: the per-step metrics a chunk averages.
METRICS = ("loss", "penalty", "objective", "train_accuracy")


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


def make_chunk(run: Run, n_train: int, mesh: Mesh | None):
    """chunk(state, x_all, y_all, num_steps) → (state, metrics averaged over the chunk).

    Each step minimizes ``loss(f(x), y) + λ(t)·penalty(f)`` (:func:`loss_function`,
    :func:`penalty_weight`, :func:`liplax.bounds.trivial_bound_penalty`) on the batch
    :func:`chunk_batch_indices` draws. The chunk's batch indices are drawn by one jitted call;
    each step is then one call of one compiled step (state and running metric sums donated,
    the batch gathered on device from the chunk's index table, nothing read back to the host),
    so the host only enqueues work. With a ``mesh`` the batch is sharded over its ``"data"``
    axis. With ``config.micro_batches`` = m > 1 the model runs on m slices of the batch joined
    at the logits (the same objective; faster convolutions on CPU, docs/design.md §training).

    Why not ``lax.scan`` over the steps: XLA's CPU backend runs the convolutions of a loop
    body several times slower than the same convolutions outside a loop (15× for the 4-conv
    CNN of ``fashion-cnn4``, ``benchmarks/train_step.py``), while one dispatch per step costs
    well under a millisecond. The computation of each step is unchanged, so a resumed run still
    replays an uninterrupted one (docs/design.md §training).
    """
    config, graphdef, tx = run.config, run.graphdef, run.tx
    loss_fn = loss_function(config)
    shape = run.input_shape
    batch_sharding = None if mesh is None else NamedSharding(mesh, P("data"))

    def forward(model, x):
        if config.micro_batches == 1:
            return model(x)
        # config.micro_batches: independent slices (each its own chain of operations, which
        # XLA's CPU backend runs faster per example and on separate cores), joined at the logits.
        return jnp.concatenate([model(xs) for xs in jnp.split(x, config.micro_batches)])

    def one_step(state: TrainState, x_all, y_all, idx):
        x, y = x_all[idx], y_all[idx]
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)
        lam = penalty_weight(config, state.step)

        def objective(params):
            # Fresh Variable objects at this trace level, so the penalty may move the state.
            model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, state.rest))
            logits = forward(model, x)
            data_loss = loss_fn(logits, y)
            if config.penalty == "none":
                pen = jnp.zeros((), jnp.float32)
            else:
                target = config.penalty_target if config.penalty == "hinge" else None
                pen = bounds.trivial_bound_penalty(
                    model, shape, p=config.p, kind=config.penalty, target=target,
                    grouped=config.grouped,
                )
            total = data_loss + lam * pen
            if config.gap_weight > 0:  # the gap penalty (liplax/training/gap.py)
                g = gap.gap_penalty(config, model, pen, x)
                total, pen = total + gap.gap_weight(config, state.step) * g, (pen, g)
            rest = nnx.split(model, nnx.Param, ...)[2]
            acc = jnp.mean(jnp.argmax(logits, -1) == y)
            return total, (data_loss, pen, acc, rest)

        (total, (data_loss, pen, acc, rest)), grads = jax.value_and_grad(
            objective, has_aux=True
        )(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, rest, opt_state, state.key)
        if config.gap_weight > 0:
            pen, gap_value = pen
        metrics = {"loss": data_loss, "penalty": pen, "objective": total, "train_accuracy": acc}
        if config.gap_weight > 0:
            metrics["gap"] = gap_value
        return new, metrics

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(state, sums, x_all, y_all, batches, t):
        state, metrics = one_step(state, x_all, y_all, batches[t])
        return state, jax.tree.map(jnp.add, sums, metrics)

    @functools.partial(jax.jit, static_argnums=1)
    def indices(state, num_steps: int):
        data_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 1)
        return chunk_batch_indices(data_key, n_train, config.batch_size, state.step, num_steps)

    def chunk(state, x_all, y_all, num_steps: int):
        num_steps = int(num_steps)
        if num_steps < 1:
            raise ValueError(f"chunk: num_steps must be ≥ 1, got {num_steps}")
        batches = indices(state, num_steps)
        names = METRICS + (("gap",) if config.gap_weight > 0 else ())
        sums = {k: jnp.zeros((), jnp.float32) for k in names}  # distinct buffers (donated)
        for t in range(num_steps):
            state, sums = step(state, sums, x_all, y_all, batches, jnp.int32(t))
        return state, jax.tree.map(lambda v: v / num_steps, sums)

    return chunk


def chunk_batch_indices(
    key: jax.Array, n: int, batch_size: int, start: jax.Array, num_steps: int
) -> jax.Array:
    """``(num_steps, batch_size)`` indices: row t is ``data.batch_indices(key, n, bs, start+t)``.

    The epoch permutations the chunk touches (at most num_steps // S + 2 of them, S the steps
    per epoch: a static count) are drawn once, not once per step: a permutation sorts n keys,
    which at n = 60000 costs more than a small model's training step.
    """
    spe = data.steps_per_epoch(n, batch_size)
    first_epoch = start // spe
    epochs = first_epoch + jnp.arange(num_steps // spe + 2)
    perms = jax.vmap(lambda e: data.epoch_permutation(key, n, e))(epochs)
    steps = start + jnp.arange(num_steps)
    cols = (steps % spe)[:, None] * batch_size + jnp.arange(batch_size)
    return perms.reshape(-1)[(steps // spe - first_epoch)[:, None] * n + cols]


__all__ = ["chunk_batch_indices", "loss_function", "make_chunk", "penalty_weight"]
