"""Certified Lipschitz bounds of any JAX function or Flax NNX module, read from its jaxpr.

See :func:`lipschitz_bound` and :func:`log_bound` (:mod:`liplax.traced._api`); the walker and
its rule registry are in :mod:`liplax.traced._walk` (``RULES``, ``register``).
"""

from liplax.traced import _activations, _control, _elementwise, _linear, _structural  # noqa: F401
from liplax.traced._api import lipschitz_bound, log_bound
from liplax.traced._errors import TracedBoundError
from liplax.traced._region import REGION_NAME, bounded
from liplax.traced._walk import RULES, register

__all__ = [
    "REGION_NAME", "RULES", "TracedBoundError", "bounded", "lipschitz_bound", "log_bound",
    "register",
]
