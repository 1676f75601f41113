"""``liplax sweep`` (liplax.cli.sweep): the table's values are the operators' values and the truth.

Each test builds ``argparse`` with subparsers as ``liplax.cli`` will, calls ``add_parser``, parses
and runs. Values are compared with ``liplax.conv``/``liplax.linalg`` called directly and with the
float64 truth of the materialized operator (``tests/reference.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import liplax.nn as ln
from liplax import conv, linalg
from liplax.cli import sweep as sweep_cli
from tests import reference as ref
from tests._helpers import assert_upper

HW = (5, 5)
conv_gram = jax.jit(conv.gram_bound, static_argnums=1)
dense_gram = jax.jit(linalg.gram_bound)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="liplax")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep_cli.add_parser(sub)
    args = parser.parse_args(["sweep", *argv])
    return args.func(args)


def _rng(seed: int = 0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    r = _rng()
    one = (r.standard_normal((3, 3, 2, 3)) / 3).astype(np.float32)
    dense = r.standard_normal((6, 4)).astype(np.float32)
    stack = (r.standard_normal((5, 3, 3, 2, 3)) / 3).astype(np.float32)
    dstack = r.standard_normal((3, 6, 4)).astype(np.float32)
    np.save(d / "one.npy", one)
    np.savez(d / "many.npz", dense=dense, stack=stack, dstack=dstack, labels=np.arange(4))
    np.save(d / "scalarish.npy", np.ones(7, np.float32))
    (d / "broken.npy").write_bytes(b"not a numpy file")
    return {"dir": d, "one": one, "dense": dense, "stack": stack, "dstack": dstack}


def _table(path):
    if path.suffix == ".json":
        return json.loads(path.read_text())["rows"]
    with path.open() as f:
        return list(csv.DictReader(f))


def test_gram_table_matches_operators_and_is_above_the_truth(files, tmp_path):
    d, out = files["dir"], tmp_path / "t.csv"
    rc = run_cli(str(d / "one.npy"), str(d / "many.npz"), "--input-size", *map(str, HW),
                 "--chunk-size", "2", "--out", str(out), "--quiet")
    assert rc == 0
    rows = _table(out)
    # Input order: one.npy, then the npz arrays in file order, stacks item by item.
    kernels = [("one", None, files["one"]), ("dense", None, files["dense"])]
    kernels += [("stack", str(i), k) for i, k in enumerate(files["stack"])]
    kernels += [("dstack", str(i), k) for i, k in enumerate(files["dstack"])]
    assert [(r["name"], r["index"] or None) for r in rows] == [(n, i) for n, i, _ in kernels]
    for row, (_, _, k) in zip(rows, kernels, strict=True):
        value = float(row["value"])
        assert row["guarantee"] == "upper"
        if k.ndim == 2:
            direct = float(dense_gram(k))
            truth = ref.spectral_norm_truth(ref.dense_operator(k))
            assert row["layer"] == "dense" and row["shape"] == "6x4"
        else:
            direct = float(conv_gram(k, HW))
            truth = ref.spectral_norm_truth(ref.conv_operator(k, HW))
            assert row["layer"] == "conv" and row["shape"] == "3x3x2x3"
        assert value == pytest.approx(direct, rel=1e-6)
        assert_upper(value, truth, f"sweep gram {row['name']}")


def test_exact_circular_and_dense_svd(files, tmp_path):
    d, out = files["dir"], tmp_path / "t.json"
    rc = run_cli(str(d / "many.npz"), "--op", "exact", "--padding", "CIRCULAR",
                 "--input-size", *map(str, HW), "--out", str(out), "--quiet")
    assert rc == 0
    rows = _table(out)
    assert [r["name"] for r in rows] == ["dense"] + ["stack"] * 5 + ["dstack"] * 3
    dense_truths = [ref.spectral_norm_truth(ref.dense_operator(files["dense"]))]
    dense_truths += [ref.spectral_norm_truth(ref.dense_operator(k)) for k in files["dstack"]]
    conv_truths = [ref.circular_spectral_norm_fft(k, HW) for k in files["stack"]]
    got_dense = [rows[0]["value"]] + [r["value"] for r in rows[6:]]
    np.testing.assert_allclose(got_dense, dense_truths, rtol=2e-6)
    np.testing.assert_allclose([r["value"] for r in rows[1:6]], conv_truths, rtol=2e-5)
    assert {r["guarantee"] for r in rows} == {"exact"}
    assert json.loads(out.read_text())["settings"]["op"] == "exact"


@pytest.mark.parametrize("op", ["inf", "one", "power"])
def test_other_ops_against_the_materialized_operator(files, tmp_path, op):
    d, out = files["dir"], tmp_path / "t.json"
    rc = run_cli(str(d / "one.npy"), "--op", op, "--input-size", *map(str, HW),
                 "--stride", "2", "--padding", "VALID", "--iters", "200", "--out", str(out),
                 "--quiet")
    assert rc == 0
    (row,) = _table(out)
    mat = ref.conv_operator(files["one"], HW, 2, "VALID")
    if op == "power":
        truth = ref.spectral_norm_truth(mat)
        assert row["guarantee"] == "estimate"
        assert row["value"] <= truth * (1 + 1e-5)
        assert row["value"] == pytest.approx(truth, rel=1e-3)
        direct = conv.power_iteration(files["one"], HW, strides=2, padding="VALID",
                                      num_iters=200, key=jax.random.key(0))[0]
        assert row["value"] == pytest.approx(float(direct), rel=1e-6)
    else:
        truth = ref.linf_truth(mat) if op == "inf" else ref.l1_truth(mat)
        fn = conv.norm_inf if op == "inf" else conv.norm_1
        assert row["value"] == pytest.approx(float(fn(files["one"], HW, strides=2,
                                                       padding="VALID")), rel=1e-6)
        assert_upper(row["value"], truth, f"sweep {op}")
        assert row["value"] == pytest.approx(truth, rel=1e-5)


def test_orbax_checkpoint_directory(tmp_path):
    import orbax.checkpoint as ocp

    model = ln.Sequential(ln.Dense(4, 6, rngs=nnx.Rngs(0)), ln.MaxMin(),
                          ln.Conv(1, 2, 3, input_size=(4, 4), rngs=nnx.Rngs(1)))
    kernels = {}
    with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
        for step in (1, 2, 10):  # numeric order in the table (not the text order 1, 10, 2)
            for layer in (model.layers[0], model.layers[2]):
                layer.kernel[...] = layer.kernel[...] * 1.5
            kernels[step] = (np.asarray(model.layers[0].kernel[...]),
                             np.asarray(model.layers[2].kernel[...]))
            mgr.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model)))))
        mgr.wait_until_finished()
    out = tmp_path / "t.json"
    rc = run_cli(str(tmp_path / "ckpt"), "--match", "kernel", "--input-size", "4", "4",
                 "--out", str(out), "--quiet")
    assert rc == 0
    rows = _table(out)
    assert [r["name"] for r in rows] == [
        f"{s}/state/layers/{i}/kernel" for s in (1, 2, 10) for i in (0, 2)
    ]
    for row in rows:
        step, idx = int(row["name"].split("/")[0]), int(row["name"].split("/")[3])
        k = kernels[step][0 if idx == 0 else 1]
        direct = dense_gram(k) if idx == 0 else conv_gram(k, (4, 4))
        assert row["value"] == pytest.approx(float(direct), rel=1e-6)
    # Without --match the dense power state (rank 1) and conv state (rank 3) are not kernels.
    rc = run_cli(str(tmp_path / "ckpt"), "--input-size", "4", "4", "--out", str(out), "--quiet")
    assert rc == 0 and len(_table(out)) == 6


def test_plain_progress_lines_without_tqdm(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm → ImportError
    rc = run_cli(str(files["dir"] / "many.npz"), "--match", "dstack", "--chunk-size", "2",
                 "--out", str(tmp_path / "t.csv"))
    assert rc == 0
    err = capsys.readouterr().err
    assert "liplax sweep: 2/3 kernels (6x4)" in err and "liplax sweep: 3/3 kernels" in err
    assert "skipping 'labels'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.npy"], "missing.npy: no such file or directory"),
        (["{d}/scalarish.npy"], "scalarish.npy: holds no float array of usable rank"),
        (["{d}/one.npy"], "need --input-size H W"),
        (["{d}/one.npy", "--input-size", "5", "5", "--op", "exact"], "--padding CIRCULAR"),
        (["{d}/one.npy", "--out", "t.txt"], "--out must end in .json or .csv"),
        (["{d}/one.npy", "--input-size", "5", "5", "--padding", "SAMEISH"], "--padding must"),
        (["{d}"], "found none"),
        (["{d}/broken.npy"], "broken.npy: cannot be read"),
    ],
)
def test_bad_input_exits_2_with_a_message(files, capsys, argv, message):
    argv = [a.format(d=files["dir"]) for a in argv]
    assert run_cli(*argv, "--quiet") == 2
    err = capsys.readouterr().err
    assert "liplax sweep: error:" in err and message in err


def test_optimizer_state_is_left_out_of_a_checkpoint_sweep(tmp_path):
    """Adam's moments have the kernels' shapes and names (…/mu/…/kernel): ``--match kernel`` on
    a run folder swept them as if they were layers. They are left out unless asked for."""
    import optax
    import orbax.checkpoint as ocp

    w = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    params = {"layers": {"0": {"kernel": w}}}
    opt_state = optax.adam(1e-3).init(params)
    tree = {"params": params, "opt_state": jax.tree.map(lambda a: np.asarray(a) + 1.0, opt_state)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
        mgr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
        mgr.wait_until_finished()
    out = tmp_path / "t.json"
    assert run_cli(str(tmp_path / "ckpt"), "--match", "kernel", "--out", str(out), "--quiet") == 0
    rows = _table(out)
    assert [r["name"] for r in rows] == ["1/state/params/layers/0/kernel"]
    assert rows[0]["value"] == pytest.approx(float(dense_gram(w)), rel=1e-6)
    assert run_cli(str(tmp_path / "ckpt"), "--match", "kernel", "--optimizer-state",
                   "--out", str(out), "--quiet") == 0
    names = sorted(r["name"] for r in _table(out))
    assert len(names) == 3 and sum("/mu/" in n or "/nu/" in n for n in names) == 2
