r"""The training loop: optax over NNX models, the trivial-bound penalty, evaluation, checkpoints.

:func:`train` runs one configuration (:class:`liplax.training.config.Config`) end to end:

1. **Objective.** Each step minimizes ``loss(f(x), y) + λ(t)·penalty(f)`` where ``loss`` is a
   margin loss of :mod:`liplax.training.losses` and ``penalty`` the trivial-bound penalty
   (:func:`liplax.bounds.trivial_bound_penalty`, fast path: one warm power-iteration step per layer
   and step, state moved in training mode), with λ ramped linearly from 0 over ``penalty_warmup``
   steps. The optimizer is optax (adam or sgd, warm-up + cosine decay).
2. **Steps in chunks** (:mod:`liplax.training.step`). ``log_every`` steps are enqueued as
   calls of one compiled step (no host round trip until the chunk's metrics are read; no
   ``lax.scan``, whose loop body XLA's CPU backend runs slowly for convolutions); batches are
   drawn on device by :func:`liplax.training.data.batch_indices`, a
   pure function of (seed, step). The data order
   is therefore part of the state that a checkpoint restores, and a resumed run replays exactly
   the computation of an uninterrupted one.
3. **Data parallel.** With several local devices the batch is sharded over a ``"data"`` mesh axis
   and the state replicated (``NamedSharding``); XLA's SPMD partitioner inserts the gradient
   all-reduce. The same code runs on one device.
4. **Evaluation** (:mod:`liplax.training.evaluation`; every ``eval_every`` steps and at the end,
   never moving any state): clean accuracy, the certified trivial bound (``upper``: product of
   sound layer bounds), the best empirical lower bound (exact local Jacobian norms at the origin
   and data points, and gradient ascent :func:`liplax.certify.lipschitz_lower_bound`), their
   ratio (tightness) and certified accuracy at each ε.
5. **Checkpoints** (:mod:`liplax.training.checkpoint`) every ``checkpoint_every`` steps and at
   the end: parameters, power-iteration and optimizer state, step, PRNG key, metric history.
   ``resume=True`` continues from the newest readable checkpoint and reaches the same final
   parameters as an uninterrupted run with the same seed.

Outputs in ``out_dir`` (:mod:`liplax.training.outputs`): ``report.json``, ``training.png``,
``metrics.jsonl``, ``checkpoints/``.

:func:`fit` is the small loop of the experiments: Adam on any ``loss_fn(model, key, data)`` of an
NNX model, all steps in one ``nnx.scan``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from liplax.training import data
from liplax.training.checkpoint import (
    CheckpointStore,
    atomic_write_text,
    check_output_dir,
    flat_to_state,
    state_to_flat,
    tree_bytes,
)
from liplax.training.config import Config
from liplax.training.evaluation import layer_table, make_evaluator
from liplax.training.outputs import (
    Progress,
    Stages,
    finished_report,
    plot_history,
    run_meta,
    run_report,
)
from liplax.training.state import eval_model, init_run
from liplax.training.step import make_chunk

# ----------------------------------------------------------------------------- the driver


def _mesh(devices: int | None, batch_size: int) -> Mesh | None:
    available = jax.local_device_count()
    n = available if devices is None else int(devices)
    if not 1 <= n <= available:
        raise ValueError(f"devices must be in [1, {available}] (local devices), got {devices!r}")
    if n == 1:
        return None
    if batch_size % n:
        raise ValueError(
            f"batch_size={batch_size} must be divisible by the number of devices ({n}) for "
            f"data-parallel training"
        )
    return jax.make_mesh(
        (n,), ("data",), axis_types=(AxisType.Auto,), devices=jax.local_devices()[:n]
    )


def _check_finite(metrics: dict, step: int, n: int, store: CheckpointStore, out: Path) -> None:
    """Stop a diverged run (a non-finite loss or bound) naming the steps and the last checkpoint."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        saved = store.steps()
        raise FloatingPointError(
            f"training diverged in steps {step + 1}-{step + n}: {bad}; the last checkpoint is "
            f"step {saved[-1] if saved else 'none'} in {str(out)!r} (lower learning_rate or "
            f"penalty_weight with --set)"
        )


