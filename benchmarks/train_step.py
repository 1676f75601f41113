"""Step time of ``liplax train`` on a 4-conv CNN against a hand-written jitted optax loop.

The model is the ``fashion-cnn4`` config's (:mod:`liplax.training.models_cnn`, circular 3×3
convolutions 16-32-32-32, strides 1-2-2-1, |·|, flatten, bias-free dense head) with its penalty
(log trivial bound, one warm power-iteration step per layer and step; its gap penalty off, as
the hand-written loop has none; the batch unsplit, ``micro_batches=1``, as the hand-written loop
runs it) and its optimizer
(Adam, warm-up + cosine schedule).

- ``liplax``: the training path of ``liplax train`` (:func:`liplax.training.step.make_chunk`,
  ``--steps-per-call`` optimizer steps in one jitted ``lax.scan``, batches drawn on device);
- ``hand``: the same model and penalty written as plain JAX over a dict of arrays (no NNX, no
  liplax): one ``jax.jit`` of cross-entropy + λ·Σ log σ̂_l + optax update per step, the
  batch gathered on device from the training set, state donated.

Both run in the same process, interleaved, after compilation and warm-up; the figure is the
median over ``--repeats`` of the time per optimizer step. Also measured: the compile time of
the end-of-run evaluation (:func:`liplax.training.evaluation.make_evaluator`: trivial bound,
lower-bound search with the layer gains, logits and certified radii):
``jax.jit(...).lower(...).compile()`` of its three programs, together as its first call compiles
them (in parallel threads; the figure the floor applies to) and each alone, on the config's
shapes.

Writes JSON to stdout and ``benchmarks/results/train_step.json``.
Usage: python benchmarks/train_step.py [--repeats 15] [--steps-per-call 20] [--config NAME]
Timings depend on the machine's load: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from liplax.training import config as cfg
from liplax.training.evaluation import compile_evaluator
from liplax.training.state import init_run, make_optimizer
from liplax.training.step import make_chunk

DIMS = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- the hand loop


def _conv(k, x, stride):
    """Circular 3×3 convolution as flax pads it ((k−1)//2 before, k//2 after)."""
    kh, kw = k.shape[:2]
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)),
                mode="wrap")
    return lax.conv_general_dilated(x, k, (stride, stride), "VALID", dimension_numbers=DIMS)


def hand_init(config: cfg.Config, shape, k: int, key):
    """Kernels (lecun normal), dense head and unit power vectors of the config's CNN."""
    h, w, c = shape
    params, vecs, strides = {}, {}, []
    for i, ch in enumerate(config.widths):
        key, k1, k2 = jax.random.split(key, 3)
        s = 2 if i in (1, 2) and h % 2 == 0 and w % 2 == 0 else 1
        params[f"conv{i}"] = jax.random.normal(k1, (3, 3, c, ch)) / math.sqrt(9 * c)
        v = jax.random.normal(k2, (h, w, c))
        vecs[f"conv{i}"] = v / jnp.linalg.norm(v)
        strides.append(s)
        c, h, w = ch, h // s, w // s
    key, k1, k2 = jax.random.split(key, 3)
    params["dense"] = jax.random.normal(k1, (h * w * c, k)) / math.sqrt(h * w * c)
    v = jax.random.normal(k2, (h * w * c,))
    vecs["dense"] = v / jnp.linalg.norm(v)
    return params, vecs, tuple(strides)


