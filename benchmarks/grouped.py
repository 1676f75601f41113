"""Grouped power steps against one power step per layer, in the same process.

The penalty's fast path (``trivial_bound_penalty(kind="log", p=2, fast=True)``) with
``grouped=True`` (one vmapped power step per group of same-shape layers,
:mod:`liplax.grouped`) vs ``grouped=False`` (one step per layer), for two models:

- ``mlp``: 784 → 256, then 8 hidden ``Dense(256, 256)`` (one group of 8), → 10;
- ``cnn``: ``Conv(3, C, 3)`` then 6 ``Conv(C, C, 3)`` at 16×16, SAME (one group of 6), → dense.

Two timings per model and variant, each a pure ``jax.jit`` function over the split NNX state
(Python-side graph handling is not timed), median of ``--repeats`` interleaved runs after a
warm-up, ended by ``block_until_ready``:

- ``penalty``: value and gradient of the penalty alone, state written back (what grouping
  changes);
- ``train_step``: a full Adam step of softmax cross-entropy + 1e-2·penalty on a batch.

- ``step_breakdown``: value and gradient of Σ_g log σ̂_g over the big group's kernels alone, as
  (a) per-layer library steps (``conv.power_iteration`` on ``lax.conv``; ``power_sigma``),
  (b) per-layer im2col steps (``conv_power_step`` on groups of one; conv only) and (c) one
  grouped step: (a)→(b) is the gain of the im2col formulation, (b)→(c) that of grouping.

- ``spectral``: a full Adam step of softmax cross-entropy through ``SpectralDense``/
  ``SpectralConv`` models (the same shapes, spectral layers in place of the free ones), with
  ``model(x)`` (one power step per layer inside the forward pass) vs
  ``liplax.grouped.grouped_call(model, x)`` (one batched step per group, then the forward).

Also reported: the largest difference between the two variants' penalty values after the timed
runs (they must agree to float tolerance). JSON to stdout and ``benchmarks/results/grouped.json``.
Usage: python benchmarks/grouped.py [--repeats 30] [--batch 64] [--channels 32]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import optax
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import liplax.nn as ln  # noqa: E402
from liplax import bounds, conv  # noqa: E402
from liplax.grouped import (  # noqa: E402
    conv_power_step,
    grouped_call,
    power_groups,
    spectral_groups,
)
from liplax.nn.dense import power_sigma  # noqa: E402


def mlp(rngs: nnx.Rngs, width: int = 256, hidden: int = 8, dense=ln.Dense) -> ln.Sequential:
    layers = [ln.Flatten(), dense(784, width, rngs=rngs), ln.MaxMin()]
    for _ in range(hidden):
        layers += [dense(width, width, rngs=rngs), ln.MaxMin()]
    return ln.Sequential(*layers, dense(width, 10, rngs=rngs))


def cnn(rngs: nnx.Rngs, channels: int = 32, size: int = 16, same: int = 6, conv=ln.Conv,
        dense=ln.Dense) -> ln.Sequential:
    layers = [conv(3, channels, 3, input_size=(size, size), rngs=rngs), ln.MaxMin()]
    for _ in range(same):
        layers += [conv(channels, channels, 3, input_size=(size, size), rngs=rngs), ln.MaxMin()]
    return ln.Sequential(*layers, ln.AvgPool(4), ln.Flatten(),
                         dense((size // 4) ** 2 * channels, 10, rngs=rngs))


def spectral_case(build, input_shape, batch: int, repeats: int) -> dict:
    """Adam step through a spectral model: model(x) vs grouped_call(model, x)."""
    groups = spectral_groups(build(nnx.Rngs(0)))
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (batch, *input_shape))
    y = jax.random.randint(key_y, (batch,), 0, 10)
    fns, states, losses = {}, {}, {}
    for name, call in (("per_layer", lambda m, v: m(v)), ("grouped", grouped_call)):
        model = build(nnx.Rngs(0))
        opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
        graphdef, states[name] = nnx.split((model, opt))

        def step(state, graphdef=graphdef, call=call):
            model, opt = nnx.merge(graphdef, state)

            def loss_fn(model):
                logits = call(model, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, grads)
            return nnx.state((model, opt)), loss

        fns[name] = jax.jit(step)

    def call(name):
        def run():
            states[name], losses[name] = fns[name](states[name])
            return states[name], losses[name]
        return run

    timed = _interleaved({name: call(name) for name in fns}, repeats)
    return {
        "groups": [{"key": [str(k) for k in g.key], "layers": len(g.layers)} for g in groups],
        "batch": batch,
        "train_step": {**timed, "speedup": timed["per_layer"]["median_ms"]
                       / timed["grouped"]["median_ms"]},
        "abs_diff_loss_after_same_steps": abs(float(losses["grouped"])
                                              - float(losses["per_layer"])),
    }


def make_fns(build, input_shape, grouped: bool):
    """(penalty fn, train-step fn, initial state) as pure jitted functions of split state."""
    model = build(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    def penalty(model):
        return bounds.trivial_bound_penalty(model, input_shape, p=2, kind="log", fast=True,
                                            grouped=grouped)

    def penalty_only(state):
        model, opt = nnx.merge(graphdef, state)
        value, grads = nnx.value_and_grad(penalty)(model)
        return nnx.state((model, opt)), (value, grads)

    def step(state, x, y):
        model, opt = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce + 1e-2 * penalty(model)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss

    return jax.jit(penalty_only), jax.jit(step), state


def _interleaved(calls: dict, repeats: int, warmup: int = 3) -> dict:
    """calls: name → zero-argument function returning something to block on."""
    compile_s = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        compile_s[name] = time.perf_counter() - t0
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_ms": 1e3 * statistics.median(ts),
                   "iqr_ms": [1e3 * q for q in statistics.quantiles(ts, n=4)[::2]],
                   "first_call_s": compile_s[name]}
            for name, ts in times.items()}


def step_breakdown(group, repeats: int) -> dict:
    """(a) per-layer library steps, (b) per-layer im2col steps, (c) one grouped step."""
    first = group.layers[0]
    ks = jax.numpy.stack([layer.kernel[...] for layer in group.layers])
    us = jax.numpy.stack([layer.power_state[...] for layer in group.layers])
    n = ks.shape[0]
    if group.key[0] == "dense":
        variants = {
            "per_layer_library": lambda k: [power_sigma(k[i], us[i])[0] for i in range(n)],
            "grouped": lambda k: [jax.vmap(power_sigma)(k, us)[0]],
        }
    else:
        kw = {"strides": first.strides, "padding": first.padding, "num_iters": 1}
        variants = {
            "per_layer_library": lambda k: [
                conv.power_iteration(k[i], first.input_size, us[i], **kw)[0].value
                for i in range(n)],
            "per_layer_im2col": lambda k: [
                conv_power_step(k[i:i + 1], us[i:i + 1], **kw)[0] for i in range(n)],
            "grouped": lambda k: [conv_power_step(k, us, **kw)[0]],
        }

    def vg(f):
        return jax.jit(jax.value_and_grad(
            lambda k: sum(jax.numpy.sum(jax.numpy.log(s)) for s in f(k))))

    fns = {name: vg(f) for name, f in variants.items()}
    timed = _interleaved({name: (lambda f=f: f(ks)) for name, f in fns.items()}, repeats)
    vals = {name: float(f(ks)[0]) for name, f in fns.items()}
    base = timed["per_layer_library"]["median_ms"]
    for name in timed:
        timed[name]["speedup_vs_per_layer_library"] = base / timed[name]["median_ms"]
        timed[name]["value"] = vals[name]
    return {"layers": n, "kernel": list(ks.shape[1:]), **timed}


def model_case(build, input_shape, batch: int, repeats: int) -> dict:
    groups = power_groups(build(nnx.Rngs(0)), input_shape)
    fns = {g: make_fns(build, input_shape, g) for g in (False, True)}
    states = {g: fns[g][2] for g in fns}
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (batch, *input_shape))
    y = jax.random.randint(key_y, (batch,), 0, 10)
    values = {}

    def pen(g):
        def call():
            states[g], (values[g], grads) = fns[g][0](states[g])
            return states[g], grads
        return call

    def train(g):
        def call():
            states[g], loss = fns[g][1](states[g], x, y)
            return states[g], loss
        return call

    pen_t = _interleaved({"per_layer": pen(False), "grouped": pen(True)}, repeats)
    train_t = _interleaved({"per_layer": train(False), "grouped": train(True)}, repeats)
    # Fresh states, same number of penalty steps: the two variants must agree.
    states = {g: fns[g][2] for g in fns}
    for _ in range(5):
        pen(False)()
        pen(True)()
    diff = abs(float(values[True]) - float(values[False]))
    return {
        "groups": [{"key": [str(k) for k in g.key], "layers": len(g.layers)} for g in groups],
        "batch": batch,
        "penalty": {**pen_t, "speedup": pen_t["per_layer"]["median_ms"]
                    / pen_t["grouped"]["median_ms"]},
        "train_step": {**train_t, "speedup": train_t["per_layer"]["median_ms"]
                       / train_t["grouped"]["median_ms"]},
        "abs_diff_penalty_value_after_5_steps": diff,
        "step_breakdown": step_breakdown(max(groups, key=lambda g: len(g.layers)), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grouped.json"))
    args = parser.parse_args()
    result = {
        "benchmark": "grouped",
        "what": "penalty (log, p=2, fast) value+grad and a full Adam step, grouped=True vs "
                "grouped=False, same process, interleaved",
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "repeats": args.repeats,
        "models": {
            "mlp_784_8x256_10": model_case(mlp, (28, 28, 1), args.batch, args.repeats),
            f"cnn_3_then_6x{args.channels}_16x16": model_case(
                lambda r: cnn(r, channels=args.channels), (16, 16, 3), args.batch, args.repeats
            ),
        },
        "spectral": {
            "mlp_784_8x256_10": spectral_case(
                lambda r: mlp(r, dense=ln.SpectralDense), (28, 28, 1), args.batch, args.repeats),
            f"cnn_3_then_6x{args.channels}_16x16": spectral_case(
                lambda r: cnn(r, channels=args.channels, conv=ln.SpectralConv,
                              dense=ln.SpectralDense), (16, 16, 3), args.batch, args.repeats),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
