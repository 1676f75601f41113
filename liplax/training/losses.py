"""Margin losses for Lipschitz classifiers, as pure functions of ``(logits, labels)``.

Every loss takes ``logits`` of shape ``(batch, k)`` (real floating, k ≥ 2 classes) and integer
``labels`` of shape ``(batch,)`` with values in ``[0, k)``, and returns the scalar mean over the
batch. Shapes and dtypes are checked at trace time; label values are checked only when they are
concrete (outside ``jit``): inside ``jit`` an out-of-range label cannot be detected and gives a
meaningless value. All functions are ``jit``-, ``vmap``- and ``grad``-safe.

Notation: z = logits of one example, y its label, m_y(z) = z_y − max_{j≠y} z_j its margin.

- :func:`cross_entropy`: −log softmax(z)_y.
- :func:`offset_cross_entropy`: CE(τ·(z − offset·e_y)) / τ (Prach & Lampert, ECCV 2022;
  Béthune et al., NeurIPS 2022).
- :func:`multiclass_hinge`: max(0, margin − m_y(z)).
- :func:`kr`: z_y − mean_{j≠y} z_j, a Kantorovich–Rubinstein term to be *maximized*.
- :func:`hkr`: alpha·hinge − kr (Serrurier et al., CVPR 2021).

:data:`LOSSES` names the minimizable ones; :func:`get_loss` binds their parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from liplax import _checks

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- argument checks


def _check(logits, labels) -> tuple[jax.Array, jax.Array]:
    """Validated ``(logits, labels)``: logits (batch, k ≥ 2) real float, labels (batch,) integer."""
    logits = _checks.float_array(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits must have rank 2 (batch, classes), got shape {logits.shape}")
    batch, k = logits.shape
    if batch == 0:
        raise ValueError(f"logits must hold at least one example, got shape {logits.shape}")
    if k < 2:
        raise ValueError(f"logits must have at least 2 classes (columns), got shape {logits.shape}")
    dtype = getattr(labels, "dtype", None)
    dtype = np.dtype(np.asarray(labels).dtype if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
        raise TypeError(f"labels must be an integer array (class indices), got dtype {dtype}")
    labels = jnp.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(
            f"labels must have shape (batch,) = ({batch},) to match logits {logits.shape}, "
            f"got shape {labels.shape}"
        )
    v = _checks.concrete(labels)
    if v is not None and (v.min() < 0 or v.max() >= k):
        raise ValueError(
            f"labels must lie in [0, {k}) for {k} classes, got values in [{v.min()}, {v.max()}]"
        )
    return logits, labels


def _true_and_rest(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(z_y, one-hot mask of y, the logits with z_y replaced by −inf), per example."""
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    z_true = jnp.sum(jnp.where(onehot, logits, 0), axis=-1)
    others = jnp.where(onehot, -jnp.inf, logits)
    return z_true, onehot, others


