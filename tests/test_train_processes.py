"""Training across processes: SIGKILL at a random step then --resume, and 1 vs 4 devices.

Each test runs ``liplax train`` (the command) in subprocesses, as a user would. A killed run
resumed with ``--resume`` must end with exactly the parameters and metrics of an uninterrupted
run of the same seed; data-parallel training on 4 simulated devices must match 1 device to float
tolerance (the gradient all-reduce sums in another order).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_helpers import TINY, assert_same_state, final_state, same_metrics

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config", "default", "--quiet", "--set", *TINY, "steps=60"]


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _train(out: Path, *extra: str, devices: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "liplax.cli", "train", *ARGS, "--out", str(out), *extra],
        env=_env(devices), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


def _logged_steps(out: Path) -> list[int]:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(x)["step"] for x in lines if x.strip().endswith("}")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _train(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text())


def test_sigkill_at_a_random_step_then_resume_matches_uninterrupted(tmp_path, reference):
    ref_out, ref_report = reference
    rng = random.Random()  # a fresh step each run; printed so a failure can be replayed
    target = rng.randrange(5, 56, 5)
    print(f"killing after step {target}")
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "liplax.cli", "train", *ARGS, "--out", str(out)],
        env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(s >= target for s in _logged_steps(out)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {target}: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()
    done = _train(out, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_state(final_state(out), final_state(ref_out))
    report = json.loads((out / "report.json").read_text())
    same_metrics(report, ref_report)
    # the metric history is whole: one line per chunk, none lost or repeated by the restart
    assert [h["step"] for h in report["history"]] == [h["step"] for h in ref_report["history"]]


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
def test_four_devices_match_one(tmp_path, reference):
    ref_out, ref_report = reference
    out = tmp_path / "four"
    proc = _train(out, "--devices", "4", devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["devices"] == 4 and ref_report["devices"] == 1
    assert_same_state(final_state(out), final_state(ref_out), rtol=2e-4)
    for key in ("lipschitz_upper", "lipschitz_lower"):
        assert report[key] == pytest.approx(ref_report[key], rel=1e-3)
    assert abs(report["clean_accuracy"] - ref_report["clean_accuracy"]) <= 2 / 450
