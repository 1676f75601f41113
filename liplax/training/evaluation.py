r"""Evaluating a training state: accuracy, certified bound, lower bound, per-layer gains.

:func:`make_evaluator` builds ``evaluate(state, x, y, key)`` for a run (three programs compiled
together, in parallel, on its first call and reused whatever the data size; the state never
moves):

- clean accuracy and certified accuracy at each ε of the config (radius margin / (c·L), L the
  certified trivial bound, kind ``upper``/``exact``);
- the lower bound: the best of :func:`liplax.certify.lipschitz_lower_bound` (gradient ascent on
  difference quotients and local gains) and :func:`liplax.certify.local_norm_ascent` (Adam on
  the exact local norm ‖J(x)‖ from the origin, data, that witness and random points), with the
  point that attains it. Every value is attained, so it is below the true constant.

:func:`layer_gains` explains the gap between the two per layer: along the top singular direction
v of J(x*) at the lower bound's witness x*, layer l maps the tangent t_{l−1} to
t_l = J_l t_{l−1}, and ‖t_l‖/‖t_{l−1}‖ is a gain that layer attains (≤ its Lipschitz constant,
hence ≤ its certified bound). The product of these gains is ‖J(x*) v‖/‖v‖, a lower bound on the
network's constant; where a bar of the plot is well below its bound, that layer's bound is
not reached along the witness direction.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liplax import bounds, certify
from liplax.guarantee import Bound, compose
from liplax.nn.walk import children

EVAL_BATCH = 500
#: examples the lower-bound search starts from (the first ones of the evaluated set).
LOWER_EXAMPLES = 256


def eps_key(e: float) -> str:
    """The report's key for radius ε (``0.1`` → ``"0.1"``)."""
    return f"{e:g}"


#: XLA options of the certified-bound program: it runs once per evaluation and is small at
#: run time (FFT-sized matrices), so LLVM's optimization passes cost far more than they save.
#: They change LLVM code generation only (the HLO is the same); the norms' rounding margins
#: hold for any summation order and with fused multiply-adds, so the certificate is as sound.
BOUND_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def _eval_fns(run):
    """The jitted functions of an evaluation (module docstring):

    - ``upper_fn(params, rest)`` → (trivial bound, bounds of the top-level layers);
    - ``lower_fn(params, rest, xs, key)`` → (lower bound, witness, layer gains at the witness);
    - ``batch_fn(params, rest, upper, x, y)`` → (correct, certified radius) on one batch.
    """
    gd, config, p = run.eval_graphdef, run.config, run.config.p

    @jax.jit
    def upper_fn(params, rest):
        return certified_bounds(nnx.merge(gd, params, rest), run.input_shape, p)

    @jax.jit
    def lower_fn(params, rest, xs, key):
        model = nnx.merge(gd, params, rest)

        def single(x):
            return model(x[None])[0]

        lb = certify.lipschitz_lower_bound(
            single, xs, key=key, p=p, steps=config.lower_steps, restarts=config.lower_restarts
        )
        k_data, k_rand = jax.random.split(jax.random.fold_in(key, 1))
        chosen = jax.random.choice(k_data, xs.shape[0], (config.lower_restarts,), replace=False)
        noise = jax.random.uniform(k_rand, (config.lower_restarts, *xs.shape[1:]), xs.dtype)
        starts = jnp.concatenate(
            [jnp.zeros_like(xs[:1]), lb.point[None], xs[chosen], noise], axis=0
        )
        asc = certify.local_norm_ascent(single, starts, p=p, steps=config.lower_steps)
        better = asc.value >= lb.value
        witness = jnp.where(better, asc.point, lb.point)
        return jnp.maximum(lb.value, asc.value), witness, _gains(model, witness, p, 30)

    @jax.jit
    def batch_fn(params, rest, upper, x, y):
        logits = nnx.merge(gd, params, rest)(x)
        correct = jnp.argmax(logits, -1) == y
        return correct, certify.certified_radius(logits, y, upper, p=p)

    return upper_fn, lower_fn, batch_fn


