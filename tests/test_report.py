"""The training figure: one step axis, labelled panels, readable log ticks, per-layer bars."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from liplax.training.outputs import plot_history  # noqa: E402


def _history() -> list[dict]:
    hist = []
    for step in range(10, 210, 10):
        entry = {"step": step, "loss": 2.0 * math.exp(-step / 40),
                 "penalty": math.log(2 + step / 50)}
        if step % 20 == 0:
            entry.update(lipschitz_upper=1 + step / 10, lipschitz_lower=0.9 + step / 11,
                         tightness=(1 + step / 10) / (0.9 + step / 11), clean_accuracy=0.5,
                         certified_accuracy={"0.1": 0.4, "0.3": 0.2})
        hist.append(entry)
    return hist


LAYERS = [{"layer": "Flatten", "value": 1.0, "kind": "exact", "attained_gain": 1.0},
          {"layer": "Dense", "value": 4.0, "kind": "exact", "attained_gain": 3.5}]


@pytest.fixture
def figure(tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    path = tmp_path / "training.png"
    plot_history(_history(), path, title="t", layers=LAYERS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = kept[-1]
    fig.canvas.draw()
    return fig


def test_time_panels_share_one_step_range_and_say_what_they_show(figure):
    a, b, c, d = figure.axes[:4]
    for ax in (a, b, c):
        assert ax.get_xlim() == (0, 200) and ax.get_xlabel() == "training step"
    assert "test" in c.get_ylabel()
    legends = {t.get_text() for ax in (a, b, c) for t in ax.get_legend().get_texts()}
    assert {"certified upper bound", "attained lower bound"} <= legends
    assert any("training loss" in t for t in legends)
    assert any("ε = 0.1" in t for t in legends)


def test_log_ticks_are_plain_numbers(figure):
    loss_ax = figure.axes[1]
    assert loss_ax.get_yscale() == "log"  # the loss spans more than a decade
    labels = [t.get_text() for t in loss_ax.get_yticklabels() if t.get_text()]
    assert labels and all(lab.replace(".", "").isdigit() for lab in labels), labels


def test_per_layer_panel_pairs_each_bound_with_its_attained_gain(figure):
    d = figure.axes[3]
    heights = sorted(round(p.get_height(), 6) for p in d.patches)
    assert heights == sorted([1.0, 4.0, 1.0, 3.5])
    assert [t.get_text() for t in d.get_xticklabels()] == ["0: Flatten", "1: Dense"]
