"""Training Lipschitz networks: one module per job (docs/design.md §training).

- :mod:`~liplax.training.config`: :class:`Config`, the named :data:`CONFIGS`, ``--set`` overrides
  (no JAX: the command line parses with it alone);
- :mod:`~liplax.training.models`: :func:`build_model` (a config's network) and
  :func:`lipschitz_mlp` (the experiments' 1-Lipschitz MLPs);
- :mod:`~liplax.training.data`: datasets (bundled digits, MNIST-format IDX files) and the seeded
  batch order;
- :mod:`~liplax.training.losses`: margin losses of ``(logits, labels)``;
- :mod:`~liplax.training.state`: :class:`TrainState`, :func:`init_run`, the optimizer;
- :mod:`~liplax.training.step`: one jitted chunk of steps (objective, penalty weight, batches);
- :mod:`~liplax.training.loop`: :func:`train` (config → checkpoints, report, plot) and
  :func:`fit` (Adam on any loss of an NNX model, for experiments);
- :mod:`~liplax.training.evaluation`: accuracy, certified bound, lower bound, per-layer gains;
- :mod:`~liplax.training.checkpoint`: orbax checkpoints and :func:`load_run`;
- :mod:`~liplax.training.outputs`: the progress bar, ``report.json``, ``training.png``.

Names and submodules load on first access, like :mod:`liplax` itself.
"""

import importlib

_SUBMODULES = frozenset({
    "checkpoint", "config", "data", "evaluation", "loop", "losses", "models", "outputs", "state",
    "step",
})
_NAMES = {
    **dict.fromkeys(("CONFIGS", "Config", "get_config", "with_overrides"), "config"),
    **dict.fromkeys(("build_model", "lipschitz_mlp"), "models"),
    **dict.fromkeys(("Run", "TrainState", "eval_model", "init_run", "make_optimizer"), "state"),
    **dict.fromkeys(("chunk_batch_indices", "loss_function", "penalty_weight"), "step"),
    **dict.fromkeys(("fit", "settle_power_iterations", "train"), "loop"),
    **dict.fromkeys(("CheckpointError", "flat_to_state", "load_run", "state_to_flat"),
                    "checkpoint"),
    **dict.fromkeys(("REPORT_KEYS", "plot_history"), "outputs"),
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_SUBMODULES})
