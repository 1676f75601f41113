"""README.md runs as written: every ``python`` block, and every command line of its ``bash`` blocks.

- Python blocks: each runs in a fresh namespace (a reader copies one block at a time), in a
  temporary folder, without ``RANK`` (the multi-host block then runs as one process). Top-level
  expression statements are kept like a REPL's outputs, and the blocks whose numbers the README
  comments on are checked against float64 references.
- ``bash`` blocks: every ``liplax`` line parses (argparse and the config's ``--set`` values), and
  replayed in order the ``train`` lines never reuse an ``--out`` without ``--resume`` while the
  ``certify``/``bound``/``sweep`` lines read runs an earlier line wrote. ``make`` lines are not
  run (they build a virtual environment). With ``-m slow`` every line runs, in order, in one
  temporary folder, with small step counts appended to ``train`` (``SMALL``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liplax import cli, training

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FASHION = Path("/usr/share/datasets/fashion-mnist")
# Appended to every `liplax train` line when the lines run (later --set values win).
SMALL = ["steps=20", "log_every=10", "eval_every=10", "checkpoint_every=10", "lower_steps=5",
         "lower_restarts=2", "eval_examples=100"]


def _blocks(lang: str) -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) == lang]


PY_BLOCKS = _blocks("python")


def _commands() -> list[list[str]]:
    """The command lines of the bash blocks (continuations joined, comments dropped)."""
    out = []
    for _, body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


COMMANDS = _commands()


def run_block(code: str, name: str) -> tuple[dict, list]:
    """Execute ``code`` in a fresh namespace; return it and the values of top-level expressions."""
    tree = ast.parse(code, name)
    ns: dict = {"__name__": "__readme__"}
    values = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr):
            values.append(eval(compile(ast.Expression(stmt.value), name, "eval"), ns))
        else:
            exec(compile(ast.Module([stmt], []), name, "exec"), ns)
    return ns, values


def _check_ten_lines(ns: dict, values: list) -> None:
    w = np.asarray(ns["w"], np.float64)
    truth = np.linalg.norm(w, 2)
    exact, gram, sigma = values[0], values[1], ns["sigma"]
    assert (exact.kind, gram.kind, sigma.kind) == ("exact", "upper", "estimate")
    assert float(exact) == pytest.approx(truth, rel=1e-5)
    assert truth <= float(gram) <= truth * 1.01  # "upper, within ~1%"
    assert float(sigma) <= truth * (1 + 1e-5)  # an estimate from below


def _check_layers(ns: dict, values: list) -> None:
    import jax

    bound = values[0]
    assert bound.kind in ("exact", "upper")
    model = ns["model"]
    model.eval()
    x = jax.random.normal(jax.random.key(0), (1, 28, 28, 1))
    jac = np.asarray(jax.jacobian(lambda z: model(z)[0])(x), np.float64).reshape(10, -1)
    assert np.linalg.norm(jac, 2) <= float(bound.value) * (1 + 1e-5)


def _check_sweep(ns: dict, values: list) -> None:
    f, batch = ns["f"], np.asarray(ns["kernels"])
    out = ns["values"] if "values" in ns else ns["bounds"]
    assert out.kind == "upper"
    out = np.asarray(out.value)
    assert out.shape == (batch.shape[0],)
    for i in (0, batch.shape[0] - 1):  # in input order, each the single call's value
        assert float(out[i]) == pytest.approx(float(f(batch[i])), rel=1e-5)


def _check_sharded(ns: dict, values: list) -> None:
    x, mesh = ns["x"], ns["mesh"]
    assert x.sharding.mesh.shape == mesh.shape and x.sharding.spec[0] == "batch"
    assert x.shape[0] % mesh.size == 0


# Blocks identified by a line they hold; a block not listed is still run.
CHECKS = {
    "linalg.spectral_norm(w)": _check_ten_lines,
    "bounds.trivial_bound(model, (28, 28, 1))": _check_layers,
    "bounds = liplax.sweep(f, kernels, chunk_size=8)": _check_sweep,
    "values = liplax.sweep(f, kernels, chunk_size=8, mesh=mesh)": _check_sweep,
    "x = jax.device_put(": _check_sharded,
    "jax.make_array_from_process_local_data": _check_sharded,
}


def test_every_checked_block_is_still_in_the_readme():
    codes = [code for _, code in PY_BLOCKS]
    for marker in CHECKS:
        assert sum(marker in c for c in codes) == 1, marker


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[f"README.md:{n}" for n, _ in PY_BLOCKS])
def test_python_block_runs_as_written(block, tmp_path, monkeypatch):
    line, code = block
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    ns, values = run_block(code, f"README.md:{line}")
    for marker, check in CHECKS.items():
        if marker in code:
            check(ns, values)


def _train_overrides(argv: list[str]) -> list[str]:
    """``argv`` of a ``train`` line with :data:`SMALL` appended to its ``--set`` values."""
    if "--set" not in argv:
        return [*argv, "--set", *SMALL]
    i = argv.index("--set") + 1
    while i < len(argv) and not argv[i].startswith("--"):
        i += 1
    return [*argv[:i], *SMALL, *argv[i:]]


def _needs_fashion(argv: list[str]) -> bool:
    return any("fashion" in a for a in argv) or "runs/fs" in argv


def test_command_lines_parse_and_replay_in_order(tmp_path):
    """Each line parses; in README order, no train line reuses an --out without --resume and
    every command reading a run reads one an earlier line trained."""
    liplax_lines = [a for a in COMMANDS if a[0] == "liplax"]
    assert {a[1] for a in liplax_lines} >= {"train", "certify", "bound", "sweep", "norms"}
    assert all(a[0] in ("liplax", "make", "python") for a in COMMANDS), COMMANDS
    parser = cli.build_parser()
    written: set[str] = set()
    for argv in liplax_lines:
        args = parser.parse_args(argv[1:])
        if args.command == "train":
            config = training.get_config(args.config, list(args.set or []))
            out = args.out or f"runs/{config.name}"
            assert args.resume or out not in written, f"{shlex.join(argv)}: {out} already used"
            assert not args.resume or out in written, f"{shlex.join(argv)}: nothing to resume"
            written.add(out)
        elif args.command in ("certify", "bound"):
            assert args.run in written, f"{shlex.join(argv)}: no earlier line trains {args.run}"
        elif args.command == "sweep":
            runs = [p for p in args.inputs if not p.endswith((".npy", ".npz"))]
            assert all(p in written for p in runs), shlex.join(argv)


@pytest.mark.slow
def test_command_lines_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIPLAX_CACHE_DIR", "off")
    for argv in COMMANDS:
        if argv[0] == "make" or (_needs_fashion(argv) and not FASHION.is_dir()):
            continue
        if argv[0] == "python":
            subprocess.run([sys.executable, *argv[1:]], check=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            continue
        if argv[1] == "train":
            argv = _train_overrides(argv)
        assert cli.main(argv[1:]) == 0, shlex.join(argv)
        captured = capsys.readouterr()
        if argv[1] == "train" and "--resume" not in argv:
            assert "final evaluation: certified bound" in captured.err
            assert "≈=" not in captured.err  # the progress bar's keys read key=value
    report = json.loads((tmp_path / "runs/default/report.json").read_text())
    assert report["steps"] == 20 and (tmp_path / "runs/default/training.png").stat().st_size
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert len(rows) > 8 and not any("opt_state" in r for r in rows)