def certified_bounds(model, input_shape, p) -> tuple[Bound, list[Bound]]:
    """(trivial bound, certified bounds of the top-level layers), each layer bounded once.

    The model walk (docs/design.md §layer contract) composes a sequential model's bound as
    :func:`liplax.guarantee.compose` of its children's bounds, which are the rows of
    :func:`liplax.bounds.top_level_bounds`; so composing those rows gives
    :func:`liplax.bounds.trivial_bound` (same value and kind) without tracing every layer's
    norm twice. A model that is not sequential is its own single row.
    """
    rows = bounds.top_level_bounds(model, input_shape, p)
    return (compose(rows) if children(model) is not None else rows[0]), rows


def _compile_together(jobs: list) -> list:
    """AOT-compile ``(jitted, args, options)`` jobs in parallel threads (XLA compiles without
    the GIL, so independent programs compile side by side on the machine's cores)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        fn, args, options = job
        return fn.lower(*args).compile(compiler_options=options)

    if len(jobs) <= 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


class _Programs:
    """The compiled programs of :func:`_eval_fns`, compiled on first use (all missing ones at
    once, in parallel) and reused: one per argument shape (the bound once per run, the lower
    bound once per sample size, the batch once)."""

    def __init__(self, run):
        self.fns = dict(zip(("upper", "lower", "batch"), _eval_fns(run), strict=True))
        self.done: dict[tuple, object] = {}

    def ensure(self, calls: dict[str, tuple]) -> None:
        """Compile the programs of ``calls`` (name → example arguments) not yet compiled."""
        jobs = {(n, _signature(a)): (self.fns[n], a, BOUND_COMPILE_OPTIONS if n == "upper"
                                     else None)
                for n, a in calls.items() if (n, _signature(a)) not in self.done}
        self.done.update(zip(jobs, _compile_together(list(jobs.values())), strict=True))

    def __call__(self, name: str, *args):
        return self.done[(name, _signature(args))](*args)


def _signature(args) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((jnp.shape(a), str(jnp.result_type(a))) for a in leaves)


def make_evaluator(run):
    """evaluate(state, x, y, key) → metrics of a :class:`~liplax.training.state.Run` (module doc).

    Three compiled programs, compiled together on the first call (in parallel threads) and
    reused by every later evaluation: the certified bound with the top-level layers' bounds
    (:data:`BOUND_COMPILE_OPTIONS`), the lower-bound search on the first
    :data:`LOWER_EXAMPLES` examples with the layer gains at its witness, and logits with
    certified radii on fixed batches of :data:`EVAL_BATCH` (the last one padded, padding
    dropped), so the periodic evaluations on a subset and the final one on the whole test set
    share them. The returned metrics hold, under keys starting with ``_`` (not JSON): the
    witness, the top-level layers' bounds and their gains at the witness.
    """
    config = run.config
    programs = _Programs(run)

    def evaluate(state, x, y, key) -> dict:
        n = len(y)
        pad = (-n) % EVAL_BATCH
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
        xs = x[:LOWER_EXAMPLES]
        params, rest = state.params, state.rest
        up_shape = jax.eval_shape(programs.fns["upper"], params, rest)[0]
        programs.ensure({
            "upper": (params, rest),
            "lower": (params, rest, xs, key),
            "batch": (params, rest, up_shape, xp[:EVAL_BATCH], yp[:EVAL_BATCH]),
        })
        upper, layer_bounds = programs("upper", params, rest)
        lower, witness, gains = programs("lower", params, rest, xs, key)
        correct, radius = [], []
        for i in range(0, n + pad, EVAL_BATCH):
            c, r = programs("batch", params, rest, upper, xp[i:i + EVAL_BATCH],
                            yp[i:i + EVAL_BATCH])
            correct.append(np.asarray(c))
            radius.append(np.asarray(r))
        correct = np.concatenate(correct)[:n]
        radius = np.concatenate(radius)[:n]
        up, lo = float(upper.value), float(lower)
        return {
            "clean_accuracy": float(np.mean(correct)),
            "lipschitz_upper": up,
            "upper_kind": upper.kind,
            "lipschitz_lower": lo,
            "tightness": float(certify.tightness_ratio(up, lo)),
            # Certified at ε: radius > ε (margin > c·L·ε); the radius is 0 when misclassified.
            "certified_accuracy": {eps_key(e): float(np.mean(radius > e)) for e in config.eps},
            "_witness": witness,
            "_layer_bounds": layer_bounds,
            "_gains": [float(g) for g in gains],
        }

    evaluate.programs = programs  # the compiled programs (tests check they are reused)
    return evaluate


def layer_table(model, layer_bounds: list, gains: list[float]) -> list[dict]:
    """The report's per-layer rows (as :func:`liplax.training.outputs.layer_rows`) from an
    evaluation's ``_layer_bounds`` and ``_gains``: no further compilation."""
    from liplax.nn.walk import layer_name, top_level

    names = [layer_name(node.layer) for node in top_level(model)]
    return [
        {"layer": name, "value": float(b.value), "kind": b.kind, "attained_gain": g}
        for name, b, g in zip(names, layer_bounds, gains, strict=True)
    ]


