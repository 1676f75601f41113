"""Experiment 1 (tight_bound) in quick mode: the penalty makes the trivial bound tight."""

from __future__ import annotations

import json

import pytest

from experiments import tight_bound


@pytest.mark.slow
def test_quick_grid_penalized_sinusoidal_is_tighter_than_relu(tmp_path):
    result = tight_bound.run(tmp_path, quick=True)
    rows = {r["network"]: r for r in result["rows"]}
    assert set(rows) == set(tight_bound.QUICK_NETWORKS)
    for r in rows.values():
        assert r["kind"] in ("exact", "upper")
        assert 0 < r["lower"] <= r["upper"] * (1 + 1e-6)
        cert = [r[k] for k in ("cert@0.1", "cert@0.3", "cert@0.5")]
        assert r["clean"] >= cert[0] >= cert[1] >= cert[2]
    assert rows["sin + penalty"]["tightness"] < rows["relu"]["tightness"]
    assert rows["groupsort + björck"]["upper"] <= 1 + 1e-3  # 1-Lipschitz by construction
    out = tmp_path / "tight_bound"
    assert json.loads((out / "tight_bound.json").read_text())["rows"]
    assert (out / "tight_bound.png").stat().st_size > 0
    assert "| digits | sin + penalty |" in (out / "tight_bound.md").read_text()
