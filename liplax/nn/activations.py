r"""Activations with known Lipschitz constants: sorting activations and norm-saturating ones.

Each activation is a pure function plus a parameter-free NNX module that declares, for
p ∈ {1, 2, ∞}, its Lipschitz constant (:meth:`lipschitz_constant`) and whether it is
**saturating** for that p (:meth:`is_saturating`): whether its Jacobian is an isometry,
‖Dσ(z)v‖_p = ‖v‖_p at almost every z, so that it passes on the full gain of the layer before it.

Facts (docs/design.md §activations):

- GroupSort (Anil, Lucas, Grosse, *Sorting out Lipschitz function approximation*, ICML 2019):
  sort contiguous groups of ``group_size`` features (descending). The Jacobian is a permutation
  almost everywhere: 1-Lipschitz and saturating in every p. ``MaxMin`` is group size 2, the pair
  (max, min); ``FullSort`` is one group. Not to be confused with CReLU.
- ``Abs``: z ↦ |z|, Jacobian diag(±1): 1-Lipschitz, saturating in every p.
- ``ReLU``: 1-Lipschitz, saturating for no p (dead units lose gain).
- Polyactivations z ↦ (f₁(z), …, f_K(z)) per neuron, output K·d features (the K blocks are
  concatenated on the last axis). At z the gain on a direction v is ‖(f'_k(z_i) v_i)_{i,k}‖_p,
  which is at most ‖(L_1, …, L_K)‖_p ‖v‖_p when each f_k is L_k-Lipschitz (Kuang, Xu,
  Sivaranjani, Lin 2026, as reconstructed in docs/design.md §activations):

  * ``CReLU`` z ↦ (max(z,0), max(−z,0)): derivative (1,0) or (0,1): 1-Lipschitz, saturating in
    every p.
  * ``SinPoly`` z ↦ ((z+sin z)/2, (z−sin z)/2): derivatives a = (1+cos z)/2, b = (1−cos z)/2,
    a, b ≥ 0, a + b = 1, so the ℓ1 gain is 1 everywhere (saturating for p = 1); the ℓ2 gain is
    √((1+cos²z)/2) and the ℓ∞ gain max(a, b), both ≤ 1 with equality at cos z = ±1: Lipschitz
    constant exactly 1 for every p, saturating only for p = 1.
  * ``CosSin`` z ↦ (cos z, sin z): ℓ2 gain √(sin²+cos²) = 1 (saturating for p = 2), ℓ∞ gain
    max(|sin|, |cos|) ≤ 1 (constant 1), ℓ1 gain |sin| + |cos| ≤ √2 (constant √2, at z = π/4).
  * ``PolyActivation(fns, lipschitz=...)``: user components with user-declared constants L_k;
    the bound ‖L‖_p is ``upper`` (it is sound whenever the declared L_k are).

Every constant above is the supremum of the Jacobian norm, attained (or approached) on any input
size, so the bounds of the named activations are ``exact``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from liplax._checks import check_p, positive_int
from liplax.guarantee import Bound
from liplax.nn._base import LipschitzModule, const_bound
from liplax.nn.registry import register_layer

ALL_P = frozenset({1, 2, math.inf})

# --------------------------------------------------------------------------------------------
# Pure functions.
# --------------------------------------------------------------------------------------------


def group_sort(x: jax.Array, group_size: int) -> jax.Array:
    """Sort contiguous groups of ``group_size`` features on the last axis, largest first.

    1-Lipschitz and norm-preserving in every ℓp (Anil et al., ICML 2019).
    """
    group_size = positive_int(group_size, "group_size", "group_sort")
    d = x.shape[-1]
    if d % group_size:
        raise ValueError(
            f"group_sort: group_size={group_size} does not divide the number of features {d} "
            "(last axis)"
        )
    g = x.reshape(*x.shape[:-1], d // group_size, group_size)
    return (-jnp.sort(-g, axis=-1)).reshape(x.shape)


def max_min(x: jax.Array) -> jax.Array:
    """GroupSort with groups of 2: each pair (a, b) becomes (max(a, b), min(a, b))."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"max_min: needs an even number of features on the last axis, got {d}")
    a, b = x[..., 0::2], x[..., 1::2]
    return jnp.stack([jnp.maximum(a, b), jnp.minimum(a, b)], axis=-1).reshape(x.shape)


def full_sort(x: jax.Array) -> jax.Array:
    """GroupSort with a single group: all features of the last axis sorted, largest first."""
    return -jnp.sort(-x, axis=-1)


def crelu(x: jax.Array) -> jax.Array:
    """Concatenated ReLU: (max(z, 0), max(−z, 0)) per feature, output 2·d features."""
    return jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], axis=-1)


def sin_poly(x: jax.Array) -> jax.Array:
    """((z + sin z)/2, (z − sin z)/2) per feature, output 2·d features (ℓ1-saturating)."""
    s = jnp.sin(x)
    return jnp.concatenate([(x + s) / 2, (x - s) / 2], axis=-1)


def cos_sin(x: jax.Array) -> jax.Array:
    """(cos z, sin z) per feature, output 2·d features (ℓ2-saturating)."""
    return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=-1)


def poly_activation(x: jax.Array, fns: Sequence[Callable[[jax.Array], jax.Array]]) -> jax.Array:
    """(f₁(z), …, f_K(z)) per feature, the K blocks concatenated on the last axis."""
    return jnp.concatenate([f(x) for f in fns], axis=-1)


# --------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------


