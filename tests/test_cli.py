"""The ``liplax`` command: train, bound, certify, and its errors (exit status 2, one line)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from liplax import cli, data, train
from liplax.guarantee import product_margin
from tests.train_helpers import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = cli.main(["train", "--config", "default", "--quiet", "--out", str(out), "--seed", "1",
                     "--set", *TINY])
    assert code == 0
    return out


def test_train_writes_the_report_with_the_seed_and_overrides(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    assert report["config"]["seed"] == 1 and report["config"]["widths"] == [8]
    assert report["steps"] == 40


def test_bound_table_is_the_models_layer_bounds(run_dir, capsys):
    assert cli.main(["bound", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["layer"] for r in out["layers"]] == [r["layer"] for r in report["layer_bounds"]]
    assert [r["kind"] for r in out["layers"]] == ["exact", "exact", "exact"]
    assert out["trivial_bound"]["kind"] in ("exact", "upper")
    prod = math.prod(r["value"] for r in out["layers"])
    margin = product_margin([r["kind"] for r in out["layers"]], np.float32)
    assert prod <= out["trivial_bound"]["value"] <= prod * (1 + 2 * margin)
    assert out["trivial_bound"]["value"] == pytest.approx(report["lipschitz_upper"], rel=1e-6)
    # ℓ∞ on request: the ∞→∞ norms, a different (larger here) number
    assert cli.main(["bound", str(run_dir), "--json", "--p", "inf"]) == 0
    out_inf = json.loads(capsys.readouterr().out)
    assert out_inf["p"] == "inf"
    assert out_inf["trivial_bound"]["value"] != out["trivial_bound"]["value"]
    # human-readable table
    assert cli.main(["bound", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "SinusoidalDense" in text and "product (trivial)" in text


def test_certify_agrees_with_the_report(run_dir, capsys):
    assert cli.main(["certify", str(run_dir), "--json", "--eps", "0.05", "0.1", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    report = json.loads((run_dir / "report.json").read_text())
    n = len(data.load_digits().y_test)
    for eps in ("0.05", "0.1"):
        assert out["certified_accuracy"][eps] == pytest.approx(
            report["certified_accuracy"][eps], abs=1 / n
        )
    acc = [out["certified_accuracy"][e] for e in ("0.05", "0.1", "0.3")]
    assert acc == sorted(acc, reverse=True)
    assert out["accuracy_ties_as_errors"] == pytest.approx(report["clean_accuracy"], abs=1 / n)
    # a checkpoint folder works too, and names its step
    assert cli.main(["certify", str(run_dir / "checkpoints" / "20"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 20


def test_load_run_restores_the_trained_parameters(run_dir):
    run, meta = train.load_run(run_dir)
    assert meta["step"] == 40 and int(run.state.step) == 40
    run20, _ = train.load_run(run_dir, step=20)
    a, b = train.state_to_flat(run.state), train.state_to_flat(run20.state)
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "mnist", "--set", "steps=1"], "data_dir"),
        (["train", "--set", "bogus=1"], "unknown key 'bogus'"),
        (["train", "--set", "widths=a,b"], "widths='a,b' is not a valid"),
        (["train", "--set", "eval_every=7"], "multiple of log_every"),
        (["train", "--set", "p=3"], "p=3.0; expected 2 or inf"),
        (["certify", "/nonexistent/run"], "not a liplax run folder"),
        (["bound", "/nonexistent/run"], "not a liplax run folder"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, message, tmp_path, capsys):
    if argv[0] == "train":
        argv = [*argv[:1], "--out", str(tmp_path / "o"), *argv[1:]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("liplax: error:") and message in err and "\n" not in err


def test_unknown_config_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--config", "nope"])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