def train(
    config: Config,
    out_dir: str | os.PathLike,
    *,
    dataset: data.Dataset | None = None,
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
    devices: int | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train ``config`` into ``out_dir`` and return the report (also written as report.json).

    Args:
      config: the run's configuration.
      out_dir: output folder (checked writable with room to spare before anything starts).
      dataset: the data (default: ``liplax.training.data.load(config.dataset, data_dir)``).
      resume: continue from the newest readable checkpoint in ``out_dir``. Without it, a folder
        that already holds checkpoints is refused (nothing is overwritten). A finished run
        (its last checkpoint at ``config.steps`` and its ``report.json`` written) is returned
        as it is: nothing is re-evaluated or rewritten.
      quiet: no progress bar or stage lines (metrics still go to ``metrics.jsonl``).
      devices: number of local devices for data parallelism (default: all).
      stop_after: stop (after checkpointing) once this many steps are done, without the final
        evaluation: for tests of resumption; ``None`` runs to ``config.steps``.
    Returns:
      the report dict (keys :data:`liplax.training.outputs.REPORT_KEYS` and more). ``seconds``
      is the wall time of the whole run, summed over the sessions of a resumed run (each
      checkpoint records the time so far); ``train_seconds`` the time spent in training steps.
    """
    t_start = time.perf_counter()
    earlier = 0.0  # wall seconds of the sessions before a resume, up to their last checkpoint
    dataset = dataset if dataset is not None else data.load(config.dataset, data_dir)
    out = Path(out_dir)
    run = init_run(config, dataset.input_shape, dataset.num_classes)
    need = 3 * (config.keep_checkpoints + 1) * tree_bytes(run.state) + 8 * 2**20
    check_output_dir(out, need)
    store = CheckpointStore(out, keep=config.keep_checkpoints)
    progress_log = out / "metrics.jsonl"
    history: list[dict] = []
    state = run.state
    flat_like = state_to_flat(state)

    existing = store.steps()
    if existing and not resume:
        raise FileExistsError(
            f"--out {str(out)!r} already holds checkpoints (steps {existing}); pass --resume to "
            f"continue that run or choose another --out"
        )
    if resume:
        found = store.restore_latest(flat_like)  # warns (UserWarning) for each unreadable step
        if found is not None:
            step0, flat, meta = found
            saved = Config.from_dict(meta["config"])
            if saved != config:
                diff = {
                    f.name: (getattr(saved, f.name), getattr(config, f.name))
                    for f in dataclasses.fields(Config)
                    if getattr(saved, f.name) != getattr(config, f.name)
                }
                raise ValueError(
                    f"--resume: the checkpoint in {str(out)!r} was made with a different config "
                    f"(saved, requested): {diff}"
                )
            state = flat_to_state(flat, state)
            history = [h for h in meta["history"] if h["step"] <= step0]
            earlier = float(meta.get("elapsed_seconds", 0.0))
            finished = finished_report(out, step0, config)
            if finished is not None:
                store.close()
                if not quiet:
                    print(f"liplax: {str(out)!r} is a finished run ({step0} steps); its "
                          f"report.json is unchanged", file=sys.stderr)
                return finished
    atomic_write_text(progress_log, "".join(json.dumps(h) + "\n" for h in history))

    mesh = _mesh(devices, config.batch_size)
    x_train = jnp.asarray(dataset.x_train)
    y_train = jnp.asarray(dataset.y_train, jnp.int32)
    if mesh is not None:
        replicated = NamedSharding(mesh, P())
        state, x_train, y_train = jax.device_put((state, x_train, y_train), replicated)
    chunk = make_chunk(run, len(dataset.y_train), mesh)
    evaluate = make_evaluator(run)
    x_test = jnp.asarray(dataset.x_test)
    y_test = jnp.asarray(dataset.y_test, jnp.int32)
    x_eval, y_eval = x_test[: config.eval_examples], y_test[: config.eval_examples]
    eval_key = jax.random.fold_in(jax.random.key(config.seed), 2)

    step = int(state.step)
    last = config.steps if stop_after is None else min(config.steps, int(stop_after))
    bar = Progress(config.steps, initial=step, quiet=quiet, desc=config.name)
    last_cert: dict[str, str] = {}
    train_seconds = sum(h.get("chunk_seconds", 0.0) for h in history)
    try:
        while step < last:
            n = min(config.log_every - step % config.log_every, last - step)
            t0 = time.perf_counter()
            state, metrics = chunk(state, x_train, y_train, n)
            metrics = {k: float(v) for k, v in metrics.items()}
            _check_finite(metrics, step, n, store, out)
            dt = time.perf_counter() - t0
            train_seconds += dt
            step += n
            entry = {"step": step, **metrics, "chunk_seconds": round(dt, 4)}
            if step % config.eval_every == 0 and step < config.steps:
                ev = evaluate(state, x_eval, y_eval, jax.random.fold_in(eval_key, step))
                entry.update({k: v for k, v in ev.items() if not k.startswith("_")})
                _check_finite(entry, step - n, n, store, out)
            history.append(entry)
            with open(progress_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            postfix = {"loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['train_accuracy']:.3f}"}
            if config.penalty == "log":  # the penalty's warm power-iteration estimate
                postfix["L_est"] = f"{math.exp(metrics['penalty']):.3g}"
            if "lipschitz_upper" in entry:  # kept until the next evaluation replaces it
                last_cert = {"L_cert": f"{entry['lipschitz_upper']:.3g}",
                             "tight": f"{entry['tightness']:.3f}"}
            bar.update(n, {**postfix, **last_cert})
            if step % config.checkpoint_every == 0 or step == last:
                elapsed = earlier + time.perf_counter() - t_start
                store.save(step, state_to_flat(state),
                           run_meta(config, history, step, dataset, elapsed))
    finally:
        bar.close()
    if step < config.steps:  # stopped early on request
        store.close()
        return {"steps": step, "stopped": True}

    stage = Stages(quiet)
    with stage(f"certified bound, lower-bound search and accuracy on {len(y_test)} test examples"):
        final = evaluate(state, x_test, y_test, jax.random.fold_in(eval_key, config.steps))
    final.pop("_witness")
    layer_bounds, gains = final.pop("_layer_bounds"), final.pop("_gains")
    _check_finite(final, step - 1, 1, store, out)
    with stage("per-layer bounds and gains"):  # computed by the evaluation: no compilation
        final["layer_bounds"] = layer_table(eval_model(run, state), layer_bounds, gains)
    final["devices"] = 1 if mesh is None else mesh.size
    history_final = {"step": config.steps, "final": True, **{k: v for k, v in final.items()
                                                             if k != "layer_bounds"}}
    history = [h for h in history if not h.get("final")] + [history_final]
    report = run_report(run, final, history, dataset, earlier + time.perf_counter() - t_start, step)
    report["train_seconds"] = round(train_seconds, 3)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    store.close()
    with stage("training.png"):
        plot_history(history, out / "training.png", title=f"{config.name} on {dataset.name}",
                     layers=report["layer_bounds"])
    return report


# ----------------------------------------------------------------------------- the small loop


@functools.cache
def _adam(lr: float) -> optax.GradientTransformation:
    return optax.adam(lr)  # one object per rate: equal optimizers, one compilation


@functools.cache
def _fit_loop(loss_fn: Callable):
    @nnx.jit
    def loop(model, opt, keys, batch):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        def step(carry, k):
            model, opt = carry
            loss, grads = nnx.value_and_grad(loss_fn)(model, k, batch)
            opt.update(model, grads)
            return (model, opt), loss

        return step((model, opt), keys)[1]

    return loop


def fit(model: nnx.Module, loss_fn: Callable, batch, *, steps: int, lr: float,
        key: jax.Array) -> np.ndarray:
    """Adam on ``loss_fn(model, key, batch)`` for ``steps`` steps in one ``nnx.scan``.

    A fresh key per step (for losses that sample their batch); ``batch`` is any pytree of arrays
    (a jit argument, so runs that differ only in ``batch`` share one compilation, as long as
    ``loss_fn`` is the same function object). The model's parameters and any power-iteration
    state are updated in place; the model is left in eval mode. Returns every step's loss.
    """
    model.train()
    opt = nnx.Optimizer(model, _adam(float(lr)), wrt=nnx.Param)
    losses = _fit_loop(loss_fn)(model, opt, jax.random.split(key, steps), batch)
    model.eval()
    return np.asarray(losses)


def settle_power_iterations(model: nnx.Module, x: jax.Array, passes: int = 200) -> None:
    """Run ``passes`` training-mode forward passes (no parameter update) so the warm
    power-iteration vectors of spectrally normalized layers converge for the final weights;
    then switch the model to eval mode. Only spectrally normalized layers need it."""
    model.train()
    step = nnx.jit(lambda model, x: model(x))
    for _ in range(passes):
        step(model, x)
    model.eval()


__all__ = ["fit", "settle_power_iterations", "train"]
