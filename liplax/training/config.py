r"""Named training configurations: the :class:`Config` record, its overrides and validation.

A :class:`Config` is a flat, frozen record of everything a training run depends on (model, loss,
penalty, optimizer, schedule, evaluation), so that a run is reproducible from its name, its
overrides and its seed, and a checkpoint can rebuild its model from the config it stores.
``liplax train --config NAME --set key=value`` selects one of :data:`CONFIGS` and overrides fields
(:func:`with_overrides` parses and type-checks the values).

The architectures a config names are built by :func:`liplax.training.models.build_model`.

References: Delattre et al., "Efficient bound of Lipschitz constant for convolutional layers by
Gram iteration", ICML 2023 (penalizing the bound); Anil, Lucas & Grosse, "Sorting out Lipschitz
function approximation", ICML 2019; Béthune et al., "Pay attention to your loss", 2022.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence

# No JAX, Flax or liplax.nn here: the command line parses and checks a config without them.

#: the free-weight MLPs (their weights are trained as they are; the penalties shape them).
FREE_MLPS = ("sin_mlp", "abs_mlp", "crelu_mlp", "relu_mlp")
#: the activations of the free-weight CNNs (``Config.activation``; liplax.training.models_cnn).
CNN_ACTIVATIONS = ("abs", "maxmin")
MODELS = ("sin_mlp", "abs_mlp", "crelu_mlp", "relu_mlp", "groupsort_mlp", "cnn", "cnn_strided",
          "cnn_aol", "aol_mlp", "cnn_exact")
PENALTIES = ("none", "log", "product", "hinge")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Fields can be overridden with ``--set key=value``.

    Attributes:
      name: the configuration's name (for reports).
      dataset: ``digits`` (bundled, no download), ``fashion-mnist`` or ``mnist``.
      model: one of :data:`MODELS`.
      widths: hidden widths (for ``cnn``: channels of the convolution blocks).
      p: the norm of the bound and the certificates: ``2`` or ``inf``.
      loss, temperature, offset, margin, alpha: the data loss (see :mod:`liplax.training.losses`)
        and its parameters (each loss uses the ones it needs).
      penalty: ``none`` or the trivial-bound penalty's kind (``log``, ``product``, ``hinge``).
      penalty_weight: λ in loss + λ·penalty; ``penalty_warmup``: steps of its linear ramp from 0.
      penalty_target: the hinge penalty's threshold.
      gap_weight: μ of the gap penalty μ·(log U − log of the gain attained at data points)
        (:mod:`liplax.training.gap`; 0 = off; needs ``penalty=log`` and a free-weight MLP);
        ``gap_points``: batch examples it searches; ``gap_power_iters``: its power steps.
      bjorck_iters, bjorck_order, bjorck_stop_gradient: the Björck orthonormalization of
        ``groupsort_mlp``'s layers (:func:`liplax.nn.bjorck.bjorck`): steps per forward pass, order
        (1 or 2), and whether only the last step is differentiated. The bound certifies the weight
        actually applied (exact SVD), so fewer steps are never unsound, only less orthonormal.
      init_norm: 0 for LeCun-normal weights; > 0 for orthogonal weights scaled to this spectral
        norm in every layer of a free-weight MLP, and (co-)isometric convolutions of that norm
        (:func:`liplax.nn.init.isometric_conv_init`) in ``cnn_strided``/``cnn_exact`` (the
        trivial bound starts at init_norm^(layers)).
      bias: the CNN families' convolutions carry a bias (it changes no layer's Lipschitz
        constant; the MLPs' hidden layers always have one, the bound's head never).
      activation: the free-weight CNNs' (``cnn_strided``, ``cnn_exact``) activation: ``abs``
        (|·|) or ``maxmin`` (GroupSort with groups of 2 over channels; even widths); both have
        an orthogonal Jacobian wherever they are differentiable, so every factor stays
        attainable.
      grouped: run the penalty's power steps of same-shape layers as one batched step per group
        (:func:`liplax.grouped.grouped_log_bound`; same values; faster for CNNs on CPU).
      optimizer, learning_rate, lr_warmup, weight_decay: optax optimizer and schedule (linear
        warm-up then cosine decay to 0 over ``steps``).
      batch_size, steps: global batch size and number of optimizer steps.
      micro_batches: the step runs the model on this many equal slices of the batch (each its
        own chain of operations, joined at the logits), then takes the loss of the whole batch:
        the same objective and gradient, summed in another order. XLA's CPU backend runs a
        convolution over 32 examples ~1.8× as fast per example as over 128 (one core), and runs
        independent slices on separate cores (``fashion-cnn4``'s step, 8 slices: 1.8×;
        ``benchmarks/micro_batches.py``). Must divide ``batch_size``. Every model of
        :data:`MODELS` computes its forward pass without moving state; a layer that moves state
        there (``SpectralDense``'s power step, used by experiments only) would move it per slice.
      log_every: steps per jitted chunk (progress and metrics granularity).
      eval_every, checkpoint_every: evaluation and checkpoint periods (multiples of ``log_every``).
      keep_checkpoints: how many checkpoints to keep.
      eval_examples: test examples used by evaluations during training (all at the end).
      eps: the radii of certified accuracy (in input units, inputs in [0, 1]).
      lower_steps, lower_restarts: budget of the empirical lower bound's ascent.
      seed: the run's seed (parameters, data order, evaluation keys).
    """

    name: str = "custom"
    dataset: str = "digits"
    model: str = "sin_mlp"
    widths: tuple[int, ...] = (128,)
    p: float = 2.0
    loss: str = "ce"
    temperature: float = 1.0
    offset: float = 0.0
    margin: float = 1.0
    alpha: float = 10.0
    penalty: str = "log"
    penalty_weight: float = 0.1
    penalty_warmup: int = 0
    penalty_target: float = 1.0
    gap_weight: float = 0.0
    gap_points: int = 4
    gap_power_iters: int = 3
    bjorck_iters: int = 15
    bjorck_order: int = 1
    bjorck_stop_gradient: bool = False
    init_norm: float = 0.0
    bias: bool = False
    activation: str = "abs"
    grouped: bool = False
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    lr_warmup: int = 0
    weight_decay: float = 0.0
    batch_size: int = 128
    micro_batches: int = 1
    steps: int = 1000
    log_every: int = 50
    eval_every: int = 100
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    eval_examples: int = 1000
    eps: tuple[float, ...] = (0.1, 0.3, 0.5)
    lower_steps: int = 100
    lower_restarts: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists; ``inf`` becomes the string ``"inf"``)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
            elif isinstance(v, float) and math.isinf(v):
                out[k] = "inf"
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer checkpoint format)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**{k: _coerce(k, v) for k, v in d.items()})


