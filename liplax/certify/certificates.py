"""Certified radius and accuracy from a Lipschitz bound (docs/design.md §certificates).

A point is certified at radius ε when no input perturbation of p-norm ≤ ε can change its
predicted class. From a bound L on the logit map's constant, margin = f_y − max_{j≠y} f_j > c·L·ε
suffices, where c is the largest change of a logit difference per unit change of the logits:
c = 2^{1−1/p} for a *global* bound (‖f(x)−f(x')‖_p ≤ L‖x−x'‖_p; c = √2 for ℓ2, 2 for ℓ∞, 1 for
ℓ1) and c = 2 for a *per-logit* bound (each f_i is L-Lipschitz). Ties and misclassified points are
never certified. (Tsuzuku, Sato, Sugiyama 2018; Anil, Lucas, Grosse 2019.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from liplax import _checks
from liplax._radius import certifiable as _certifiable
from liplax._radius import safe_radius as _safe_radius
from liplax.guarantee import Bound, exact_margin, require_certified
from liplax.nn import check_p

HEADS = ("global", "per_logit")


# ----------------------------------------------------------------------------- argument checks


def upper_value(bound, name: str) -> jnp.ndarray:
    """The value of an upper bound given as a :class:`Bound` (exact/upper only) or a number.

    An ``estimate`` is refused (:func:`liplax.guarantee.require_certified`), and so is a concrete
    value that is non-finite or negative; the error names ``name``.
    """
    if isinstance(bound, Bound):
        require_certified(bound, name=name)
        bound = bound.value
    value = _checks.float_array(bound, name)
    _checks.finite(value, name)
    v = _checks.concrete(value)
    if v is not None and np.any(v < 0):
        raise ValueError(f"{name} must be ≥ 0 (a Lipschitz bound), got {v}")
    return value


def _certificate_terms(lipschitz, p, head: str, input_scale):
    """(c, L, min s): the margin factor for the norm and head, the bound, the smallest scale.

    c is the largest |δ_y − δ_j| over logit changes δ with ‖δ‖_p ≤ 1 (global head: 2^{1−1/p})
    or with every |δ_i| ≤ 1 (per-logit head: 2); x ↦ (x − μ)/s is (1/min s)-Lipschitz.
    An ``exact`` bound may sit below the truth by its rounding (guarantee.exact_margin), so L is
    that value rounded up by twice the margin; an ``upper`` bound or a plain number is used as is.
    """
    p = check_p(p, "certify")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    factor = 2.0 if head == "per_logit" else 2.0 ** (1.0 - 1.0 / p)
    bound = upper_value(lipschitz, "lipschitz")
    if isinstance(lipschitz, Bound) and lipschitz.kind == "exact":
        bound = bound * (1.0 + 2.0 * exact_margin(bound.dtype))
    s = _checks.float_array(input_scale, "input_scale")
    _checks.finite(s, "input_scale")
    v = _checks.concrete(s)
    if v is not None and (v.size == 0 or np.any(v <= 0)):
        raise ValueError(f"input_scale must be positive (the normalization's divisor), got {v}")
    return factor, bound, jnp.min(s)


def margins(logits, labels) -> jnp.ndarray:
    """f_y − max_{j≠y} f_j per example (≤ 0 for a misclassified point or a tie)."""
    logits = _checks.float_array(logits, "logits")
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must have a last (class) axis of size ≥ 2, got shape {logits.shape}"
        )
    _checks.finite(logits, "logits")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, got {labels.shape}"
        )
    lv = _checks.concrete(labels)
    k = logits.shape[-1]
    if lv is not None and np.any((lv < 0) | (lv >= k)):
        raise ValueError(f"labels must lie in [0, {k}), got values outside: {np.unique(lv)}")
    onehot = jax.nn.one_hot(labels, k, dtype=bool)
    true = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    runner_up = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    return true - runner_up


# ----------------------------------------------------------------------------- certificates


def certified_radius(
    logits,
    labels,
    lipschitz,
    *,
    p: float | str = 2,
    head: str = "global",
    input_scale=1.0,
) -> jnp.ndarray:
    """Certified radius per example: margin / (c·L) · min(input_scale), and 0 when margin ≤ 0.

    Args:
      logits: ``(..., k)`` network outputs, k ≥ 2.
      labels: integer labels of shape ``logits.shape[:-1]``.
      lipschitz: a :class:`~liplax.guarantee.Bound` of kind ``exact`` or ``upper`` (an
        ``estimate`` is refused), or a plain number/array (taken to be an upper bound). Scalar or
        broadcastable to the labels (per-example bounds).
      p: input norm: ``2``, ``1`` or ``math.inf`` (or ``"inf"``); the bound must be the p→p
        constant (global head) or the p→|·| constant of each logit (per-logit head).
      head: ``"global"``: ‖f(x)−f(x')‖_p ≤ L‖x−x'‖_p, factor c = 2^{1−1/p} (√2 for ℓ2, 2 for ℓ∞,
        1 for ℓ1); ``"per_logit"``: each logit is L-Lipschitz, c = 2.
      input_scale: if the network sees normalized inputs (x − μ)/s, the scale s (a scalar or
        per-feature array); radii are then in raw input units (multiplied by min s).

    Returns:
      the radius (same leading shape as labels). Guarantee: no perturbation of p-norm below the
      radius changes the prediction, provided ``lipschitz`` is a valid bound: the radius is
      rounded down (never above margin·min s/(c·L), rounding, underflow and overflow included;
      see :func:`liplax._radius.safe_radius`). It is inf only for L = 0 (a constant network);
      a radius beyond the dtype's range is its largest finite number.
    """
    factor, L, s = _certificate_terms(lipschitz, p, head, input_scale)
    return _safe_radius(margins(logits, labels), L, factor, s)


def certified_accuracy(
    logits,
    labels,
    lipschitz,
    eps,
    *,
    p: float | str = 2,
    head: str = "global",
    input_scale=1.0,
) -> jnp.ndarray:
    """Fraction of examples certified at radius ``eps``: margin > c·L·eps / min(input_scale).

    ``eps`` is a scalar or a 1-D array of radii (in raw input units when ``input_scale`` is
    given); the result has the shape of ``eps``. At ``eps = 0`` this is the accuracy with ties
    counted as errors. Arguments and guarantee as in :func:`certified_radius`.
    """
    factor, L, s = _certificate_terms(lipschitz, p, head, input_scale)
    eps = _checks.float_array(eps, "eps")
    if eps.ndim > 1:
        raise ValueError(f"eps must be a scalar or a 1-D array of radii, got shape {eps.shape}")
    _checks.finite(eps, "eps")
    ev = _checks.concrete(eps)
    if ev is not None and np.any(ev < 0):
        raise ValueError(f"eps must be ≥ 0, got {ev}")
    m = margins(logits, labels)
    radius = _safe_radius(m, L, factor, s)[..., None]
    ok = _certifiable(*jnp.broadcast_arrays(m, L))[..., None]
    radii = eps.reshape(-1)
    # ε < r̂ ≤ margin·s/(c·L) implies margin > c·L·ε/s; at ε = 0 every positive margin counts.
    certified = ok & ((radii == 0) | (radii < radius))  # (..., radii)
    acc = jnp.mean(certified.reshape(-1, certified.shape[-1]).astype(jnp.float32), axis=0)
    return acc.reshape(eps.shape)


__all__ = ["HEADS", "certified_accuracy", "certified_radius", "margins", "upper_value"]
