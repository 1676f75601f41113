"""What every liplax layer shares: the ``p`` vocabulary, shape conventions and the NNX state type.

Conventions of :mod:`liplax.nn`:

- ``input_shape`` is the shape of **one example, without the batch axis**: ``(in_features,)``
  (or ``(..., in_features)``) for dense layers, ``(H, W, C)`` for convolutions and pooling. A layer
  needs the spatial size because the norm of a convolution depends on it.
- ``p`` is one of ``1``, ``2`` or ``inf`` (``float("inf")``, ``jnp.inf``, ``"inf"``): the layer is
  bounded as a map from (ℝ^n, ‖·‖_p) to (ℝ^m, ‖·‖_p), the input and output flattened per example.
- ``lipschitz_bound`` is the certificate path (``exact``/``upper`` where possible); it never moves
  any state. ``lipschitz_estimate`` is the fast, differentiable path used by the training penalty
  (warm power iteration for ℓ2, one step per call, in training mode only); it may be an
  ``estimate``.
- Training mode versus inference mode follows NNX: a module attribute ``deterministic`` that
  ``model.eval()`` sets to ``True`` and ``model.train()`` to ``False`` (also ``nnx.view(model,
  deterministic=...)``). In inference mode no power-iteration state moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from liplax._checks import P_VALUES, check_p, shape_tuple
from liplax.guarantee import Bound


class PowerIterState(nnx.Variable):
    """Warm-start vector(s) of a power iteration: state, not a parameter (never differentiated).

    Created in ``__init__`` from an explicit ``rngs``; updated in training mode only.
    """


def const_bound(value: float, kind: str) -> Bound:
    """A Bound holding a Python constant (float32, or float64 when x64 is enabled).

    An ``upper`` constant is rounded upward to the array dtype, so it stays an upper bound.
    """
    dtype = np.dtype(jnp.result_type(float))
    v = dtype.type(value)
    if kind == "upper" and float(v) < value:
        v = np.nextafter(v, dtype.type(np.inf))
    return Bound(jnp.asarray(v, dtype=dtype), kind)


class LipschitzModule(nnx.Module):
    """The layer contract (docs/design.md §layer contract).

    A layer declares, once:

    - ``_output_shape(shape)``: the per-example output shape of a checked ``shape`` (a tuple of
      positive ints); ``ValueError`` naming the layer on a mismatch;
    - ``_bound(shape, p) -> Bound``: its certified ℓp constant (``exact``/``upper`` where
      possible) for p ∈ :attr:`supported_p`, already normalized;
    - ``_estimate(shape, p) -> Bound`` (optional, default ``_bound``): the fast value of the
      training penalty (e.g. a warm power step, moving state in training mode only);
    - ``to_plain()`` (optional, default a clone): the layer as plain flax modules computing the
      same function in inference mode;
    - ``power_key(input_shape)``/``power_step(kernels, states)``: only for layers registered
      with a power role (:mod:`liplax.nn.registry`).

    The public :meth:`output_shape`, :meth:`lipschitz_bound` and :meth:`lipschitz_estimate`
    check ``p`` and the shape here, once for every layer, and call the hooks.
    """

    deterministic: bool = False
    #: the p's the layer bounds; any other p is refused by name.
    supported_p: tuple = P_VALUES
    #: "sequential" or "residual" for the containers the model walk descends into.
    container: str | None = None

    @property
    def layer_name(self) -> str:
        return type(self).__name__

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` freezes power-iteration state."""
        if deterministic is not None:
            self.deterministic = deterministic

    # -- the template: checks once, then the hooks -------------------------------------------

    def _checked(self, input_shape, p, method: str) -> tuple[tuple[int, ...], float]:
        where = f"{self.layer_name}.{method}"
        p = check_p(p, where)
        if p not in self.supported_p:
            raise ValueError(
                f"{where}: p={p} is not supported by {self.layer_name} (it bounds p in "
                f"{self.supported_p})"
            )
        shape = shape_tuple(input_shape, self.layer_name)
        self._output_shape(shape)
        return shape, p

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-example output shape for a per-example ``input_shape``; ValueError on mismatch."""
        return self._output_shape(shape_tuple(input_shape, self.layer_name))

    def lipschitz_bound(self, input_shape: Sequence[int], *, p=2) -> Bound:
        """Lipschitz constant of the layer in ℓp on ``input_shape`` (certified where possible)."""
        shape, p = self._checked(input_shape, p, "lipschitz_bound")
        return self._bound(shape, p)

    def lipschitz_estimate(self, input_shape: Sequence[int], *, p=2) -> Bound:
        """Fast differentiable Lipschitz value for the training penalty (default: the bound)."""
        shape, p = self._checked(input_shape, p, "lipschitz_estimate")
        return self._estimate(shape, p)

    # -- the hooks -----------------------------------------------------------------------------

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError(f"{self.layer_name} does not declare _output_shape")

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        raise NotImplementedError(f"{self.layer_name} does not declare _bound")

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        return self._bound(shape, p)

    def to_plain(self):
        """The layer as plain flax modules (default: a clone, the same function)."""
        return nnx.clone(self)

    def power_key(self, input_shape=None) -> tuple:
        """The static arguments of the layer's warm power step (layers with a power role)."""
        raise NotImplementedError(f"{self.layer_name} has no power step")

    def power_step(self, kernels, states):
        """(σ̂ (G,), u' (G, …)) of one batched power step over G stacked same-key layers."""
        raise NotImplementedError(f"{self.layer_name} has no power step")
