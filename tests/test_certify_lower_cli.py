"""``liplax certify RUN --lower``: an attained lower bound with its witness, on a tiny digits run.

The reported lower bound must be the gain the network attains at the saved witness (recomputed
here independently, in float64 NumPy from the run's weights), and must not exceed the certified
upper bound.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from liplax import cli, training
from tests.train_helpers import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lower") / "run"
    with contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["train", "--config", "default", "--seed", "3", "--quiet", "--set", *TINY,
                         "widths=8,8", "--out", str(out)])
    assert code == 0
    return out


def _numpy_net(run_dir):
    """The trained bias-free sinusoidal MLP as a float64 NumPy function of one input."""
    run, _ = training.load_run(run_dir)
    model = training.eval_model(run)
    kernels = [np.asarray(layer.kernel[...], np.float64) for layer in model.layers
               if hasattr(layer, "kernel")]

    def f(x):
        z = np.ravel(x)
        for w in kernels[:-1]:
            t = z @ w
            z = np.concatenate([np.cos(t), np.sin(t)])
        return z @ kernels[-1]

    def jac(x):
        z, j = np.ravel(x), np.eye(np.size(x))
        for w in kernels[:-1]:
            t = z @ w
            j = np.concatenate([-np.sin(t)[:, None] * (w.T @ j), np.cos(t)[:, None] * (w.T @ j)])
            z = np.concatenate([np.cos(t), np.sin(t)])
        return kernels[-1].T @ j

    return f, jac


@pytest.mark.parametrize("extra", [[], ["--data-starts", "0", "--noise-starts", "3"]])
def test_lower_bound_is_attained_at_the_saved_witness(run_dir, tmp_path, capsys, extra):
    wpath = tmp_path / "w.npz"
    args = ["certify", str(run_dir), "--json", "--lower", "--lower-steps", "10",
            "--lower-restarts", "2", "--seed", "5", "--witness", str(wpath), *extra]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    lo = out["lower_bound"]
    w = np.load(wpath)
    f, jac = _numpy_net(run_dir)
    if str(w["kind"]) == "local":
        v = w["v"]
        gain = np.linalg.norm(jac(w["x"]) @ np.ravel(v)) / np.linalg.norm(v)
    else:
        gain = np.linalg.norm(f(w["x"]) - f(w["y"])) / np.linalg.norm(w["x"] - w["y"])
    assert lo["witness_kind"] == str(w["kind"]) and lo["witness"] == str(wpath)
    assert lo["value"] == pytest.approx(float(w["gain"]), rel=1e-12)
    assert lo["value"] == pytest.approx(gain, rel=1e-9)
    assert 0 < lo["value"] <= out["lipschitz_upper"]
    assert lo["tightness"] == pytest.approx(out["lipschitz_upper"] / lo["value"], rel=1e-6)
    # every candidate was re-checked; the reported one is the largest
    assert lo["value"] == max(lo["candidates"].values())
    # the exact local norm at the local witness is the largest gain there (v is optimal)
    if str(w["kind"]) == "local":
        assert gain == pytest.approx(np.linalg.norm(jac(w["x"]), 2), rel=1e-9)


def test_a_larger_budget_and_the_default_witness_path(run_dir, capsys):
    """Given a checkpoint folder, the witness goes to the run folder (not among checkpoints)."""
    assert cli.main(["certify", str(run_dir / "checkpoints" / "40"), "--lower", "--lower-steps",
                     "30", "--lower-restarts", "3"]) == 0
    text = capsys.readouterr().out
    assert "attained" in text and "lower_witness.npz" in text
    w = np.load(run_dir / "lower_witness.npz")
    assert not list((run_dir / "checkpoints").rglob("*.npz"))
    report = json.loads((run_dir / "report.json").read_text())
    assert float(w["gain"]) <= report["lipschitz_upper"]


@pytest.mark.parametrize("flag,value", [("--lower-steps", "0"), ("--lower-restarts", "0"),
                                        ("--data-starts", "-1"), ("--noise-starts", "-2")])
def test_bad_budget_is_refused(run_dir, capsys, flag, value):
    assert cli.main(["certify", str(run_dir), "--lower", flag, value]) == 2
    assert flag in capsys.readouterr().err