def hand_step_fn(config: cfg.Config, strides, tx):
    lam = config.penalty_weight

    def forward(params, x):
        for i, s in enumerate(strides):
            x = jnp.abs(_conv(params[f"conv{i}"], x, s))
        return x.reshape(x.shape[0], -1) @ params["dense"]

    def power(params, vecs):
        """Σ log σ̂_l from one warm step per layer (vector fixed), and the new vectors."""
        total, new = 0.0, {}
        for i, s in enumerate(strides):
            kern = params[f"conv{i}"]
            v = vecs[f"conv{i}"]
            fixed = lax.stop_gradient(kern)
            fwd = partial(lambda kk, z, s=s: _conv(kk, z[None], s)[0], fixed)
            (vt,) = jax.linear_transpose(fwd, v)(fwd(v))
            v = lax.stop_gradient(vt / jnp.linalg.norm(vt))
            total = total + jnp.log(jnp.linalg.norm(_conv(kern, v[None], s)))
            new[f"conv{i}"] = v
        wd, v = params["dense"], vecs["dense"]
        u = lax.stop_gradient(wd) @ (v @ lax.stop_gradient(wd)).T
        v = lax.stop_gradient(u / jnp.linalg.norm(u))
        new["dense"] = v
        return total + jnp.log(jnp.linalg.norm(v @ wd)), new

    @partial(jax.jit, donate_argnums=0)
    def step(carry, x_all, y_all, idx):
        params, vecs, opt_state = carry
        x, y = x_all[idx], y_all[idx]

        def objective(params):
            logits = forward(params, x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            pen, new = power(params, vecs)
            return ce + lam * pen, new

        (loss, new), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new, opt_state), loss

    return step


# ----------------------------------------------------------------------------- timing


def compare(config: cfg.Config, repeats: int, n: int, warmup: int = 2) -> dict:
    shape, k, n_train = (28, 28, 1), 10, 60000
    rng = np.random.default_rng(0)
    x_all = jnp.asarray(rng.random((n_train, *shape), np.float32))
    y_all = jnp.asarray(rng.integers(0, k, n_train), jnp.int32)

    run = init_run(config, shape, k)
    chunk = make_chunk(run, n_train, None)
    state = run.state

    tx = make_optimizer(config)
    params, vecs, strides = hand_init(config, shape, k, jax.random.key(1))
    carry = (params, vecs, tx.init(params))
    hand = hand_step_fn(config, strides, tx)
    idx = jax.random.randint(jax.random.key(2), (n, config.batch_size), 0, n_train)

    def run_liplax():
        nonlocal state
        state, m = chunk(state, x_all, y_all, n)
        jax.block_until_ready((state, m))

    def run_hand():
        nonlocal carry
        loss = None
        for t in range(n):
            carry, loss = hand(carry, x_all, y_all, idx[t])
        jax.block_until_ready((carry, loss))

    fns = {"liplax": run_liplax, "hand": run_hand}
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved: load changes hit both alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / n)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "config": config.name,
        "batch": config.batch_size,
        "steps_per_call": n,
        "repeats": repeats,
        "step_ms_liplax": 1e3 * med["liplax"],
        "step_ms_hand": 1e3 * med["hand"],
        "ratio": med["liplax"] / med["hand"],
        "first_call_s": first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion-cnn4")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps-per-call", type=int, default=20)
    args = parser.parse_args()
    # the hand-written loop has the log penalty only and runs the whole batch at once: compare
    # like with like (the gap penalty of fashion-cnn4 costs ~1.08x its step, experiments/README.md
    # §7; its micro-batches ~0.55x, benchmarks/micro_batches.py)
    config = cfg.get_config(args.config, ["gap_weight=0", "micro_batches=1"])
    result = {
        "benchmark": "train_step",
        "what": "time per optimizer step of liplax train's jitted chunk vs a hand-written "
                "jitted optax loop of the same CNN, loss and penalty; compile time of the "
                "end-of-run evaluation",
        "floor": "ratio <= 1.3; eval_compile_s_total < 30 on 2 cores",
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "cpus": jax.local_device_count() if jax.default_backend() != "cpu" else None,
        "platform": platform.platform(),
        "step": compare(config, args.repeats, args.steps_per_call),
    }
    run = init_run(config, (28, 28, 1), 10)
    compile_s = compile_evaluator(run, n_eval=10000)
    result["eval_compile_s"] = compile_s
    result["eval_compile_s_total"] = compile_s["together"]
    result["meets_floor"] = (result["step"]["ratio"] <= 1.3
                             and result["eval_compile_s_total"] < 30)
    text = json.dumps(result, indent=2)
    print(text)
    out = pathlib.Path(__file__).resolve().parent / "results" / "train_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
