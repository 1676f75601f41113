"""Verifiers for comparison with liplax's bounds (the optional ``verify`` extra).

- :func:`lipsdp`: LipSDP-Neuron (Fazlyab et al. 2019), an ``upper`` bound on the ℓ2 constant.
- :func:`lipopt`: the LiPopt LP hierarchy (Latorre, Rolland, Cevher 2020), an ``upper`` bound on
  the ℓ∞ (or ℓ1) constant.
- :func:`exact_lipschitz`: the ``exact`` constant of small bias-free ReLU/|·|/CReLU networks.
- :func:`trivial_bound`: the product of the layers' norms, for comparison.
- adapters: :func:`weights_from_list`, :func:`weights_from_model`, :func:`crelu_to_relu`,
  :func:`network_function` (the network as a JAX function, for lower bounds).

All take ``weights = [W1, …, W_L]`` in flax's ``(in, out)`` layout: the network is
x ↦ σ(… σ(x @ W1) …) @ W_L with x a row vector; biases are ignored. They run in float64 NumPy,
cvxpy (SCS/Clarabel) and SciPy's HiGHS, outside JAX. A solver that does not reach optimality
raises :class:`SolverError` with its status; a problem too large for the method raises
:class:`TooLarge` saying what it would need.
"""

from liplax.verify._common import (
    SolverError,
    TooLarge,
    VerifierResult,
    trivial_bound,
)
from liplax.verify.adapters import (
    crelu_to_relu,
    network_function,
    weights_from_list,
    weights_from_model,
)
from liplax.verify.exact import exact_lipschitz
from liplax.verify.lipopt import lipopt
from liplax.verify.lipsdp import lipsdp

__all__ = [
    "SolverError",
    "TooLarge",
    "VerifierResult",
    "crelu_to_relu",
    "exact_lipschitz",
    "lipopt",
    "lipsdp",
    "network_function",
    "trivial_bound",
    "weights_from_list",
    "weights_from_model",
]
