"""The training loop: report contents checked against the mathematics, resumption, faults."""

from __future__ import annotations

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liplax import training
from liplax.guarantee import product_margin
from liplax.training import checkpoint, data
from liplax.training.checkpoint import CheckpointError, OutputError
from tests.train_helpers import assert_same_state, final_state, same_metrics, tiny_config


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits):
    """One uninterrupted tiny run: (folder, report)."""
    out = tmp_path_factory.mktemp("run") / "a"
    report = training.train(tiny_config(), out, dataset=digits, quiet=True)
    return out, report


def test_report_has_the_issue_keys_and_consistent_values(finished):
    out, report = finished
    for key in training.REPORT_KEYS:
        assert key in report, key
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["upper_kind"] in ("exact", "upper")
    assert 0 < report["lipschitz_lower"] <= report["lipschitz_upper"]
    assert report["tightness"] == pytest.approx(
        report["lipschitz_upper"] / report["lipschitz_lower"], rel=1e-12
    )
    acc = [report["certified_accuracy"][k] for k in ("0.05", "0.1")]
    assert report["clean_accuracy"] >= acc[0] >= acc[1]
    assert report["steps"] == 40 and report["dataset"] == "digits" and report["p"] == 2.0
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 41, 5))


def test_reported_bound_is_the_product_of_float64_weight_norms(finished):
    # sin_mlp = Flatten, SinusoidalDense (Lip = ‖W1‖₂ exactly), Dense (‖W2‖₂): the certified
    # bound must not be below the float64 product and only above it by rounding margins.
    out, report = finished
    run, _ = training.load_run(out)
    params = nnx.to_pure_dict(run.state.params)["layers"]
    w1 = np.asarray(params[1]["kernel"], np.float64)
    w2 = np.asarray(params[2]["kernel"], np.float64)
    truth = np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2)
    assert truth <= report["lipschitz_upper"] <= truth * (1 + 1e-4)
    layers = report["layer_bounds"]
    assert [r["layer"] for r in layers] == ["Flatten", "SinusoidalDense", "Dense"]
    # the product of the layer bounds, rounded up by the documented margin
    margin = product_margin([r["kind"] for r in layers], np.float32)
    prod = math.prod(r["value"] for r in layers)
    assert prod <= report["lipschitz_upper"] <= prod * (1 + 2 * margin)


def test_certified_accuracy_matches_the_margin_rule(finished, digits):
    # Independent float64 check: certified at ε iff margin > √2·L·ε (ℓ2, global head).
    out, report = finished
    run, _ = training.load_run(out)
    logits = np.asarray(training.eval_model(run)(jnp.asarray(digits.x_test)), np.float64)
    y = digits.y_test
    true = logits[np.arange(len(y)), y]
    other = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits).max(1)
    margin = true - other
    assert report["clean_accuracy"] == pytest.approx(np.mean(margin > 0), abs=1 / len(y))
    for eps in (0.05, 0.1):
        expected = np.mean(margin > math.sqrt(2) * report["lipschitz_upper"] * eps)
        assert report["certified_accuracy"][f"{eps:g}"] == pytest.approx(expected, abs=1 / len(y))


