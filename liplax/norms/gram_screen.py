r"""max_f of the T-step Gram bound over many frequency matrices, with most of them screened out.

A circular convolution's Gram bound is max_f v_f, v_f the T-step Gram bound of the frequency
matrix K̂_f (:func:`liplax.norms.gram_vjp.conv_gram_max`). Only the largest v_f matters, and
a frequency whose bound after fewer steps is already below the best final bound cannot raise the
maximum. So: run T − :data:`TAIL` steps on all F matrices; their bounds u_f ≥ σ₁(K̂_f) are
rounding-safe (:func:`~liplax.norms.gram_core.gram_finish` with the margin of those steps). The
:data:`KEEP` largest continue, from where they are, for the last steps; the best v_f among them
is the candidate. Then, in decreasing order of u_f, chunks of the others are finished too until
no remaining u_f exceeds the best value found (usually no chunk at all; the loop is a
``lax.while_loop``, so under ``vmap`` it runs as many chunks as the hardest element needs).

Guarantee: the result r satisfies r ≥ σ₁(K̂_f) for every f: finished frequencies have
r ≥ v_f ≥ σ₁, the others r ≥ u_f ≥ σ₁. It is max_f v_f itself unless a frequency's v_f exceeds
its own earlier u_f, which only the rounding margin's growth over the last steps (relative size
≈ 10⁻⁶ in float32) can cause; then r may be below max_f v_f by at most that much and still
above every σ₁. A NaN or inf anywhere gives a NaN or inf result, as the plain maximum does.
The screen saves TAIL steps on F − KEEP matrices: a third of the work at T = 6.
``docs/design.md §norms`` "screening the Gram bound's frequencies".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from liplax.norms.gram_core import GramState, gram_finish, gram_start, gram_steps

#: Gram steps run only on the kept frequencies (and on chunks of the sweep).
TAIL = 2
#: frequencies that always get every step.
KEEP = 32
#: frequencies finished per iteration of the sweep (≤ KEEP).
CHUNK = 16


def _take(state: GramState, idx: jax.Array) -> GramState:
    im = None if state.im is None else state.im[idx]
    return GramState(state.re[idx], im, state.logs[:, idx])


def sweep(order: jax.Array, sorted_bounds: jax.Array, n_chunks: int, chunk: int,
          best: jax.Array, best_f: jax.Array, evaluate) -> tuple[jax.Array, jax.Array]:
    """(best, best_f) after evaluating, chunk by chunk in ``order`` (by decreasing upper bound,
    ``sorted_bounds``), the candidates whose bound exceeds the best value found so far:
    ``evaluate(ids)`` gives their values. A ``lax.while_loop``; ``order`` has ≥ n_chunks·chunk
    entries. Shared with the exact norm's certification sweep (:mod:`liplax.norms.exact`)."""

    def cond(c):
        j, best, _ = c
        return (j < n_chunks) & (sorted_bounds[jnp.minimum(j, n_chunks - 1) * chunk] > best)

    def body(c):
        j, best, best_f = c
        ids = lax.dynamic_slice(order, (j * chunk,), (chunk,))
        vals = evaluate(ids)
        better = jnp.max(vals) > best
        return (j + 1, jnp.where(better, jnp.max(vals), best),
                jnp.where(better, ids[jnp.argmax(vals)], best_f).astype(best_f.dtype))

    _, best, best_f = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), best, best_f))
    return best, best_f


def screened_max(
    re: jax.Array, im: jax.Array | None, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    """(r, f): the maximum over the batch re + i·im (F, m, n), m ≥ n, of the ``num_iters``-step
    Gram bound, and an index f attaining it (module docstring); ``im=None`` for real matrices."""
    num_f, m = re.shape[0], re.shape[-2]
    head = num_iters - TAIL
    if head < 1 or num_f <= 2 * KEEP:
        v = gram_finish(gram_steps(gram_start(re, im), num_iters), m)
        return jnp.max(v), jnp.argmax(v)
    state = gram_steps(gram_start(re, im), head)
    u = gram_finish(state, m)  # rounding-safe upper bounds on each σ₁ after `head` steps
    top = lax.top_k(u, KEEP)[1]
    v = gram_finish(gram_steps(_take(state, top), TAIL), m)
    best, best_f = jnp.max(v), top[jnp.argmax(v)]

    rest = u.at[top].set(-jnp.inf)  # the kept ones are finished
    order = jnp.argsort(-rest).astype(top.dtype)
    n_chunks = -(-(num_f - KEEP) // CHUNK)  # n_chunks·CHUNK ≤ F since KEEP ≥ CHUNK

    best, best_f = sweep(order, rest[order], n_chunks, CHUNK, best, best_f,
                         lambda ids: gram_finish(gram_steps(_take(state, ids), TAIL), m))
    # NaN or inf in any matrix: the plain maximum's value (NaN wins, then inf).
    bad = ~jnp.all(jnp.isfinite(u))
    return jnp.where(bad, jnp.max(u), best), jnp.where(bad, jnp.argmax(u), best_f)


__all__ = ["CHUNK", "KEEP", "TAIL", "screened_max", "sweep"]
