"""liplax: neural networks whose Lipschitz constant is known, not guessed.

Modules (one concept each; lower ones never import higher ones):

- :mod:`liplax.guarantee`: :class:`Bound` and the ``exact``/``upper``/``estimate`` vocabulary.
- :mod:`liplax.linalg`: operator norms of matrices.
- :mod:`liplax.conv`: operator norms of convolutions (circular, zero padding, strides).
"""

from liplax import conv, linalg
from liplax.guarantee import Bound, compose, require_certified

__all__ = ["Bound", "compose", "require_certified", "conv", "linalg"]
__version__ = "0.1.0"
