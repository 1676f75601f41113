"""liplax: neural networks whose Lipschitz constant is known, not guessed.

Modules (one concept each; lower ones never import higher ones):

- :mod:`liplax.guarantee`: :class:`Bound` and the ``exact``/``upper``/``estimate`` vocabulary.
- :mod:`liplax.norms`: operators (dense, convolution) and their norms, one module per method
  (exact, Gram, power, induced ℓ1/ℓ∞); each routine returns a :class:`Bound`.
- :mod:`liplax.linalg`: operator norms of matrices (one line each over :mod:`liplax.norms`).
- :mod:`liplax.conv`: operator norms of convolutions (circular, zero padding, strides).
- :mod:`liplax.nn`: Lipschitz layers and activations for Flax NNX, each with its bound.
- :mod:`liplax.bounds`: a network's trivial bound, its log form and its training penalty.
- :mod:`liplax.certify`: certified radius and accuracy, empirical lower bounds, tightness.
- :mod:`liplax.verify` (optional ``verify`` extra): LipSDP, LiPopt and exact constants of small
  networks.
- :mod:`liplax.traced`: :func:`lipschitz_bound` of any JAX function or Flax NNX module, read
  from its jaxpr equation by equation.
- :mod:`liplax.sweep`: one bound operator over a batch of weights or kernels (vmap, chunks, mesh);
  the bounds of many checkpoints of one architecture (``model_sweep``).
- :mod:`liplax.training`: configs, models, data, losses, the training loop, evaluation,
  checkpoints and reports (one module each).
- :mod:`liplax.cli`: the ``liplax`` command, one module per subcommand group.

Every submodule and name is imported on first access (PEP 562 module ``__getattr__``):
``import liplax`` loads neither JAX nor Flax, so the ``liplax`` command answers ``--help`` and
refuses bad arguments before paying for them.
"""

import importlib
import sys
import types

from liplax._version import __version__ as __version__

__all__ = [
    "Bound", "compose", "lipschitz_bound", "require_certified", "bounds", "certify", "conv",
    "linalg", "model_sweep", "nn", "norms", "sweep", "traced",
]
_SUBMODULES = frozenset({
    "bounds", "certify", "cli", "conv", "grouped", "guarantee", "linalg", "nn", "norms",
    "traced", "training", "verify",
})
_NAMES = {
    "Bound": "liplax.guarantee", "compose": "liplax.guarantee",
    "require_certified": "liplax.guarantee",
    "sweep": "liplax.sweep", "model_sweep": "liplax.sweep",
    "lipschitz_bound": "liplax.traced",
}


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"liplax.{name}")
    else:
        raise AttributeError(f"module 'liplax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_SUBMODULES})


class _Package(types.ModuleType):
    """``liplax.sweep`` is the function :func:`liplax.sweep.sweep`, as it always was.

    Importing the submodule ``liplax.sweep`` makes Python set the package attribute ``sweep`` to
    the module; this keeps the function there instead (``from liplax.sweep import ...`` and
    ``sys.modules['liplax.sweep']`` still give the module).
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "sweep" and isinstance(value, types.ModuleType):
            value = value.sweep
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
