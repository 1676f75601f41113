r"""Batched bound sweeps: one bound operator over a leading batch of weights or kernels.

:func:`sweep` applies ``fn`` (any :mod:`liplax.linalg` / :mod:`liplax.conv` function with its
static arguments bound by :func:`functools.partial`, or any pure function of one batch item) to
every item of ``batch`` along its leading axis and returns the results in the input order:
``sweep(fn, batch)[i] == fn(batch[i])`` (to float tolerance; vmapped arithmetic may reorder
sums). It rests on JAX's own machinery only:

- **vmap**: the whole batch in one vectorized call (``chunk_size=None``);
- **chunks**: a ``lax.fori_loop`` over chunks of ``chunk_size`` items, each chunk vmapped, so the
  intermediates alive at once are those of one chunk and peak memory does not grow with the
  batch (only the input and the output do). The last chunk is clamped to end at the last item
  (``lax.dynamic_slice`` semantics), so it overlaps the previous chunk instead of feeding the
  operator made-up padding; the overlapping items are computed twice and written once more with
  the same values. One chunk shape, hence one compilation;
- **mesh**: the batch is split over all devices of a :class:`jax.sharding.Mesh` (leading axis
  sharded over every mesh axis, ``shard_map``); each device sweeps its share, chunked when
  ``chunk_size`` is given (then it is the per-device chunk). A batch that the device count does
  not divide is padded with copies of its last item and the padding is dropped from the result.

The guarantee of the results is the guarantee of ``fn`` (``exact``/``upper``/``estimate``,
available as ``fn.guarantee`` on liplax operators); sweeping changes how, not what, is computed.
Reference: the SPMD model of JAX (``jax.vmap``, ``jax.shard_map``, ``NamedSharding``);
Bradbury et al., *JAX: composable transformations of Python+NumPy programs*, 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from liplax._checks import check_p
from liplax.bounds import static_shape, top_level_bounds
from liplax.certify import local_norm_ascent, tightness_ratio
from liplax.guarantee import Bound
from liplax.nn.walk import bound_of, layer_name, top_level

PyTree = Any


# --------------------------------------------------------------------------------------------
# Argument checks (trace time, naming the argument).
# --------------------------------------------------------------------------------------------


def _batch_size(batch: PyTree) -> int:
    """The common leading size B ≥ 1 of every array leaf of ``batch``."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError("batch must be an array or a pytree of arrays, got no array leaves")
    sizes = set()
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None:
            raise TypeError(
                f"batch must hold arrays (leading axis = batch), got a leaf of type "
                f"{type(leaf).__name__}"
            )
        if len(shape) == 0:
            raise ValueError("batch leaves must have a leading batch axis, got a scalar (shape ())")
        sizes.add(int(shape[0]))
    if len(sizes) != 1:
        raise ValueError(
            f"batch leaves must share the leading (batch) size, got sizes {sorted(sizes)}"
        )
    (size,) = sizes
    if size < 1:
        raise ValueError("batch must have at least one item along its leading axis, got 0")
    return size


def _check_chunk_size(chunk_size) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return int(chunk_size)


def _check_mesh(mesh) -> Mesh | None:
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((n,), ('batch',))) or None, "
            f"got {type(mesh).__name__}"
        )
    return mesh


# --------------------------------------------------------------------------------------------
# The three ways to run: vmap, chunked vmap, sharded.
# --------------------------------------------------------------------------------------------


def _chunked(fn: Callable, batch: PyTree, size: int, chunk: int) -> PyTree:
    """vmap(fn) over chunks of ``chunk`` items in a fixed-trip-count loop (chunk ≤ size)."""
    vfn = jax.vmap(fn)

    def take(start):
        return jax.tree_util.tree_map(
            lambda x: lax.dynamic_slice_in_dim(x, start, chunk, axis=0), batch
        )

    out_chunk = jax.eval_shape(vfn, take(0))
    buf = jax.tree_util.tree_map(
        lambda s: jnp.zeros((size, *s.shape[1:]), s.dtype), out_chunk
    )
    num_chunks = -(-size // chunk)

    def body(i, buf):
        start = jnp.minimum(i * chunk, size - chunk)  # the last chunk ends at the last item
        out = vfn(take(start))
        return jax.tree_util.tree_map(
            lambda b, o: lax.dynamic_update_slice_in_dim(b, o, start, axis=0), buf, out
        )

    return lax.fori_loop(0, num_chunks, body, buf)


def _local(fn: Callable, batch: PyTree, chunk: int | None) -> PyTree:
    size = _batch_size(batch)
    if chunk is None or chunk >= size:
        return jax.vmap(fn)(batch)
    return _chunked(fn, batch, size, chunk)


def _pad_leading(x: jax.Array, extra: int) -> jax.Array:
    """Append ``extra`` copies of the last item along the leading axis."""
    if extra == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)


