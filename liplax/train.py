r"""The training loop: optax over NNX models, the trivial-bound penalty, evaluation, checkpoints.

:func:`train` runs one configuration (:class:`liplax.configs.Config`) end to end:

1. **Objective.** Each step minimizes ``loss(f(x), y) + λ(t)·penalty(f)`` where ``loss`` is a
   margin loss of :mod:`liplax.losses` and ``penalty`` the trivial-bound penalty
   (:func:`liplax.bounds.trivial_bound_penalty`, fast path: one warm power-iteration step per layer
   and step, state moved in training mode), with λ ramped linearly from 0 over ``penalty_warmup``
   steps. The optimizer is optax (adam or sgd, warm-up + cosine decay).
2. **Steps in chunks.** ``log_every`` steps run inside one jitted ``lax.scan``; batches are drawn on
   device by :func:`liplax.data.batch_indices`, a pure function of (seed, step). The data order
   is therefore part of the state that a checkpoint restores, and a resumed run replays exactly
   the computation of an uninterrupted one.
3. **Data parallel.** With several local devices the batch is sharded over a ``"data"`` mesh axis
   and the state replicated (``NamedSharding``); XLA's SPMD partitioner inserts the gradient
   all-reduce. The same code runs on one device.
4. **Evaluation** (every ``eval_every`` steps and at the end, never moving any state): clean
   accuracy, the certified trivial bound (``upper``: product of sound layer bounds), the best
   empirical lower bound (exact local Jacobian norms at the origin and data points, and gradient
   ascent :func:`liplax.certify.lipschitz_lower_bound`), their ratio (tightness) and certified
   accuracy at each ε.
5. **Checkpoints** (:mod:`liplax.checkpoint`) every ``checkpoint_every`` steps and at the end:
   parameters, power-iteration and optimizer state, step, PRNG key, metric history. ``resume=True``
   continues from the newest readable checkpoint and reaches the same final parameters as an
   uninterrupted run with the same seed.

Outputs in ``out_dir``: ``report.json``, ``training.png``, ``metrics.jsonl``, ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import liplax
from liplax import bounds, data
from liplax.checkpoint import (
    CheckpointStore,
    atomic_write_text,
    check_output_dir,
    tree_bytes,
)
from liplax.configs import Config
from liplax.evaluation import Progress, Stages, layer_gains, make_evaluator
from liplax.runstate import (  # re-exported: liplax.train is where users and tests look
    Run,
    TrainState,
    eval_model,
    flat_to_state,
    init_run,
    load_run,
    loss_function,
    make_optimizer,
    penalty_weight,
    state_to_flat,
)

PyTree = Any

REPORT_KEYS = (
    "lipschitz_upper", "lipschitz_lower", "tightness", "clean_accuracy", "certified_accuracy",
    "p", "dataset", "config", "steps", "seconds",
)


# ----------------------------------------------------------------------------- the step


def _make_chunk(run: Run, n_train: int, mesh: Mesh | None):
    """jit(state, x_all, y_all, num_steps) → (state, metrics summed over the chunk)."""
    config, graphdef, tx = run.config, run.graphdef, run.tx
    loss_fn = loss_function(config)
    shape = run.input_shape
    batch_sharding = None if mesh is None else NamedSharding(mesh, P("data"))

    def one_step(state: TrainState, x_all, y_all, idx):
        x, y = x_all[idx], y_all[idx]
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)
        lam = penalty_weight(config, state.step)

        def objective(params):
            # Fresh Variable objects at this trace level, so the penalty may move the state.
            model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, state.rest))
            logits = model(x)
            data_loss = loss_fn(logits, y)
            if config.penalty == "none":
                pen = jnp.zeros((), jnp.float32)
            else:
                target = config.penalty_target if config.penalty == "hinge" else None
                pen = bounds.trivial_bound_penalty(
                    model, shape, p=config.p, kind=config.penalty, target=target,
                    grouped=config.grouped,
                )
            rest = nnx.split(model, nnx.Param, ...)[2]
            acc = jnp.mean(jnp.argmax(logits, -1) == y)
            return data_loss + lam * pen, (data_loss, pen, acc, rest)

        (total, (data_loss, pen, acc, rest)), grads = jax.value_and_grad(
            objective, has_aux=True
        )(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, rest, opt_state, state.key)
        metrics = {"loss": data_loss, "penalty": pen, "objective": total, "train_accuracy": acc}
        return new, metrics

    @functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
    def chunk(state, x_all, y_all, num_steps: int):
        data_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 1)
        batches = chunk_batch_indices(data_key, n_train, config.batch_size, state.step, num_steps)

        def body(st, idx):
            return one_step(st, x_all, y_all, idx)

        state, ms = jax.lax.scan(body, state, batches)
        return state, jax.tree.map(jnp.mean, ms)

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


# ----------------------------------------------------------------------------- evaluation


# make_evaluator, the progress bar and the per-layer gains live in liplax.evaluation.


# ----------------------------------------------------------------------------- the loop


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


def _meta(config: Config, history: list[dict], step: int, dataset: data.Dataset,
          elapsed: float) -> dict:
    return {
        "format": 1,
        "elapsed_seconds": round(elapsed, 3),
        "liplax_version": liplax.__version__,
        "config": config.to_dict(),
        "step": int(step),
        "history": history,
        "dataset": {"name": dataset.name, "n_train": int(len(dataset.y_train)),
                    "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes},
        "data_order": "liplax.data.batch_indices(fold_in(key(seed), 1), n_train, batch_size, step)",
    }


def _report(run: Run, final: dict, history: list[dict], dataset: data.Dataset, seconds: float,
            steps_done: int) -> dict:
    c = run.config
    return {
        **{k: final[k] for k in ("lipschitz_upper", "lipschitz_lower", "tightness",
                                 "clean_accuracy", "certified_accuracy")},
        "upper_kind": final["upper_kind"],
        "p": "inf" if c.p == math.inf else c.p,
        "dataset": dataset.name,
        "config": c.to_dict(),
        "steps": int(steps_done),
        "seconds": round(seconds, 3),
        "devices": final.get("devices", 1),
        "layer_bounds": final.get("layer_bounds", []),
        "history": history,
        "liplax_version": liplax.__version__,
    }


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
      dataset: the data (default: ``liplax.data.load(config.dataset, data_dir)``).
      resume: continue from the newest readable checkpoint in ``out_dir``. Without it, a folder
        that already holds checkpoints is refused (nothing is overwritten). A finished run
        (its last checkpoint at ``config.steps`` and its ``report.json`` written) is returned
        as it is: nothing is re-evaluated or rewritten.
      quiet: no progress bar or stage lines (metrics still go to ``metrics.jsonl``).
      devices: number of local devices for data parallelism (default: all).
      stop_after: stop (after checkpointing) once this many steps are done, without the final
        evaluation: for tests of resumption; ``None`` runs to ``config.steps``.
    Returns:
      the report dict (keys :data:`REPORT_KEYS` and more). ``seconds`` is the wall time of the
      whole run, summed over the sessions of a resumed run (each checkpoint records the time so
      far); ``train_seconds`` the time spent in training steps alone.
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
            finished = _finished_report(out, step0, config)
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
    chunk = _make_chunk(run, len(dataset.y_train), mesh)
    evaluate = make_evaluator(run)
    x_test = jnp.asarray(dataset.x_test)
    y_test = jnp.asarray(dataset.y_test, jnp.int32)
    x_eval, y_eval = x_test[: config.eval_examples], y_test[: config.eval_examples]
    eval_key = jax.random.fold_in(jax.random.key(config.seed), 2)

    step = int(state.step)
    last = config.steps if stop_after is None else min(config.steps, int(stop_after))
    bar = Progress(config.steps, step, quiet, desc=config.name)
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
                ev.pop("_witness")
                entry.update(ev)
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
                           _meta(config, history, step, dataset, elapsed))
    finally:
        bar.close()
    if step < config.steps:  # stopped early on request
        store.close()
        return {"steps": step, "stopped": True}

    stage = Stages(quiet)
    with stage(f"certified bound, lower-bound search and accuracy on {len(y_test)} test examples"):
        final = evaluate(state, x_test, y_test, jax.random.fold_in(eval_key, config.steps))
    witness = final.pop("_witness")
    _check_finite(final, step - 1, 1, store, out)
    model = eval_model(run, state)
    with stage("per-layer bounds and gains"):
        final["layer_bounds"] = _layer_rows(model, run.input_shape, config.p, witness)
    final["devices"] = 1 if mesh is None else mesh.size
    history_final = {"step": config.steps, "final": True, **{k: v for k, v in final.items()
                                                             if k != "layer_bounds"}}
    history = [h for h in history if not h.get("final")] + [history_final]
    report = _report(run, final, history, dataset, earlier + time.perf_counter() - t_start, step)
    report["train_seconds"] = round(train_seconds, 3)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    store.close()
    try:
        from liplax.report import plot_history

        with stage("training.png"):
            plot_history(history, out / "training.png", title=f"{config.name} on {dataset.name}",
                         layers=report["layer_bounds"])
    except ImportError as e:  # matplotlib missing: the report stands without its plot
        warnings.warn(f"no training plot: {e}", stacklevel=2)
    return report


def _layer_rows(model, input_shape, p: float, witness) -> list[dict]:
    """Each top-level layer's certified bound and its gain attained along the lower bound's
    witness direction (:func:`liplax.evaluation.layer_gains`)."""
    rows = bounds.layer_bounds(model, input_shape, p=p)
    gains = layer_gains(model, witness, p=p)
    return [
        {"layer": name, "value": float(b.value), "kind": b.kind, "attained_gain": g}
        for (name, b), g in zip(rows, gains, strict=True)
    ]


def _finished_report(out: Path, step: int, config: Config) -> dict | None:
    """The report of a finished run in ``out`` (last checkpoint at ``config.steps`` and a
    readable ``report.json`` of that many steps), else ``None``."""
    if step != config.steps:
        return None
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("steps") == config.steps else None


__all__ = [
    "REPORT_KEYS", "Run", "TrainState", "chunk_batch_indices", "eval_model", "flat_to_state",
    "init_run", "load_run", "loss_function", "make_optimizer", "penalty_weight",
    "state_to_flat", "train",
]
