"""Shared pieces of the training tests: a tiny configuration and state comparisons."""

from __future__ import annotations

import jax
import numpy as np

from liplax import training

# A run of a few seconds of compute on digits: 2 evaluations, 4 checkpoints.
TINY = [
    "widths=8", "steps=40", "batch_size=64", "log_every=5", "eval_every=20",
    "checkpoint_every=10", "lower_steps=8", "lower_restarts=2", "eval_examples=200",
    "eps=0.05,0.1",
]


def tiny_config(*extra: str) -> training.Config:
    return training.get_config("default", [*TINY, *extra])


def final_state(folder) -> dict[str, np.ndarray]:
    """The newest checkpoint of a run folder as ``{leaf name: array}``."""
    run, _ = training.load_run(folder)
    return training.state_to_flat(run.state)


def assert_same_state(a: dict, b: dict, *, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if rtol == 0.0:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol, err_msg=k)


def same_metrics(r1: dict, r2: dict) -> None:
    for k in ("lipschitz_upper", "lipschitz_lower", "clean_accuracy", "certified_accuracy",
              "steps"):
        assert r1[k] == r2[k], k


__all__ = ["TINY", "assert_same_state", "final_state", "jax", "same_metrics", "tiny_config"]
