"""Step time of ``liplax train`` with the batch split into micro-batches (``micro_batches``).

The training step runs the model on ``micro_batches`` equal slices of the batch, each its own
chain of operations joined at the logits (:func:`liplax.training.step.make_chunk`): the same
objective and gradient, summed in another order. On XLA's CPU backend a convolution over a few
examples costs less per example than over 128, and independent slices run on separate cores.
This measures, for one config (default ``fashion-cnn4``, with its penalties), the median time
per optimizer step of the jitted chunk for each split, interleaved in one process after
compilation and warm-up, and its ratio to the unsplit step (``micro_batches=1``) — and the
agreement of the first step's training loss between the splits (the same objective).

Writes JSON to stdout and ``benchmarks/results/micro_batches.json``.
Usage: python benchmarks/micro_batches.py [--config NAME] [--splits 1,2,4,8,16] [--repeats 7]
[--steps-per-call 20]. Timings depend on the machine's load: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from liplax.training import config as cfg
from liplax.training.state import init_run
from liplax.training.step import make_chunk


def measure(name: str, splits: list[int], repeats: int, n: int) -> dict:
    shape, k, n_train = (28, 28, 1), 10, 60000
    rng = np.random.default_rng(0)
    x_all = jnp.asarray(rng.random((n_train, *shape), np.float32))
    y_all = jnp.asarray(rng.integers(0, k, n_train), jnp.int32)
    runs, first_loss, first_call = {}, {}, {}
    for m in splits:
        run = init_run(cfg.get_config(name, [f"micro_batches={m}"]), shape, k)
        chunk = make_chunk(run, n_train, None)
        t0 = time.perf_counter()
        state, metrics = chunk(run.state, x_all, y_all, 1)
        first_loss[m] = float(metrics["loss"])
        first_call[m] = time.perf_counter() - t0
        runs[m] = [chunk, state]
    times: dict[int, list[float]] = {m: [] for m in splits}
    for rep in range(repeats + 1):  # the first round warms up; interleaved: load hits all alike
        for m in splits:
            chunk, state = runs[m]
            t0 = time.perf_counter()
            state, metrics = chunk(state, x_all, y_all, n)
            jax.block_until_ready((state, metrics))
            runs[m][1] = state
            if rep:
                times[m].append((time.perf_counter() - t0) / n)
    base = statistics.median(times[splits[0]])
    return {
        "config": name,
        "batch": cfg.get_config(name).batch_size,
        "steps_per_call": n,
        "repeats": repeats,
        "step_ms": {str(m): 1e3 * statistics.median(times[m]) for m in splits},
        "ratio_to_unsplit": {str(m): statistics.median(times[m]) / base for m in splits},
        "first_step_loss": {str(m): first_loss[m] for m in splits},
        "first_call_s": {str(m): first_call[m] for m in splits},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion-cnn4")
    parser.add_argument("--splits", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps-per-call", type=int, default=20)
    args = parser.parse_args()
    # the unsplit step first (the baseline of every ratio), each split once
    splits = [1, *dict.fromkeys(int(s) for s in args.splits.split(",") if int(s) != 1)]
    result = {
        "benchmark": "micro_batches",
        "what": "time per optimizer step of liplax train's jitted chunk with the batch split "
                "into micro-batches, against the unsplit step in the same process",
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "step": measure(args.config, splits, args.repeats, args.steps_per_call),
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = pathlib.Path(__file__).resolve().parent / "results" / "micro_batches.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