def compile_evaluator(run, n_eval: int = 10000) -> dict[str, float]:
    """Wall seconds to compile the programs of :func:`make_evaluator` for ``run``, as its first
    call does (all three at once, in parallel; abstract arguments, nothing executed), and each
    alone. ``n_eval``: the number of examples evaluated (the lower bound's sample is the first
    ``min(n_eval, LOWER_EXAMPLES)``)."""
    import time

    st = run.state

    def spec(a):
        return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))

    params, rest = jax.tree.map(spec, st.params), jax.tree.map(spec, st.rest)
    xs = jax.ShapeDtypeStruct((min(LOWER_EXAMPLES, n_eval), *run.input_shape), jnp.float32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    xb = jax.ShapeDtypeStruct((EVAL_BATCH, *run.input_shape), jnp.float32)
    yb = jax.ShapeDtypeStruct((EVAL_BATCH,), jnp.int32)
    out: dict[str, float] = {}
    for label in ("together", "upper", "lower", "batch"):
        programs = _Programs(run)
        up = jax.eval_shape(programs.fns["upper"], params, rest)[0]
        calls = {"upper": (params, rest), "lower": (params, rest, xs, key),
                 "batch": (params, rest, up, xb, yb)}
        if label != "together":
            calls = {label: calls[label]}
        t0 = time.perf_counter()
        programs.ensure(calls)
        out[label] = time.perf_counter() - t0
    return out


def _layers(model) -> list:
    from liplax.nn.walk import top_level

    return [node.layer for node in top_level(model)]


def _pnorm(t: jax.Array, p: float) -> jax.Array:
    t = t.reshape(-1)
    return jnp.max(jnp.abs(t)) if p == math.inf else jnp.linalg.norm(t)


def _gains(model, x: jax.Array, p: float, power_steps: int) -> jax.Array:
    """The gains of :func:`layer_gains` as an array (traceable; used inside ``lower_fn``)."""
    layers = _layers(model)
    xb = x[None]

    def net(z):
        return model(z)

    def body(_, v):
        _, jv = jax.jvp(net, (xb,), (v,))
        (jtjv,) = jax.vjp(net, xb)[1](jv)
        return jtjv / (jnp.linalg.norm(jtjv) + 1e-30)

    v0 = jnp.ones_like(xb) / math.sqrt(xb.size)
    v = jax.lax.fori_loop(0, power_steps, body, v0)
    gains, z, t = [], xb, v
    for layer in layers:
        z, t_new = jax.jvp(lambda a, layer=layer: layer(a), (z,), (t,))
        before, after = _pnorm(t, p), _pnorm(t_new, p)
        gains.append(jnp.where(before > 0, after / jnp.where(before > 0, before, 1.0), 0.0))
        t = t_new
    return jnp.stack(gains)


def layer_gains(model, x: jax.Array, *, p: float = 2, power_steps: int = 30) -> list[float]:
    """Gains ‖t_l‖_p/‖t_{l−1}‖_p of each top-level layer along the top direction of J(x).

    ``x``: one example (no batch axis). The direction v is the top right singular vector of the
    network's Jacobian at x, from ``power_steps`` power-iteration steps through jvp/vjp. Each
    gain is attained by its layer at its input (a lower bound on that layer's constant); a layer
    whose input tangent vanishes gets 0. The product of the gains is ‖J(x) v‖_p/‖v‖_p.
    """
    return [float(g) for g in _gains(model, x, p, power_steps)]


__all__ = [
    "BOUND_COMPILE_OPTIONS", "EVAL_BATCH", "LOWER_EXAMPLES", "compile_evaluator", "eps_key",
    "layer_gains", "layer_table", "make_evaluator",
]
