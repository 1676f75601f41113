"""liplax: neural networks whose Lipschitz constant is known, not guessed.

Modules (one concept each; lower ones never import higher ones):

- :mod:`liplax.guarantee`: :class:`Bound` and the ``exact``/``upper``/``estimate`` vocabulary.
- :mod:`liplax.linalg`: operator norms of matrices.
- :mod:`liplax.conv`: operator norms of convolutions (circular, zero padding, strides).
- :mod:`liplax.nn`: Lipschitz layers and activations for Flax NNX, each with its bound.
- :mod:`liplax.bounds`: a network's trivial bound, its log form and its training penalty.
- :mod:`liplax.certify`: certified radius and accuracy, empirical lower bounds, tightness.
- :mod:`liplax.verify` (optional ``verify`` extra, imported on first use): LipSDP, LiPopt and
  exact constants of small networks.
- :mod:`liplax.sweep`: one bound operator over a batch of weights or kernels (vmap, chunks, mesh);
  the bounds of many checkpoints of one architecture (``model_sweep``).
"""

import importlib

from liplax import bounds, certify, conv, linalg, nn
from liplax.guarantee import Bound, compose, require_certified
from liplax.sweep import model_sweep, sweep

__all__ = [
    "Bound", "compose", "require_certified", "bounds", "certify", "conv", "linalg",
    "model_sweep", "nn", "sweep",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # liplax.verify needs the solver extra (cvxpy, SciPy): imported on first access only.
    if name == "verify":
        return importlib.import_module("liplax.verify")
    raise AttributeError(f"module 'liplax' has no attribute {name!r}")
