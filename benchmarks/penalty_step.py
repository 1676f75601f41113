"""Cost of the trivial-bound penalty in a training step, against the same step without it.

Two models on 28×28 inputs: a 784-256-256-10 MLP (``Dense`` + ``MaxMin``) and a small CNN
(two 3×3 ``Conv`` + ``MaxMin`` + 2×2 ``AvgPool``, then ``Dense``). For each, one jitted optax
(Adam) step of softmax cross-entropy, without and with ``λ·trivial_bound_penalty(kind="log",
p=2, fast=True)``: warm power iteration, one step per training step, on the real operators.
Both steps run in the same process, interleaved, as pure ``jax.jit`` functions over the split
NNX state (so Python-side graph handling is not timed), median of ``--repeats`` runs after
warm-up, each ended by ``block_until_ready``.

Writes JSON to stdout and to ``benchmarks/results/penalty_step.json``.
Usage: python benchmarks/penalty_step.py [--batch 128] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import optax
from flax import nnx

import liplax.nn as ln
from liplax import bounds


def mlp(rngs: nnx.Rngs) -> ln.Sequential:
    return ln.Sequential(
        ln.Flatten(),
        ln.Dense(784, 256, rngs=rngs), ln.MaxMin(),
        ln.Dense(256, 256, rngs=rngs), ln.MaxMin(),
        ln.Dense(256, 10, rngs=rngs),
    )


def cnn(rngs: nnx.Rngs) -> ln.Sequential:
    return ln.Sequential(
        ln.Conv(1, 16, 3, input_size=(28, 28), rngs=rngs), ln.MaxMin(), ln.AvgPool(2),
        ln.Conv(16, 32, 3, input_size=(14, 14), rngs=rngs), ln.MaxMin(), ln.AvgPool(2),
        ln.Flatten(),
        ln.Dense(7 * 7 * 32, 10, rngs=rngs),
    )


def make_step(build, penalty_weight: float | None, input_shape):
    """(jitted pure step, initial state): state → (state, loss)."""
    model = build(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    def step(state, x, y):
        model, opt = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            if penalty_weight is not None:
                loss = loss + penalty_weight * bounds.trivial_bound_penalty(
                    model, input_shape, p=2, kind="log", fast=True
                )
            return loss

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss

    return jax.jit(step), state


def time_pair(build, input_shape, batch: int, repeats: int, warmup: int = 5) -> dict:
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (batch, *input_shape))
    y = jax.random.randint(key_y, (batch,), 0, 10)
    steps = {"plain": make_step(build, None, input_shape),
             "penalty": make_step(build, 1e-2, input_shape)}
    states = {k: s for k, (_, s) in steps.items()}
    compile_s = {}
    for name, (fn, _) in steps.items():
        t0 = time.perf_counter()
        states[name], loss = fn(states[name], x, y)
        jax.block_until_ready(loss)
        compile_s[name] = time.perf_counter() - t0
        for _ in range(warmup):
            states[name], loss = fn(states[name], x, y)
        jax.block_until_ready((states[name], loss))
    times = {name: [] for name in steps}
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name, (fn, _) in steps.items():
            t0 = time.perf_counter()
            states[name], loss = fn(states[name], x, y)
            jax.block_until_ready((states[name], loss))
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    q = {name: statistics.quantiles(ts, n=4) for name, ts in times.items()}
    return {
        "batch": batch,
        "repeats": repeats,
        "step_ms_plain": 1e3 * med["plain"],
        "step_ms_penalty": 1e3 * med["penalty"],
        "step_ms_plain_iqr": [1e3 * q["plain"][0], 1e3 * q["plain"][2]],
        "step_ms_penalty_iqr": [1e3 * q["penalty"][0], 1e3 * q["penalty"][2]],
        "overhead_ratio": med["penalty"] / med["plain"],
        "compile_s": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    result = {
        "benchmark": "penalty_step",
        "what": "one jitted Adam step with vs without the trivial-bound penalty (log, p=2, "
                "warm power iteration, one step per training step)",
        "floor": "overhead_ratio <= 1.15",
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "models": {
            "mlp_784_256_256_10": time_pair(mlp, (28, 28, 1), args.batch, args.repeats),
            "cnn_28x28": time_pair(cnn, (28, 28, 1), args.batch, args.repeats),
        },
    }
    for r in result["models"].values():
        r["meets_floor"] = r["overhead_ratio"] <= 1.15
    text = json.dumps(result, indent=2)
    print(text)
    out = pathlib.Path(__file__).resolve().parent / "results" / "penalty_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
