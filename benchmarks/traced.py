"""Cost of the traced bound (``liplax.lipschitz_bound``) of a ResNet-18-sized CNN at 32×32.

The model is the CIFAR ResNet-18 layout written as a plain Flax NNX module with its own
``__call__`` (no liplax layers): a 3×3 stem of 64 channels, four stages of two basic blocks
(64, 128, 256, 512 channels; stride 2 and a 1×1 projection shortcut where the shape changes),
batch norm in inference mode after every convolution, ReLU, global average pooling and a dense
head of 10 classes; 11.2 M parameters. Timed, in one process, after a warm-up where stated:

- ``trace_s``: ``jax.make_jaxpr`` of the model (what the bound reads);
- ``bound_first_s``: the first ``lipschitz_bound(model, x, p)`` (trace, walk, every norm routine
  compiled for its shape);
- ``bound_warm_s``: the same call again (compiled routines reused);
- ``bound_jit_compile_s`` / ``bound_jit_s``: the bound as one ``jax.jit``-ed function of the
  parameters (as in a training step): first call, then median of ``--repeats`` calls;
- baseline: ``forward_jit_s``, the median jitted forward pass of one 32×32 image, and the
  ratio ``bound_jit_s / forward_jit_s``.

Writes JSON to stdout and to ``benchmarks/results/traced.json``.
Usage: python benchmarks/traced.py [--p 2] [--repeats 5] [--width 64]
(``--width 8`` is a quick run of the same layout.)
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

import liplax


class Block(nnx.Module):
    """Basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.c1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.b1 = nnx.BatchNorm(cout, rngs=rngs)
        self.c2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.b2 = nnx.BatchNorm(cout, rngs=rngs)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.bp = nnx.BatchNorm(cout, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        s = self.bp(self.proj(x)) if self.project else x
        return nnx.relu(y + s)


class ResNet18(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        w = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nnx.Conv(3, w[0], (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(w[0], rngs=rngs)
        blocks, cin = [], w[0]
        for i, c in enumerate(w):
            blocks += [Block(cin, c, 1 if i == 0 else 2, rngs), Block(c, c, 1, rngs)]
            cin = c
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(w[3], 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem(x)))
        for b in self.blocks:
            x = b(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", default="2", choices=["1", "2", "inf"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    p = math.inf if args.p == "inf" else int(args.p)

    model = ResNet18(args.width, nnx.Rngs(0))
    model.eval()
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    n_params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))

    trace_s, _ = _timed(lambda: jax.make_jaxpr(lambda x: model(x))(x).consts)
    first_s, b = _timed(lambda: liplax.lipschitz_bound(model, x, p=p).value)
    warm_s, _ = _timed(lambda: liplax.lipschitz_bound(model, x, p=p).value)

    graphdef, state = nnx.split(model)

    @jax.jit
    def bound_of(state):
        return liplax.lipschitz_bound(nnx.merge(graphdef, state), x, p=p).value

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    jit_compile_s, bj = _timed(lambda: bound_of(state))
    _timed(lambda: forward(state, x))
    jit_runs, fwd_runs = [], []
    for _ in range(args.repeats):  # interleaved
        jit_runs.append(_timed(lambda: bound_of(state))[0])
        fwd_runs.append(_timed(lambda: forward(state, x))[0])
    bound_jit_s, forward_jit_s = statistics.median(jit_runs), statistics.median(fwd_runs)

    result = {
        "benchmark": "traced_bound_resnet18",
        "p": args.p, "width": args.width, "input": [1, 32, 32, 3], "parameters": int(n_params),
        "bound": float(b), "bound_jit": float(bj),
        "trace_s": trace_s, "bound_first_s": first_s, "bound_warm_s": warm_s,
        "bound_jit_compile_s": jit_compile_s, "bound_jit_s": bound_jit_s,
        "forward_jit_s": forward_jit_s, "ratio_bound_jit_to_forward": bound_jit_s / forward_jit_s,
        "repeats": args.repeats, "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": len(jax.devices()), "machine": platform.machine(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "traced.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
