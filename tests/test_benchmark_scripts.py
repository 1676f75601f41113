"""The benchmark scripts a GPU run and a peer comparison depend on: ``benchmarks/gpu.sh`` (driving
``benchmarks/gpu.py``) and ``benchmarks/peers.py``.

Default run: ``peers.py`` names what is missing and how to get it; ``gpu.py`` stops a section at
its timeout and still writes its JSON. Slow (``make test-slow``): the ``--tiny`` runs on the CPU,
whose JSON must have the documented schema, positive finite timings, and values that obey the
mathematics (an upper bound ≥ the exact norm ≥ a power-iteration estimate; NumPy's exact norm =
liplax's; a batched sweep = the loop).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PEER_ROWS = ["gram_circular_6", "gram_circular_4", "exact_circular", "zero_padding_upper",
             "gram_fwd_bwd", "power_iteration_100"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("LIP4CONV", None)
    return env


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_peers_names_what_is_missing_and_how_to_get_it(tmp_path):
    peers = _load("peers")
    torch, lip, skipped = peers.load_peers(None)
    assert lip is None
    assert "git clone https://github.com/blaisedelattre/lip4conv" in skipped["lip4conv"]
    assert "--lip4conv" in skipped["lip4conv"]
    if torch is None:
        assert "pip install torch" in skipped["torch"]
    _, lip, skipped = peers.load_peers(str(tmp_path))  # a folder without lip4conv's bounds.py
    assert lip is None and str(tmp_path / "bounds.py") in skipped["lip4conv"]


def test_gpu_driver_stops_a_section_at_its_budget_and_still_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu.py"), "--tiny", "--only", "conv_norms", "--budget",
         "0.5", "--out", str(out)], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    section = result["sections"]["conv_norms"]
    assert section["status"] == "timeout" and section["timeout_s"] == 1.0
    assert section["seconds"] < 30 and result["total_s"] < 30
    assert json.loads(proc.stdout) == result


def _check_peers_table(table: dict) -> None:
    assert table["benchmark"] == "peers" and table["config"]["tiny"] is True
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows) == PEER_ROWS
    for r in rows.values():
        assert _positive(r["liplax_s"]) and _positive(r["liplax_value"]), r
        if "lip4conv" in table["skipped"]:
            assert r["peer_s"] is None and "git clone" in r["peer_skipped"]
    for name in ("gram_circular_6", "gram_circular_4", "exact_circular"):
        assert _positive(rows[name]["numpy_s"]) and _positive(rows[name]["ratio_numpy"])
    exact = rows["exact_circular"]
    assert math.isclose(exact["numpy_value"], exact["liplax_value"], rel_tol=1e-5)
    for name in ("gram_circular_6", "gram_circular_4", "gram_fwd_bwd"):  # upper ≥ exact
        assert rows[name]["liplax_value"] >= exact["liplax_value"] * (1 - 1e-6)
    zero = rows["zero_padding_upper"]  # an upper bound ≥ what power iteration attains
    assert zero["liplax_value"] >= zero["power_iteration_1000"] * (1 - 1e-6)
    assert zero["liplax_excess_pct"] >= -1e-4
    assert rows["power_iteration_100"]["liplax_value"] <= zero["liplax_value"] * (1 + 1e-6)


@pytest.mark.slow
def test_peers_tiny_runs_without_the_peers(tmp_path):
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "skipping lip4conv" in proc.stderr and "git clone" in proc.stderr
    table = json.loads(out.read_text())
    assert "lip4conv" in table["skipped"]
    _check_peers_table(table)


@pytest.mark.slow
def test_gpu_sh_tiny_run_writes_one_json_with_sound_figures(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**_env(), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), "--tiny", "--timeout-scale", "10", "--budget", "1200",
         "--out", str(out)], capture_output=True, text=True, env=env, timeout=1300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu" and result["config"]["tiny"] is True
    sections = result["sections"]
    assert list(sections) == ["conv_norms", "sweep", "train", "peers"]
    for name, s in sections.items():
        assert s["status"] == "ok", (name, s["stderr_tail"])
        assert s["rows"], name

    by_method = {r["method"]: r for r in sections["conv_norms"]["rows"]}
    assert set(by_method) == {"gram_circular_6", "gram_same_6", "power_same_100",
                              "exact_circular"}
    for r in by_method.values():
        assert _positive(r["first_s"]) and _positive(r["seconds"]) and _positive(r["value"])
    assert by_method["gram_circular_6"]["value"] >= by_method["exact_circular"]["value"]
    assert by_method["power_same_100"]["value"] <= by_method["gram_same_6"]["value"]

    (sweep,) = sections["sweep"]["rows"]
    assert _positive(sweep["sweep"]["seconds"]) and _positive(sweep["loop"]["seconds"])
    assert _positive(sweep["speedup"]) and sweep["max_rel_diff"] <= 1e-5

    for r in sections["train"]["rows"]:
        assert _positive(r["step_ms_plain"]) and _positive(r["step_ms_penalty"])
        assert _positive(r["overhead_ratio"])

    _check_peers_table(sections["peers"]["table"])