# ----------------------------------------------------------------------------- losses


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy: mean_i [logsumexp(z_i) − z_{i,y_i}].

    Computed by ``optax.softmax_cross_entropy_with_integer_labels`` (stable log-sum-exp).
    Reference: Goodfellow, Bengio, Courville, *Deep Learning* (2016), §6.2.2.3.
    """
    logits, labels = _check(logits, labels)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def offset_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, offset: float = 0.0, temperature: float = 1.0
) -> jax.Array:
    """Mean cross-entropy with a margin offset and a temperature.

    ``mean_i CE(τ·(z_i − offset·e_{y_i}), y_i) / τ`` with τ = ``temperature`` > 0 and
    ``offset`` ≥ 0: the true logit is lowered by ``offset`` before the softmax, so the loss keeps
    pushing until the margin exceeds roughly ``offset``; τ sets how sharply (as τ → ∞ it tends to
    the hinge max(0, offset − m_y(z))). With offset = 0 and τ = 1 it is :func:`cross_entropy`.
    References: Prach & Lampert, "Almost-orthogonal layers for efficient general-purpose Lipschitz
    networks", ECCV 2022; Béthune, Boissin, Serrurier, Mamalet, Friedrich, González-Sanz, "Pay
    attention to your loss: understanding misconceptions about 1-Lipschitz neural networks",
    NeurIPS 2022.
    """
    logits, labels = _check(logits, labels)
    offset = _checks.real_scalar(offset, "offset")
    temperature = _checks.real_scalar(temperature, "temperature", positive=True)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    shifted = temperature * (logits - offset * onehot)
    per_example = optax.softmax_cross_entropy_with_integer_labels(shifted, labels)
    return jnp.mean(per_example) / temperature


def multiclass_hinge(logits: jax.Array, labels: jax.Array, *, margin: float = 1.0) -> jax.Array:
    """Mean multiclass hinge on the top competing logit.

    ``mean_i max(0, margin − (z_{i,y_i} − max_{j≠y_i} z_{i,j}))``: zero exactly when every
    example's margin is at least ``margin`` (≥ 0). For an L-Lipschitz network a margin μ certifies
    radius μ/(√2·L) in ℓ2, which is why Lipschitz training asks for a margin, not just a sign.
    Reference: Crammer & Singer, JMLR 2001 (multiclass hinge on the top rival); Serrurier et al.,
    CVPR 2021, §3.
    """
    logits, labels = _check(logits, labels)
    margin = _checks.real_scalar(margin, "margin")
    z_true, _, others = _true_and_rest(logits, labels)
    gap = z_true - jnp.max(others, axis=-1)
    return jnp.mean(jax.nn.relu(margin - gap))


def kr(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean multiclass Kantorovich–Rubinstein term, to be MAXIMIZED.

    ``mean_i [z_{i,y_i} − mean_{j≠y_i} z_{i,j}]``.
    Sign convention: larger is better (the true logit above the average of the others). For a
    1-Lipschitz network, the one-vs-rest expectation of z_y over its class minus over the rest is
    the dual form of the Wasserstein-1 distance between the class and the rest; this is its
    per-example multiclass form. :func:`hkr` therefore *subtracts* it from the hinge.
    Reference: Serrurier, Mamalet, González-Sanz, Boissin, Loubes, del Barrio, "Achieving
    robustness in classification using optimal transport with hinge regularization", CVPR 2021.
    """
    logits, labels = _check(logits, labels)
    z_true, _, _ = _true_and_rest(logits, labels)
    k = logits.shape[-1]
    mean_others = (jnp.sum(logits, axis=-1) - z_true) / (k - 1)
    return jnp.mean(z_true - mean_others)


def hkr(
    logits: jax.Array, labels: jax.Array, *, alpha: float = 10.0, margin: float = 1.0
) -> jax.Array:
    """Hinge-Kantorovich–Rubinstein loss: alpha·multiclass_hinge(margin) − kr.

    Minimized: the hinge asks for margin ≥ ``margin`` on every example, the KR term (subtracted)
    keeps spreading the classes apart; ``alpha`` ≥ 0 weighs the two.
    Reference: Serrurier, Mamalet, González-Sanz, Boissin, Loubes, del Barrio, "Achieving
    robustness in classification using optimal transport with hinge regularization", CVPR 2021.
    """
    alpha = _checks.real_scalar(alpha, "alpha")
    return alpha * multiclass_hinge(logits, labels, margin=margin) - kr(logits, labels)


# ----------------------------------------------------------------------------- registry


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "ce": cross_entropy,
    "offset_ce": offset_cross_entropy,
    "hinge": multiclass_hinge,
    "hkr": hkr,
}


def get_loss(name: str, **params) -> LossFn:
    """The loss named ``name`` (a key of :data:`LOSSES`) with ``params`` bound as keywords.

    Unknown names and parameters the loss does not take raise ``ValueError`` listing the valid
    ones; parameter values are checked too (once, here, with dummy inputs).
    """
    if name not in LOSSES:
        raise ValueError(f"name must be one of {sorted(LOSSES)}, got {name!r}")
    fn = LOSSES[name]
    accepted = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} takes the parameters {accepted}, got unknown parameter(s) {unknown}"
        )
    loss = functools.partial(fn, **params)
    loss(jnp.zeros((1, 2), jnp.float32), jnp.zeros((1,), jnp.int32))  # validate params now
    return loss