class Activation(LipschitzModule):
    """A parameter-free activation with declared constants per p (see the module docstring)."""

    #: Lipschitz constant per p; kind of those constants.
    constants: dict = {1: 1.0, 2: 1.0, math.inf: 1.0}
    constants_kind: str = "exact"
    saturating_p: frozenset = frozenset()
    #: output features = widen × input features (last axis).
    widen: int = 1

    def lipschitz_constant(self, p=2) -> float:
        """The Lipschitz constant for ℓp (a Python float)."""
        return self.constants[check_p(p, f"{self.layer_name}.lipschitz_constant")]

    def is_saturating(self, p=2) -> bool:
        """Whether ‖Dσ(z)v‖_p = ‖v‖_p for almost every z and every v."""
        return check_p(p, f"{self.layer_name}.is_saturating") in self.saturating_p

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_width(shape[-1])
        return (*shape[:-1], shape[-1] * self.widen)

    def _check_width(self, d: int) -> None:
        return None

    def _bound(self, shape: tuple[int, ...], p: float) -> Bound:
        return const_bound(self.constants[p], self.constants_kind)


def _example(make, width: int = 4):
    """Registration example of an activation: ``make()`` on (2, width) inputs."""
    return lambda rngs: (make(), (2, width))


@register_layer(example=_example(lambda: ReLU()))
class ReLU(Activation):
    """max(z, 0): 1-Lipschitz, not saturating (dead units)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


@register_layer(example=_example(lambda: Abs()))
class Abs(Activation):
    """|z|: 1-Lipschitz and saturating in every p."""

    saturating_p = ALL_P

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.abs(x)


@register_layer(example=_example(lambda: GroupSort(3), 6))
class GroupSort(Activation):
    """Sort groups of ``group_size`` contiguous features (descending): 1-Lipschitz, saturating."""

    saturating_p = ALL_P

    def __init__(self, group_size: int):
        self.group_size = positive_int(group_size, "group_size", "GroupSort")

    def _check_width(self, d: int) -> None:
        if d % self.group_size:
            raise ValueError(
                f"{self.layer_name}: group_size={self.group_size} does not divide the number of "
                f"features {d}"
            )

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_width(x.shape[-1])
        return group_sort(x, self.group_size)


@register_layer(example=_example(lambda: MaxMin()))
class MaxMin(Activation):
    """GroupSort with groups of 2, the pair (max, min): needs an even width."""

    saturating_p = ALL_P

    def _check_width(self, d: int) -> None:
        if d % 2:
            raise ValueError(f"MaxMin: needs an even number of features (width), got width {d}")

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_width(x.shape[-1])
        return max_min(x)


@register_layer(example=_example(lambda: FullSort()))
class FullSort(Activation):
    """Sort all features of the last axis (one group): 1-Lipschitz, saturating."""

    saturating_p = ALL_P

    def __call__(self, x: jax.Array) -> jax.Array:
        return full_sort(x)


@register_layer(example=_example(lambda: PolyActivation((jnp.tanh, jnp.sin), (1.0, 1.0)), 3))
class PolyActivation(Activation):
    """z ↦ (f₁(z), …, f_K(z)) per feature with user-declared Lipschitz constants L_k.

    Args:
      fns: K elementwise functions ℝ → ℝ (jax-traceable).
      lipschitz: the K constants L_k with |f_k(a) − f_k(b)| ≤ L_k|a − b|. The layer bound is
        ‖(L_1, …, L_K)‖_p, kind ``upper``: sound exactly when the declared L_k are.
      saturating: the p's for which the user declares ‖Dσ(z)v‖_p = ‖v‖_p (informative only).
    """

    constants_kind = "upper"

    def __init__(
        self,
        fns: Sequence[Callable[[jax.Array], jax.Array]],
        lipschitz: Sequence[float],
        *,
        saturating: Sequence = (),
    ):
        fns = tuple(fns)
        lipschitz = tuple(float(v) for v in lipschitz)
        if not fns or not all(callable(f) for f in fns):
            raise ValueError(
                f"PolyActivation: fns must be a non-empty sequence of callables, got {fns!r}"
            )
        if len(lipschitz) != len(fns) or any(not (v >= 0 and math.isfinite(v)) for v in lipschitz):
            raise ValueError(
                "PolyActivation: lipschitz must hold one finite non-negative constant per function "
                f"({len(fns)}), got {lipschitz!r}"
            )
        self.fns = fns
        self.lipschitz = lipschitz
        self.widen = len(fns)
        self.constants = {
            1: float(sum(lipschitz)),
            2: math.sqrt(sum(v * v for v in lipschitz)),
            math.inf: max(lipschitz),
        }
        self.saturating_p = frozenset(check_p(p, "PolyActivation saturating") for p in saturating)

    def __call__(self, x: jax.Array) -> jax.Array:
        return poly_activation(x, self.fns)


@register_layer(example=_example(lambda: CReLU(), 3))
class CReLU(Activation):
    """(max(z,0), max(−z,0)): output 2·d features, 1-Lipschitz and saturating in every p."""

    saturating_p = ALL_P
    widen = 2

    def __call__(self, x: jax.Array) -> jax.Array:
        return crelu(x)


@register_layer(example=_example(lambda: SinPoly(), 3))
class SinPoly(Activation):
    """((z+sin z)/2, (z−sin z)/2): output 2·d features, 1-Lipschitz, saturating for p = 1 only."""

    saturating_p = frozenset({1})
    widen = 2

    def __call__(self, x: jax.Array) -> jax.Array:
        return sin_poly(x)


@register_layer(example=_example(lambda: CosSin(), 3))
class CosSin(Activation):
    """(cos z, sin z): output 2·d; constants √2 (p=1), 1 (p=2, saturating), 1 (p=∞)."""

    constants = {1: math.sqrt(2.0), 2: 1.0, math.inf: 1.0}
    saturating_p = frozenset({2})
    widen = 2

    def __call__(self, x: jax.Array) -> jax.Array:
        return cos_sin(x)