def _place(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Lay ``tree`` out with ``sharding``: ``jax.reshard`` on meshes with explicit axes (the
    default of ``jax.make_mesh``), a sharding constraint on meshes with automatic axes."""
    if any(t == AxisType.Explicit for t in sharding.mesh.axis_types):
        return jax.reshard(tree, sharding)
    return lax.with_sharding_constraint(tree, sharding)


def _sharded(fn: Callable, batch: PyTree, size: int, chunk: int | None, mesh: Mesh) -> PyTree:
    devices = mesh.size
    extra = (-size) % devices
    padded = jax.tree_util.tree_map(partial(_pad_leading, extra=extra), batch)
    spec = P(tuple(mesh.axis_names))
    padded = _place(padded, NamedSharding(mesh, spec))
    out = jax.shard_map(
        partial(_local, fn, chunk=chunk),
        mesh=mesh,
        in_specs=spec,
        out_specs=spec,
        check_vma=False,
    )(padded)
    if extra == 0:
        return out  # sharded over the mesh like the batch.
    out = _place(out, NamedSharding(mesh, P()))  # gather, then drop the padding.
    return jax.tree_util.tree_map(lambda x: x[:size], out)


@partial(jax.jit, static_argnames=("fn", "chunk_size", "mesh"))
def _sweep_jit(fn: Callable, batch: PyTree, chunk_size: int | None, mesh: Mesh | None) -> PyTree:
    size = _batch_size(batch)
    if mesh is not None:
        return _sharded(fn, batch, size, chunk_size, mesh)
    return _local(fn, batch, chunk_size)


def sweep(
    fn: Callable[[PyTree], PyTree],
    batch: PyTree,
    *,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> PyTree:
    r"""``fn`` applied to every item of ``batch`` along its leading axis, results in input order.

    result[i] = fn(batch[i]) for i < B (for pytree results, each leaf gets a leading axis B).
    Computed as one ``vmap`` (``chunk_size=None``), as a loop over vmapped chunks of
    ``chunk_size`` items (peak memory of the intermediates bounded by one chunk, independent of
    B), and split over the devices of ``mesh`` when given (``chunk_size`` is then per device).
    The call is jitted; the compilation is cached per (``fn``, shapes, ``chunk_size``, ``mesh``),
    so keep one ``functools.partial`` object to reuse it.

    Guarantee: that of ``fn`` (e.g. ``conv.gram_bound`` → ``upper``); nothing is approximated.
    Reference: JAX's SPMD model (``vmap``, ``shard_map``, ``NamedSharding``).

    Args:
      fn: a pure function of one batch item, e.g.
        ``functools.partial(liplax.conv.gram_bound, input_shape=(32, 32))``; it may return a
        pytree (``power_iteration`` returns ``(estimate, u)``). Must be hashable (functions and
        partials are).
      batch: an array or a pytree of arrays sharing a leading batch size B ≥ 1, e.g. B kernels
        of shape (B, kh, kw, in, out), or a tuple (weights, vectors) for ``fn(item)`` taking a
        tuple.
      chunk_size: ``None`` (one vmap) or a positive int; a chunk larger than the batch (or the
        per-device share) is the whole batch.
      mesh: ``None`` or a :class:`jax.sharding.Mesh`; the batch is sharded over all its axes
        (``NamedSharding(mesh, P(mesh.axis_names))``), padded with copies of its last item up to
        a multiple of ``mesh.size``, and the padding is dropped from the result.
    Returns:
      The results with leading axis B, in the order of ``batch``.
    """
    if not callable(fn):
        raise TypeError(
            f"fn must be a callable of one batch item (e.g. functools.partial(liplax.conv."
            f"gram_bound, input_shape=(32, 32))), got {type(fn).__name__}"
        )
    try:
        hash(fn)
    except TypeError as err:
        raise TypeError(f"fn must be hashable (a function or functools.partial): {err}") from None
    chunk_size = _check_chunk_size(chunk_size)
    mesh = _check_mesh(mesh)
    _batch_size(batch)
    return _sweep_jit(fn, batch, chunk_size, mesh)


# --------------------------------------------------------------------------------------------
# Checkpoints: the bounds of many models of one architecture.
# --------------------------------------------------------------------------------------------


def _model_bounds(graphdef, input_shape: tuple, p, starts, lower_steps, state) -> dict:
    """Trivial and per-layer bounds (and a lower bound) of one model given by its state."""
    model = nnx.merge(graphdef, state)
    layers = top_level_bounds(model, input_shape, p)
    out = {"trivial": bound_of(model, input_shape, p=p), "layers": layers}
    if starts is not None:
        found = local_norm_ascent(lambda x: model(x[None])[0], starts, p=p, steps=lower_steps)
        out["lower"] = found.value
    return out


@lru_cache(maxsize=64)
def _bounds_fn(graphdef, input_shape: tuple, p, lower_steps: int):
    """The bounds function of one architecture, kept so that its hash (identity) is reused."""
    return partial(_model_bounds, graphdef, input_shape, p, None, lower_steps)


def model_sweep(
    models,
    input_shape,
    *,
    p=2,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    xs=None,
    lower_steps: int = 100,
) -> dict:
    r"""Trivial bound, per-layer bounds and lower bounds of many models of one architecture.

    The models (e.g. checkpoints of one training run) are split with ``nnx.split``, their states
    stacked along a leading axis and swept with :func:`sweep`, so the bounds of all models are
    computed in one vmapped (chunked, sharded) program: entry i equals
    ``liplax.bounds.trivial_bound(models[i], input_shape, p=p)`` and
    ``liplax.bounds.layer_bounds(models[i], ...)``.

    Guarantee: each :class:`~liplax.guarantee.Bound` keeps its kind (``upper`` when every factor
    is ``exact``/``upper``, else ``estimate``; docs/design.md §composition). With data points
    ``xs``, each model's lower bound is :func:`liplax.certify.local_norm_ascent` started at the
    origin and at ``xs`` (the largest local Jacobian norm found, attained: an ``estimate`` from
    below), and ``tightness`` = trivial / lower.

    Args:
      models: a non-empty list or tuple of Flax NNX models with the same graph (same layers,
        shapes and static attributes).
      input_shape: the per-example input shape (no batch axis), static.
      p: the norm (1, 2 or ``math.inf``), as :func:`liplax.bounds.trivial_bound`.
      chunk_size, mesh: as :func:`sweep`.
      xs: optional ``(r, *input_shape)`` starting points of the lower-bound ascent (a few data
        points; the origin is added).
      lower_steps: Adam steps of that ascent (static).
    Returns:
      ``{"trivial": Bound(values (M,), kind), "layers": [(name, Bound(values (M,), kind)), …]}``
      and, with ``xs``, ``"lower": Bound(values (M,), "estimate")`` and ``"tightness"`` (M,).
    """
    if not isinstance(models, list | tuple) or not models:
        raise ValueError(
            f"models must be a non-empty list or tuple of NNX models, got {type(models).__name__}"
            + (" of length 0" if isinstance(models, list | tuple) else "")
        )
    for i, m in enumerate(models):
        if not isinstance(m, nnx.Module):
            raise TypeError(f"models[{i}] must be a flax.nnx.Module, got {type(m).__name__}")
    check_p(p, "model_sweep")
    shape = static_shape(input_shape)
    splits = [nnx.split(m) for m in models]
    graphdef = splits[0][0]
    for i, (g, _) in enumerate(splits[1:], start=1):
        if g != graphdef:
            raise ValueError(
                f"models[{i}] does not have the architecture of models[0] (different nnx graph): "
                "model_sweep needs models of one architecture"
            )
    starts = None
    if xs is not None:
        xs = jnp.asarray(xs)
        if xs.ndim != len(shape) + 1 or tuple(xs.shape[1:]) != shape or xs.shape[0] < 1:
            raise ValueError(
                f"xs must be a batch of inputs of shape (r, *{shape}), got {tuple(xs.shape)}"
            )
        starts = jnp.concatenate([jnp.zeros_like(xs[:1]), xs], axis=0)
    states = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[s for _, s in splits])
    if starts is None:  # one cached function per architecture: sweep's jit cache then hits
        fn = _bounds_fn(graphdef, shape, p, lower_steps)
    else:
        fn = partial(_model_bounds, graphdef, shape, p, starts, lower_steps)
    out = sweep(fn, states, chunk_size=chunk_size, mesh=mesh)
    names = [layer_name(node.layer) for node in top_level(models[0])]
    result = {"trivial": out["trivial"], "layers": list(zip(names, out["layers"], strict=True))}
    if starts is not None:
        result["lower"] = Bound(out["lower"], "estimate")
        result["tightness"] = tightness_ratio(out["trivial"].value, out["lower"])
    return result
