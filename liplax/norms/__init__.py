r"""Operator norms, split by method; every routine takes an operator and returns a Bound.

Operators (:mod:`liplax.norms.operator`): :class:`DenseOperator` (x ↦ x @ w) and
:class:`ConvOperator` (the ``flax.nnx.Conv`` layer with its padding and strides resolved once).
Routines (each returns a :class:`~liplax.guarantee.Bound` whose kind is declared by its
``@guarantee`` and readable as ``routine.guarantee``):

=====================  ======================================  ==========  ==========
routine                method                                  dense       conv
=====================  ======================================  ==========  ==========
``spectral_norm``      :mod:`~liplax.norms.exact` (SVD / DFT)   exact       exact (circular only)
``gram_bound``         :mod:`~liplax.norms.gram`                upper       upper
``power_iteration``    :mod:`~liplax.norms.power`               estimate    estimate
``norm_inf``           :mod:`~liplax.norms.induced` (ℓ∞)        exact       upper
``norm_1``             :mod:`~liplax.norms.induced` (ℓ1)        exact       upper
=====================  ======================================  ==========  ==========

Building blocks: :mod:`~liplax.norms.dft` (circular reformulation of a convolution: polyphase
kernel, frequency matrices, DFT rounding) and :mod:`~liplax.norms.scaling` (exact power-of-two
scaling on the bits). :mod:`liplax.linalg` and :mod:`liplax.conv` are the one-line convenience
forms on bare arrays. ``docs/design.md §norms``.
"""

from liplax.norms.exact import spectral_norm
from liplax.norms.gram import gram_bound
from liplax.norms.induced import norm_1, norm_inf
from liplax.norms.operator import ConvOperator, DenseOperator, LinearOperator
from liplax.norms.power import power_iteration

ROUTINES = (spectral_norm, gram_bound, power_iteration, norm_inf, norm_1)
"""Every norm routine; the contract test (tests/test_norms_contract.py) runs over all of them."""

__all__ = [
    "ROUTINES", "ConvOperator", "DenseOperator", "LinearOperator", "gram_bound", "norm_1",
    "norm_inf", "power_iteration", "spectral_norm",
]