_FIELD_TYPES = typing.get_type_hints(Config)


def _coerce(key: str, value):
    """Convert ``value`` (a string from ``--set`` or a JSON value) to the type of field ``key``."""
    typ = _FIELD_TYPES[key]
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if typing.get_origin(typ) is tuple:
            (elem, _) = typing.get_args(typ)
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(elem(x) for x in items if str(x).strip() != "")
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return typ(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"config: {key}={value!r} is not a valid {_type_name(typ)}"
        ) from None


def _type_name(typ) -> str:
    if typing.get_origin(typ) is tuple:
        return f"comma-separated list of {typing.get_args(typ)[0].__name__}"
    return typ.__name__ if isinstance(typ, type | types.GenericAlias) else str(typ)


def _validate(c: Config) -> None:
    def bad(field: str, expected: str):
        raise ValueError(f"config: {field}={getattr(c, field)!r}; expected {expected}")

    if c.dataset not in ("digits", "fashion-mnist", "mnist"):
        bad("dataset", "one of digits, fashion-mnist, mnist")
    if c.model not in MODELS:
        bad("model", f"one of {', '.join(MODELS)}")
    if not c.widths or any(w < 1 for w in c.widths):
        bad("widths", "a non-empty list of positive integers")
    if c.p not in (2.0, math.inf):
        bad("p", "2 or inf")
    if c.loss not in ("ce", "offset_ce", "hinge", "hkr"):
        bad("loss", "one of ce, offset_ce, hinge, hkr")
    if c.penalty not in PENALTIES:
        bad("penalty", f"one of {', '.join(PENALTIES)}")
    if c.optimizer not in OPTIMIZERS:
        bad("optimizer", f"one of {', '.join(OPTIMIZERS)}")
    for f in ("temperature", "learning_rate", "penalty_target"):
        if not getattr(c, f) > 0 or not math.isfinite(getattr(c, f)):
            bad(f, "a finite number > 0")
    for f in ("offset", "margin", "alpha", "penalty_weight", "weight_decay", "gap_weight",
              "init_norm"):
        if not getattr(c, f) >= 0 or not math.isfinite(getattr(c, f)):
            bad(f, "a finite number ≥ 0")
    if c.micro_batches < 1 or c.batch_size % c.micro_batches:
        bad("micro_batches", f"a divisor of batch_size={c.batch_size}")
    for f in ("batch_size", "steps", "log_every", "keep_checkpoints", "eval_examples",
              "lower_steps", "lower_restarts", "gap_points", "gap_power_iters", "bjorck_iters"):
        if getattr(c, f) < 1:
            bad(f, "an integer ≥ 1")
    for f in ("penalty_warmup", "lr_warmup", "seed"):
        if getattr(c, f) < 0:
            bad(f, "an integer ≥ 0")
    for f in ("eval_every", "checkpoint_every"):
        v = getattr(c, f)
        if v < 1 or v % c.log_every:
            bad(f, f"a positive multiple of log_every={c.log_every}")
    if any(not (e >= 0 and math.isfinite(e)) for e in c.eps):
        bad("eps", "finite radii ≥ 0")
    if c.gap_weight > 0 and c.penalty != "log":
        bad("penalty", "log when gap_weight > 0 (the gap is log U − log of the attained gain)")
    if c.gap_weight > 0 and c.model not in (*FREE_MLPS, "cnn", "cnn_strided",
                                            "cnn_exact"):  # training.gap
        bad("model", "a free-weight network (sin/abs/crelu/relu_mlp, cnn, cnn_strided, "
            "cnn_exact) when gap_weight > 0")
    if c.init_norm > 0 and c.model not in (*FREE_MLPS, "cnn_strided", "cnn_exact"):
        bad("model", "a free-weight MLP or cnn_strided/cnn_exact when init_norm > 0")
    if c.bias and c.model not in ("cnn_strided", "cnn_exact", "cnn_aol"):
        bad("bias", "false unless model is cnn_strided, cnn_exact or cnn_aol (the MLPs' hidden "
            "layers always have a bias)")
    if c.activation not in CNN_ACTIVATIONS:
        bad("activation", "abs or maxmin")
    if c.activation != "abs" and c.model not in ("cnn_strided", "cnn_exact"):
        bad("activation", "abs unless model is cnn_strided or cnn_exact (the other models fix "
            "their activation)")
    if c.activation == "maxmin" and any(w % 2 for w in c.widths):
        bad("widths", "even widths (MaxMin sorts pairs)")
    if c.bjorck_order not in (1, 2):
        bad("bjorck_order", "1 or 2")
    if c.model in ("groupsort_mlp", "aol_mlp") and any(w % 2 for w in c.widths):
        bad("widths", "even widths (GroupSort sorts pairs)")


