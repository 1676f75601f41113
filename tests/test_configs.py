"""Named configurations: overrides, validation, JSON round trip, and the models they build."""

from __future__ import annotations

import math

import pytest
from flax import nnx

from liplax import bounds
from liplax.training.config import CONFIGS, MODELS, Config, get_config, with_overrides
from liplax.training.models import build_model
from tests._helpers import thin


def test_overrides_are_typed():
    c = with_overrides(Config(), ["widths=64,32", "p=inf", "steps=10", "learning_rate=1e-4",
                                  "eps=0.1,0.2", "model=relu_mlp", "log_every=5",
                                  "eval_every=5", "checkpoint_every=10"])
    assert c.widths == (64, 32) and c.p == math.inf and c.steps == 10
    assert c.learning_rate == 1e-4 and c.eps == (0.1, 0.2) and c.model == "relu_mlp"


@pytest.mark.parametrize("item, message", [
    ("steps", "key=value"),
    ("nope=1", "unknown key 'nope'"),
    ("steps=1.5", "steps='1.5' is not a valid int"),
    ("widths=", "widths=(); expected a non-empty list"),
    ("p=1", "p=1.0; expected 2 or inf"),
    ("penalty=l2", "penalty='l2'"),
    ("temperature=0", "temperature=0.0; expected a finite number > 0"),
    ("checkpoint_every=30", "checkpoint_every=30; expected a positive multiple of log_every=50"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_overrides(Config(), [item])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_json_round_trip(name):
    c = CONFIGS[name]
    assert Config.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown keys"):
        Config.from_dict({**c.to_dict(), "extra": 1})


# Every third model by default (an MLP, a free-weight MLP, a CNN); all of them under -m slow.
@pytest.mark.parametrize("model", thin(MODELS, 3))
def test_every_model_builds_runs_and_has_a_certified_bound(model):
    c = get_config("default", [f"model={model}", "widths=8,8"] if model != "cnn"
                   else ["model=cnn", "widths=4,4"])
    net = build_model(c, (8, 8, 1), 10, rngs=nnx.Rngs(0))
    net.eval()
    y = net(nnx.Rngs(1).normal((3, 8, 8, 1)))
    assert y.shape == (3, 10)
    b = bounds.trivial_bound(net, (8, 8, 1))
    assert b.kind in ("exact", "upper") and 0 < float(b.value) < math.inf
    if model == "groupsort_mlp":  # Björck-orthonormal layers and MaxMin: 1-Lipschitz
        assert float(b.value) <= 1 + 1e-3
