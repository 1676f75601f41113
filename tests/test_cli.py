"""The ``liplax`` command: train, bound, certify, and its errors (exit status 2, one line)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liplax import cli, training
from liplax.guarantee import product_margin
from liplax.training import data
from tests.train_helpers import TINY

TRAIN = ["train", "--config", "default", "--seed", "1", "--set", *TINY]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A TINY run trained with its progress output on; stderr kept in ``../stderr.txt``."""
    out = tmp_path_factory.mktemp("cli") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main([*TRAIN, "--out", str(out)])
    assert code == 0
    (out.parent / "stderr.txt").write_text(err.getvalue())
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
    run, meta = training.load_run(run_dir)
    assert meta["step"] == 40 and int(run.state.step) == 40
    run20, _ = training.load_run(run_dir, step=20)
    a, b = training.state_to_flat(run.state), training.state_to_flat(run20.state)
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "mnist", "--set", "steps=1"], "data_dir"),
        (["train", "--set", "bogus=1"], "unknown key 'bogus'"),
        # repeated --set flags add up: the first one is not dropped by the second
        (["train", "--set", "bogus=1", "--set", "steps=1"], "unknown key 'bogus'"),
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


def test_final_evaluation_shows_progress_after_the_bar(run_dir):
    err = (run_dir.parent / "stderr.txt").read_text()
    stages = ["certified bound, lower-bound search and accuracy", "per-layer bounds and gains",
              "training.png"]
    for stage in stages:
        assert re.search(rf"liplax: final evaluation: {re.escape(stage)}[^\n]* …\n", err)
        assert re.search(rf"final evaluation: {re.escape(stage)}.* done in \d+\.\d s", err)
    assert "L_est=" in err and "L_cert=" in err and "≈=" not in err


def test_resume_of_a_finished_run_leaves_its_report(run_dir, capsys):
    before = (run_dir / "report.json").read_bytes()
    assert cli.main([*TRAIN, "--out", str(run_dir), "--resume"]) == 0
    assert (run_dir / "report.json").read_bytes() == before
    assert "finished run (40 steps)" in capsys.readouterr().err


def test_layer_gains_are_attained_below_each_bound(run_dir):
    """Each layer's gain along the witness direction is a value the layer attains, so at most
    its certified bound; their product is attained by the network (≤ the trivial bound) and,
    at the lower bound's witness, close to that lower bound."""
    report = json.loads((run_dir / "report.json").read_text())
    rows = report["layer_bounds"]
    for r in rows:
        assert 0 < r["attained_gain"] <= r["value"] * (1 + 1e-5), r
    product = math.prod(r["attained_gain"] for r in rows)
    assert product <= report["lipschitz_upper"] * (1 + 1e-5)
    assert 0.8 * report["lipschitz_lower"] <= product <= report["lipschitz_lower"] * (1 + 1e-3)


_PROBE = """
import json, sys
from liplax import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "jax": "jax" in sys.modules, "flax": "flax" in sys.modules}))
"""


@pytest.mark.parametrize("case", ["help", "existing-run", "file", "bad-set"])
def test_cheap_answers_load_no_jax(case, tmp_path):
    """liplax --help and refused arguments answer without importing JAX or Flax (seconds)."""
    run = tmp_path / "run"
    (run / "checkpoints" / "20").mkdir(parents=True)
    (tmp_path / "file").write_text("")
    argv = {
        "help": ["--help"],
        "existing-run": ["train", "--out", str(run)],
        "file": ["train", "--out", str(tmp_path / "file")],
        "bad-set": ["train", "--out", str(tmp_path / "new"), "--set", "steps=1.5"],
    }[case]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"code": 0 if case == "help" else 2, "jax": False, "flax": False}, proc.stderr
    if case == "existing-run":
        assert "already holds checkpoints (steps [20]); pass --resume" in proc.stderr


def test_compilation_cache_folder_is_filled_and_can_be_turned_off(tmp_path):
    # Every compiled program is cached (MIN_COMPILE_SECONDS = 0): a one-op program shows it.
    code = ("from liplax.jaxcache import enable_compilation_cache as e; print(e()); "
            "import jax, jax.numpy as jnp; "
            "jax.jit(lambda x: 2 * x)(jnp.ones(3)).block_until_ready()")
    root = Path(__file__).resolve().parents[1]
    for value, expect in ((str(tmp_path / "c"), str(tmp_path / "c")), ("off", "None")):
        env = {**os.environ, "LIPLAX_CACHE_DIR": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=root, env=env, check=True).stdout.strip()
        assert out == expect
    assert any((tmp_path / "c").iterdir())  # the compiled program, for the next process
