"""Certificates from a Lipschitz bound, empirical lower bounds on the constant, and tightness.

- :mod:`liplax.certify.certificates`: :func:`certified_radius`, :func:`certified_accuracy`,
  :func:`margins` (an upper bound of kind ``exact``/``upper`` in, a guaranteed radius out).
- :mod:`liplax.certify.lower_bound`: :func:`lipschitz_lower_bound`, :func:`local_norm_ascent`,
  :func:`local_norm` (values attained by the network: ``estimate`` from below, never certificates).
- :mod:`liplax.certify.compare`: :func:`tightness` and :func:`tightness_ratio`, upper / lower
  (≥ 1; 1 means tight), the one definition every report uses.
"""

from liplax.certify.certificates import (
    HEADS,
    certified_accuracy,
    certified_radius,
    margins,
    upper_value,
)
from liplax.certify.compare import Tightness, tightness, tightness_ratio
from liplax.certify.lower_bound import (
    LocalAscent,
    LowerBound,
    lipschitz_lower_bound,
    local_norm,
    local_norm_ascent,
)

__all__ = [
    "HEADS", "LocalAscent", "LowerBound", "Tightness", "certified_accuracy", "certified_radius",
    "lipschitz_lower_bound", "local_norm", "local_norm_ascent", "margins", "tightness",
    "tightness_ratio", "upper_value",
]