def with_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """Apply ``key=value`` strings (``--set``) to ``config``; unknown keys and bad values raise."""
    changes = {}
    known = {f.name for f in dataclasses.fields(Config)}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key not in known:
            raise ValueError(f"--set: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        changes[key] = _coerce(key, value.strip())
    return dataclasses.replace(config, **changes)


# Fashion-MNIST CNNs with 4 convolutions 16-32-32-32, one budget (15000 steps of 128, ≈ 32
# epochs): the tight strided recipe (log penalty λ 0.085 + gap μ 0.1, experiments/README.md §7),
# the same network unpenalized, both in 8 micro-batches (the same step, 1.8× faster on CPU), and
# the AOL 1-Lipschitz baseline (unsplit: its layers rescale their kernels in the forward pass).
_CNN4_COMMON = dict(
    dataset="fashion-mnist", widths=(16, 32, 32, 32), batch_size=128, steps=15000,
    learning_rate=2e-3, log_every=100, eval_every=2000, checkpoint_every=2000, eval_examples=1000,
    eps=(0.1, 0.3, 0.5, 1.0),
)
_CNN4 = {
    "fashion-cnn4": Config(name="fashion-cnn4", model="cnn_strided", penalty_weight=0.085,
                           gap_weight=0.1, micro_batches=8, **_CNN4_COMMON),
    "fashion-cnn4-nopen": Config(name="fashion-cnn4-nopen", model="cnn_strided", penalty="none",
                                 micro_batches=8, **_CNN4_COMMON),
    "fashion-cnn4-aol": Config(name="fashion-cnn4-aol", model="cnn_aol", penalty="none",
                               loss="offset_ce", offset=1.5, temperature=8.0, **_CNN4_COMMON),
}

CONFIGS: dict[str, Config] = {
    # The default (make demo): digits, a bias-free sinusoidal MLP, log trivial-bound penalty.
    "default": Config(name="default"),
    # Fashion-MNIST MLP: a tight trivial bound at ≥ 85% clean accuracy.
    "fashion-sin": Config(
        name="fashion-sin", dataset="fashion-mnist", widths=(256,), batch_size=256, steps=4000,
        learning_rate=2e-3, penalty_weight=0.1, eval_every=500, checkpoint_every=1000,
        eval_examples=2000, log_every=100,
    ),
    # The same architecture without the penalty (the comparison of the README's figure).
    "fashion-sin-nopen": Config(
        name="fashion-sin-nopen", dataset="fashion-mnist", widths=(256,), batch_size=256,
        steps=4000, learning_rate=2e-3, penalty="none", eval_every=500, checkpoint_every=1000,
        eval_examples=2000, log_every=100,
    ),
    "relu": Config(name="relu", model="relu_mlp", widths=(128, 128), penalty="none"),
    "relu-pen": Config(name="relu-pen", model="relu_mlp", widths=(128, 128)),
    "abs": Config(name="abs", model="abs_mlp", widths=(128, 128)),
    "crelu": Config(name="crelu", model="crelu_mlp", widths=(128,)),
    "groupsort": Config(
        name="groupsort", model="groupsort_mlp", widths=(128, 128), penalty="none", loss="hkr",
        margin=0.1, alpha=50.0,
    ),
    "cnn": Config(name="cnn", model="cnn", widths=(16, 32), penalty_weight=0.05, grouped=True),
    **_CNN4,
}

# Issue 13: 4 hidden layers of 128 on Fashion-MNIST, one budget (8000 steps of 256) for all.
_MLP4 = dict(
    dataset="fashion-mnist", widths=(128,) * 4, batch_size=256, steps=8000, learning_rate=2e-3,
    log_every=100, eval_every=1000, checkpoint_every=2000, eval_examples=2000,
    eps=(0.1, 0.3, 0.5, 1.0),
)
_HKR = dict(penalty="none", loss="hkr", margin=0.1, alpha=50.0)
CONFIGS.update({
    # The recipe (experiments/README.md §6): |·| layers with orthogonal initial weights of norm
    # 1, the log penalty and the gap penalty; and the same network unpenalized.
    "fashion-mlp4": Config(name="fashion-mlp4", model="abs_mlp", init_norm=1.0,
                           penalty_weight=0.1, gap_weight=1.0, **_MLP4),
    "fashion-mlp4-nopen": Config(name="fashion-mlp4-nopen", model="abs_mlp", init_norm=1.0,
                                 penalty="none", **_MLP4),
    # The sinusoidal recipe (log 0.15 + gap 0.5) and its unpenalized twin.
    "fashion-mlp4-sin": Config(name="fashion-mlp4-sin", penalty_weight=0.15, gap_weight=0.5,
                               **_MLP4),
    "fashion-mlp4-sin-nopen": Config(name="fashion-mlp4-sin-nopen", penalty="none", **_MLP4),
    # Björck with 15 differentiated steps: the strong baseline. bjorck_stop_gradient=true runs
    # in 0.4× the step time but certifies less (experiments/README.md §6).
    "fashion-groupsort4": Config(name="fashion-groupsort4", model="groupsort_mlp", **_HKR,
                                 **_MLP4),
    "fashion-aol4": Config(name="fashion-aol4", model="aol_mlp", **_HKR, **_MLP4),
})


def get_config(name: str, overrides: Sequence[str] = ()) -> Config:
    """The named configuration with ``key=value`` overrides applied."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}")
    return with_overrides(CONFIGS[name], overrides)


__all__ = [
    "CONFIGS", "MODELS", "OPTIMIZERS", "PENALTIES", "Config", "get_config", "with_overrides",
]