def test_lower_bound_is_attained_not_above_the_truth(finished):
    # The lower bound is a local Jacobian norm somewhere: never above the certified upper bound,
    # and at least the exact local norm at the origin (one of its starting points).
    out, report = finished
    run, _ = training.load_run(out)
    model = training.eval_model(run)
    x0 = jnp.zeros((1, *run.input_shape))
    jac = jax.jacrev(lambda x: model(x)[0])(x0).reshape(10, -1)
    at_origin = float(np.linalg.norm(np.asarray(jac, np.float64), 2))
    assert at_origin * (1 - 1e-5) <= report["lipschitz_lower"] <= report["lipschitz_upper"]


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores: the SIGKILL test of
# test_train_processes.py resumes a killed process and checks the same state, metrics and history
def test_resumed_run_reaches_the_same_parameters_and_metrics(tmp_path, finished, digits):
    out_a, report_a = finished
    out = tmp_path / "b"
    partial = training.train(tiny_config(), out, dataset=digits, quiet=True, stop_after=20)
    assert partial == {"steps": 20, "stopped": True}
    assert checkpoint.CheckpointStore(out).steps() == [10, 20]
    report_b = training.train(tiny_config(), out, dataset=digits, quiet=True, resume=True)
    assert_same_state(final_state(out), final_state(out_a))
    same_metrics(report_a, report_b)
    # the metric history is whole: one line per chunk, no duplicates from the restart
    assert [h["step"] for h in report_b["history"]] == [h["step"] for h in report_a["history"]]


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, finished, digits):
    out_a, report_a = finished
    out = tmp_path / "c"
    training.train(tiny_config(), out, dataset=digits, quiet=True, stop_after=30)
    state_dir = out / "checkpoints" / "30" / "state"
    files = [f for f in state_dir.rglob("*") if f.is_file() and f.stat().st_size > 0]
    assert files
    for f in files:  # truncate every data file of the newest checkpoint
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.warns(UserWarning, match=r"checkpoints/30'? is unreadable.*falling back"):
        report = training.train(tiny_config(), out, dataset=digits, quiet=True, resume=True)
    moved = list((out / "corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("30-")  # kept, not deleted
    assert_same_state(final_state(out), final_state(out_a))
    same_metrics(report, report_a)


def test_every_checkpoint_unreadable_is_an_error_naming_them(tmp_path, digits):
    out = tmp_path / "d"
    training.train(tiny_config(), out, dataset=digits, quiet=True, stop_after=10)
    shutil.rmtree(out / "checkpoints" / "10" / "state")
    (out / "checkpoints" / "10" / "state").mkdir()
    with pytest.raises(CheckpointError, match="no readable checkpoint"), pytest.warns(
        UserWarning, match="checkpoints/10'? is unreadable"
    ):
        training.train(tiny_config(), out, dataset=digits, quiet=True, resume=True)


def test_existing_run_is_not_overwritten_without_resume(finished, digits):
    out, _ = finished
    with pytest.raises(FileExistsError, match="--resume"):
        training.train(tiny_config(), out, dataset=digits, quiet=True)


def test_resume_with_another_config_is_refused(finished, digits):
    out, _ = finished
    with pytest.raises(ValueError, match="different config.*learning_rate"):
        training.train(tiny_config("learning_rate=0.01"), out, dataset=digits, quiet=True,
                    resume=True)


def test_unusable_output_folder_fails_before_training(tmp_path, digits, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="--out"):
        training.train(tiny_config(), blocker, dataset=digits, quiet=True)
    with pytest.raises(OutputError, match="--out"):
        training.train(tiny_config(), blocker / "sub", dataset=digits, quiet=True)

    class Full:
        free = 1024

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: Full())
    out = tmp_path / "full"
    with pytest.raises(OutputError, match="MiB free"):
        training.train(tiny_config(), out, dataset=digits, quiet=True)
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("start,num_steps", [(0, 5), (7, 30), (19, 3), (40, 1)])
def test_chunk_batches_are_the_documented_data_order(start, num_steps):
    # The loop draws each chunk's epoch permutations once; row t must be exactly
    # liplax.training.data.batch_indices(key, n, bs, start + t), the data order a checkpoint
    # restores.
    key, n, bs = jax.random.key(3), 103, 10  # 10 steps per epoch: chunks straddle epochs
    got = np.asarray(jax.jit(training.chunk_batch_indices, static_argnums=(1, 2, 4))(
        key, n, bs, jnp.int32(start), num_steps))
    want = np.stack([np.asarray(data.batch_indices(key, n, bs, start + t))
                     for t in range(num_steps)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_divergence_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path, digits):
    out = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match=r"diverged in steps \d+-\d+.*last checkpoint is"):
        training.train(tiny_config("learning_rate=1e30", "loss=hinge"), out, dataset=digits,
                    quiet=True)
    assert not (out / "report.json").exists()


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_interrupted_write_leaves_no_step_behind(tmp_path, finished, digits):
    # A save killed mid-write leaves orbax's temporary folder; it is never taken for a checkpoint.
    out_a, _ = finished
    out = tmp_path / "tmp"
    training.train(tiny_config(), out, dataset=digits, quiet=True, stop_after=10)
    shutil.copytree(out / "checkpoints" / "10", out / "checkpoints" / "20.orbax-checkpoint-tmp-1")
    assert checkpoint.CheckpointStore(out).steps() == [10]
    training.train(tiny_config(), out, dataset=digits, quiet=True, resume=True)
    assert_same_state(final_state(out), final_state(out_a))


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_grouped_penalty_trains_the_same_parameters(digits):
    # grouped=True batches the power steps of same-shape layers: the same semantics, so the
    # same training trajectory up to float reassociation.
    states = []
    for grouped in (False, True):
        config = tiny_config("model=cnn", "widths=4,4", f"grouped={grouped}")
        run = training.init_run(config, digits.input_shape, 10)
        chunk = training.step.make_chunk(run, len(digits.y_train), None)
        state, metrics = chunk(run.state, jnp.asarray(digits.x_train),
                               jnp.asarray(digits.y_train), 5)
        assert math.isfinite(metrics["penalty"])
        states.append(training.state_to_flat(state))
    assert_same_state(*states, rtol=1e-5)
