r"""Evaluating a training state: accuracy, certified bound, lower bound, per-layer gains.

:func:`make_evaluator` builds ``evaluate(state, x, y, key)`` for a run (two compilations per run,
whatever the data size; the state never moves):

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

EVAL_BATCH = 500


def eps_key(e: float) -> str:
    """The report's key for radius ε (``0.1`` → ``"0.1"``)."""
    return f"{e:g}"


def make_evaluator(run):
    """evaluate(state, x, y, key) → metrics of a :class:`~liplax.training.state.Run` (module doc).

    ``bounds_fn`` (trivial bound, lower bound and its witness) is jitted once; logits and
    certified radii are computed in fixed batches of :data:`EVAL_BATCH` (the last one padded,
    padding dropped), so the periodic evaluations on a subset and the final one on the whole
    test set share it. The returned metrics hold the witness under ``"_witness"`` (an array,
    not JSON).
    """
    gd, config, p = run.eval_graphdef, run.config, run.config.p

    @jax.jit
    def bounds_fn(params, rest, xs, key):
        model = nnx.merge(gd, params, rest)
        upper = bounds.trivial_bound(model, run.input_shape, p=p)

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
        return upper, jnp.maximum(lb.value, asc.value), witness

    @jax.jit
    def batch_fn(params, rest, upper, x, y):
        logits = nnx.merge(gd, params, rest)(x)
        correct = jnp.argmax(logits, -1) == y
        return correct, certify.certified_radius(logits, y, upper, p=p)

    def evaluate(state, x, y, key) -> dict:
        upper, lower, witness = bounds_fn(state.params, state.rest, x[:256], key)
        n = len(y)
        pad = (-n) % EVAL_BATCH
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
        correct, radius = [], []
        for i in range(0, n + pad, EVAL_BATCH):
            c, r = batch_fn(state.params, state.rest, upper, xp[i:i + EVAL_BATCH],
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
        }

    return evaluate


def _layers(model) -> list:
    from liplax.nn.walk import top_level

    return [node.layer for node in top_level(model)]


def _pnorm(t: jax.Array, p: float) -> jax.Array:
    t = t.reshape(-1)
    return jnp.max(jnp.abs(t)) if p == math.inf else jnp.linalg.norm(t)


def layer_gains(model, x: jax.Array, *, p: float = 2, power_steps: int = 30) -> list[float]:
    """Gains ‖t_l‖_p/‖t_{l−1}‖_p of each top-level layer along the top direction of J(x).

    ``x``: one example (no batch axis). The direction v is the top right singular vector of the
    network's Jacobian at x, from ``power_steps`` power-iteration steps through jvp/vjp. Each
    gain is attained by its layer at its input (a lower bound on that layer's constant); a layer
    whose input tangent vanishes gets 0. The product of the gains is ‖J(x) v‖_p/‖v‖_p.
    """
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
    return [float(g) for g in gains]


__all__ = ["EVAL_BATCH", "eps_key", "layer_gains", "make_evaluator"]
