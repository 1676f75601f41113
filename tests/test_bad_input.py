"""Every rejected input, its error type and its exact message: one list, run here and shown in
README.md ("Rejected inputs"), so the table cannot go stale.

``CASES`` is the single source. Each row: the function, the input (as written in the table),
a call that makes it, the error type and the exact message. ``test_rejected_input`` runs every
call; ``test_readme_table_matches_the_cases`` checks that README.md holds exactly
:func:`render_table` between its markers. After adding a row, regenerate the README section
with ``python -m tests.test_bad_input --write``.

Certification with NaN or infinite weights, logits or bounds must raise and never certify; the
tests at the end also check the traced path (under ``jax.jit`` nothing can raise: nothing may be
certified either).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax
import liplax.nn as ln
from liplax import bounds, certify, conv, linalg, norms, training
from liplax.certify.witness import witness_gain
from liplax.guarantee import Bound
from liplax.training import data, losses
from liplax.training.checkpoint import CheckpointError, OutputError, check_output_dir
from liplax.training.models_cnn import build_cnn
from tests.nn_helpers import rngs

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- rejected-inputs:start -->", "<!-- rejected-inputs:end -->"

W = np.ones((3, 2), np.float32)
K = np.ones((3, 3, 2, 2), np.float32)
LOGITS = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
LOGITS_INF = np.array([[np.inf, 0.0], [0.0, 1.0]], np.float32)
LABELS = np.array([0, 1])


def _dense():
    return ln.Dense(3, 2, rngs=rngs())


def _nan_model():
    m = ln.Sequential(ln.Dense(3, 2, rngs=rngs()), ln.ReLU())
    m.layers[0].kernel[...] = m.layers[0].kernel[...].at[0, 0].set(jnp.nan)
    return m


def _inf_model():
    m = ln.Sequential(ln.Dense(3, 2, rngs=rngs()))
    m.layers[0].kernel[...] = m.layers[0].kernel[...].at[1, 1].set(jnp.inf)
    return m


SCRATCH = Path("/tmp/liplax-rejected-inputs")


def _scratch_file(name: str, content: bytes) -> str:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    path = SCRATCH / name
    path.write_bytes(content)
    return str(path)


def _scaled_dot(*args, **kw):
    return 2.0 * jax.lax.dot_general(*args, **kw)


def _residual_changing_shape():
    return ln.Residual(ln.Dense(3, 2, rngs=rngs())).lipschitz_bound((3,))


class Case(NamedTuple):
    function: str
    input: str
    call: object
    error: type
    message: str


CASES = [
    # ---------------------------------------------------------------- liplax.linalg
    Case("linalg.spectral_norm", "w of rank 1", lambda: linalg.spectral_norm(np.ones(3)),
         ValueError,
         'w must be a matrix of rank 2 (in, out), got shape (3,)'),
    Case("linalg.norm_inf", "w with an empty side", lambda: linalg.norm_inf(np.ones((0, 3))),
         ValueError,
         'w must have no empty dimension, got shape (0, 3)'),
    Case("linalg.gram_bound", "integer w", lambda: linalg.gram_bound(np.ones((2, 2), np.int32)),
         TypeError,
         (
             'w must be a real floating array (float32/float64, or '
             'bfloat16/float16 computed in float32), got dtype int32'
         )),
    Case("linalg.gram_bound", "complex w",
         lambda: linalg.gram_bound(np.ones((2, 2), np.complex64)), TypeError,
         'w must be a real floating array, got complex dtype complex64'),
    Case("linalg.gram_bound", "num_iters=-1", lambda: linalg.gram_bound(W, num_iters=-1),
         ValueError,
         'num_iters must be an int ≥ 0, got -1'),
    Case("linalg.gram_bound", "num_iters=2.5", lambda: linalg.gram_bound(W, num_iters=2.5),
         ValueError,
         'num_iters must be an int ≥ 0, got 2.5'),
    Case("linalg.power_iteration", "neither u nor key", lambda: linalg.power_iteration(W),
         ValueError,
         (
             'power_iteration needs a starting vector u or a PRNG key '
             '(key=...), got neither'
         )),
    Case("linalg.power_iteration", "u of the wrong shape",
         lambda: linalg.power_iteration(W, np.ones(2, np.float32)), ValueError,
         'u must have shape (3,) (the input space), got (2,)'),
    # ---------------------------------------------------------------- liplax.conv
    Case("conv.gram_bound", "kernel of rank 3", lambda: conv.gram_bound(K[0], (4, 4)),
         ValueError,
         (
             'kernel must have rank 4 in HWIO layout (kh, kw, in, out), got '
             'shape (3, 2, 2)'
         )),
    Case("conv.gram_bound", "input_shape=(4,)", lambda: conv.gram_bound(K, (4,)),
         ValueError,
         'input_shape must be a pair (H, W) of positive ints, got (4,)'),
    Case("conv.gram_bound", "input_shape=(0, 4)", lambda: conv.gram_bound(K, (0, 4)),
         ValueError,
         'input_shape[0] must be a positive int, got 0'),
    Case("conv.gram_bound", "strides=0", lambda: conv.gram_bound(K, (4, 4), strides=0),
         ValueError,
         'strides must be a positive int, got 0'),
    Case("conv.gram_bound", "strides=(1, 2, 3)",
         lambda: conv.gram_bound(K, (4, 4), strides=(1, 2, 3)), ValueError,
         'strides must be an int or a pair of ints, got (1, 2, 3)'),
    Case("conv.gram_bound", 'padding="FULL"',
         lambda: conv.gram_bound(K, (4, 4), padding="FULL"), ValueError,
         (
             "padding must be one of ('CIRCULAR', 'SAME', 'VALID') or explicit "
             "((lo, hi), (lo, hi)) ints, got 'FULL'"
         )),
    Case("conv.gram_bound", "negative explicit padding",
         lambda: conv.gram_bound(K, (4, 4), padding=((1, -1), (0, 0))), ValueError,
         'padding must be non-negative, got ((1, -1), (0, 0)) (axis 0)'),
    Case("conv.gram_bound", 'padding=((1, 2), "a")',
         lambda: conv.gram_bound(K, (4, 4), padding=((1, 2), "a")), ValueError,
         "padding[1] must be an int or a (lo, hi) pair of ints, got 'a'"),
    Case("conv.gram_bound", 'kernel larger than the input, padding="VALID"',
         lambda: conv.gram_bound(K, (2, 4), padding="VALID"), ValueError,
         (
             'VALID padding needs input_shape ≥ kernel size on every axis: axis '
             '0 has input 2 + padding 0 < kernel 3'
         )),
    Case("conv.exact_spectral_norm", "strides=2 on a 5×5 input (must divide)",
         lambda: conv.exact_spectral_norm(K, (5, 5), strides=2), ValueError,
         (
             'strides (2, 2) must divide input_shape (5, 5) for a circular '
             'convolution (axis 0: 5 % 2 != 0)'
         )),
    Case("conv.norm_inf", "boolean kernel", lambda: conv.norm_inf(K > 0, (4, 4)),
         TypeError,
         (
             'kernel must be a real floating array (float32/float64, or '
             'bfloat16/float16 computed in float32), got dtype bool'
         )),
    Case("conv.apply", "x with 3 channels for a 2-channel kernel",
         lambda: conv.apply(K, np.ones((1, 4, 4, 3), np.float32)), ValueError,
         (
             'x has 3 channels but kernel expects in = 2 (kernel shape (3, 3, '
             '2, 2))'
         )),
    # ---------------------------------------------------------------- liplax.norms
    Case("norms.spectral_norm", 'a zero-padded ConvOperator (padding="SAME")',
         lambda: norms.spectral_norm(norms.ConvOperator(K, (4, 4))), ValueError,
         (
             "op must be a circular convolution (padding='CIRCULAR') for an exact norm, got "
             "padding ((1, 1), (1, 1)): a zero-padded layer has no exact closed form; use "
             "liplax.norms.gram_bound for an upper bound"
         )),
    Case("norms.gram_bound", "a bare array instead of an operator",
         lambda: norms.gram_bound(W), TypeError,
         "op must be a liplax operator of family ('dense', 'conv') for gram_bound, got ndarray"),
    Case("norms.ConvOperator", "padding=((1, -1), (0, 0))",
         lambda: norms.ConvOperator(K, (4, 4), padding=((1, -1), (0, 0))), ValueError,
         "padding must be non-negative, got ((1, -1), (0, 0)) (axis 0)"),
    # ---------------------------------------------------------------- liplax.nn
    Case("nn.Dense", "in_features=0", lambda: ln.Dense(0, 2, rngs=rngs()), ValueError,
         'Dense: in_features must be a positive int, got 0'),
    Case("nn.Dense", 'method="svd"', lambda: ln.Dense(3, 2, method="svd", rngs=rngs()),
         ValueError,
         "Dense: method must be one of ('exact', 'gram'), got 'svd'"),
    Case("nn.Dense.lipschitz_bound", "p=3", lambda: _dense().lipschitz_bound((3,), p=3),
         ValueError,
         'Dense.lipschitz_bound: p must be 1, 2 or inf, got 3'),
    Case("nn.Dense.lipschitz_bound", "input_shape=(4,) for in_features=3",
         lambda: _dense().lipschitz_bound((4,)), ValueError,
         (
             'Dense: input_shape (4,) has 4 features on its last axis, expected '
             'in_features=3'
         )),
    Case("nn.Conv", "input_size=None",
         lambda: ln.Conv(2, 2, 3, rngs=rngs()), ValueError,
         (
             'Conv: input_size=(H, W) is required (it sizes the power-iteration '
             'state and the norm of a convolution depends on it), got None'
         )),
    Case("nn.Conv", 'padding="FULL"',
         lambda: ln.Conv(2, 2, 3, input_size=(4, 4), padding="FULL", rngs=rngs()),
         ValueError,
         (
             "Conv: padding must be one of ('CIRCULAR', 'SAME', 'VALID') or "
             "explicit ((lo, hi), (lo, hi)) ints, got 'FULL'"
         )),
    Case("nn.ExactConv", 'padding="SAME"',
         lambda: ln.ExactConv(2, 2, 3, input_size=(4, 4), padding="SAME", rngs=rngs()),
         ValueError, "ExactConv: padding must be 'CIRCULAR' (the exact norm is that of a "
         "circular convolution), got 'SAME'"),
    Case("nn.ExactConv", "strides=2 on input_size=(5, 4)",
         lambda: ln.ExactConv(2, 2, 3, input_size=(5, 4), strides=2, rngs=rngs()),
         ValueError, "ExactConv: strides (2, 2) must divide input_size (5, 4) (the exact norm "
         "by polyphase decomposition)"),
    Case("nn.BjorckDense", "order=3", lambda: ln.BjorckDense(3, 2, order=3, rngs=rngs()),
         ValueError,
         'BjorckDense: order must be 1 or 2, got 3'),
    Case("nn.GroupSort.lipschitz_bound", "group_size=3 on 4 features",
         lambda: ln.GroupSort(3).lipschitz_bound((4,)), ValueError,
         'GroupSort: group_size=3 does not divide the number of features 4'),
    Case("nn.MaxMin.lipschitz_bound", "odd width", lambda: ln.MaxMin().lipschitz_bound((3,)),
         ValueError,
         'MaxMin: needs an even number of features (width), got width 3'),
    Case("nn.Scale", "factor=nan", lambda: ln.Scale(math.nan), ValueError,
         'Scale: factor must be a finite Python number, got nan'),
    Case("nn.ScaledIdentity", "scale=inf", lambda: ln.ScaledIdentity(math.inf), ValueError,
         'ScaledIdentity: scale must be a finite Python number, got inf'),
    Case("nn.Sequential", "a layer without a bound", lambda: ln.Sequential(object()),
         TypeError,
         (
             'Sequential layer 0 (object) has no lipschitz_bound/output_shape: '
             'use liplax.nn layers (or nnx.Linear, nnx.Conv, nnx.relu, '
             'nnx.Sequential of those)'
         )),
    Case("nn.Sequential", "an nnx.Linear subclass (nnx.LoRALinear)",
         lambda: ln.Sequential(nnx.LoRALinear(3, 3, lora_rank=1, rngs=rngs(0))), TypeError,
         (
             'Sequential layer 0 (LoRALinear) is a subclass of nnx.Linear, which liplax '
             'bounds only as exactly nnx.Linear: a subclass may change the map (e.g. '
             'nnx.LoRALinear adds a low-rank update to the kernel); use the flax class '
             'itself, a liplax layer, or register an adapter '
             '(liplax.nn.plain.register_plain_layer)'
         )),
    Case("nn.bound_of", "nnx.Linear with a custom dot_general",
         lambda: ln.bound_of(nnx.Linear(3, 2, dot_general=_scaled_dot, rngs=rngs(0)), (3,)),
         ValueError,
         (
             'nnx.Linear: a custom dot_general (_scaled_dot) can compute any map; only '
             "flax's default lax.dot_general is bounded"
         )),
    Case("nn.bound_of", "nnx.Conv with dtype=bfloat16",
         lambda: ln.bound_of(nnx.Conv(2, 2, (3, 3), dtype=jnp.bfloat16, rngs=rngs(0)),
                             (5, 5, 2)),
         ValueError,
         (
             "nnx.Conv: dtype=bfloat16 rounds the kernel, inputs or outputs below the "
             "kernel's float32 (a different map); use None or a float dtype of at least "
             "float32 that holds the kernel exactly"
         )),
    Case("nn.bound_of", "nnx.Conv with padding='REFLECT'",
         lambda: ln.bound_of(nnx.Conv(2, 2, (3, 3), padding="REFLECT", rngs=rngs(0)),
                             (5, 5, 2)),
         ValueError,
         (
             "nnx.Conv: padding='REFLECT' is not bounded; use one of ('SAME', 'VALID', "
             "'same', 'valid', 'CIRCULAR') or explicit ints ('REFLECT' duplicates border "
             "pixels, 'CAUSAL' is 1-D)"
         )),
    Case("nn.Residual.lipschitz_bound", "an inner layer that changes the shape",
         _residual_changing_shape, ValueError,
         (
             'Residual: inner layer (Dense) maps input_shape (3,) to (2,); a '
             'residual branch must keep the shape'
         )),
    # ---------------------------------------------------------------- liplax.bounds
    Case("bounds.trivial_bound", "p=0", lambda: bounds.trivial_bound(_dense(), (3,), p=0),
         ValueError,
         'trivial_bound: p must be 1, 2 or inf, got 0'),
    Case("bounds.trivial_bound_penalty", 'kind="sum"',
         lambda: bounds.trivial_bound_penalty(_dense(), (3,), kind="sum"), ValueError,
         (
             "trivial_bound_penalty: kind must be one of ('log', 'product', "
             "'hinge'), got 'sum'"
         )),
    Case("bounds.trivial_bound_penalty", 'kind="hinge" without target',
         lambda: bounds.trivial_bound_penalty(_dense(), (3,), kind="hinge"), ValueError,
         (
             "trivial_bound_penalty: kind='hinge' needs a target > 0, got "
             'target=None'
         )),
    # ---------------------------------------------------------------- liplax.certify
    Case("certify.certified_radius", "NaN logits",
         lambda: certify.certified_radius(LOGITS * np.nan, LABELS, 1.0), ValueError,
         'logits must be finite, got non-finite values (nan/inf) in logits'),
    Case("certify.certified_radius", "infinite logits",
         lambda: certify.certified_radius(LOGITS_INF, LABELS, 1.0), ValueError,
         'logits must be finite, got non-finite values (nan/inf) in logits'),
    Case("certify.certified_radius", "bound = NaN",
         lambda: certify.certified_radius(LOGITS, LABELS, math.nan), ValueError,
         (
             'lipschitz must be finite, got non-finite values (nan/inf) in '
             'lipschitz'
         )),
    Case("certify.certified_radius", "bound = inf",
         lambda: certify.certified_radius(LOGITS, LABELS, math.inf), ValueError,
         (
             'lipschitz must be finite, got non-finite values (nan/inf) in '
             'lipschitz'
         )),
    Case("certify.certified_radius", "bound = -1",
         lambda: certify.certified_radius(LOGITS, LABELS, -1.0), ValueError,
         'lipschitz must be ≥ 0 (a Lipschitz bound), got -1.0'),
    Case("certify.certified_radius", 'Bound(1.0, "estimate")',
         lambda: certify.certified_radius(LOGITS, LABELS, Bound(jnp.float32(1), "estimate")),
         ValueError,
         (
             "lipschitz is of kind 'estimate': a certificate needs an 'exact' "
             "or 'upper' bound, never an estimate (power iteration and lower "
             'bounds can be below the truth)'
         )),
    Case("certify.certified_radius", "trivial_bound of a model with a NaN weight",
         lambda: certify.certified_radius(LOGITS, LABELS,
                                          bounds.trivial_bound(_nan_model(), (3,))),
         ValueError,
         (
             'lipschitz must be finite, got non-finite values (nan/inf) in '
             'lipschitz'
         )),
    Case("certify.certified_radius", "trivial_bound of a model with an infinite weight",
         lambda: certify.certified_radius(LOGITS, LABELS,
                                          bounds.trivial_bound(_inf_model(), (3,))),
         ValueError,
         (
             'lipschitz must be finite, got non-finite values (nan/inf) in '
             'lipschitz'
         )),
    Case("certify.certified_radius", "float labels",
         lambda: certify.certified_radius(LOGITS, LABELS.astype(np.float32), 1.0),
         TypeError,
         'labels must be integer class indices, got dtype float32'),
    Case("certify.certified_radius", "label 2 with 2 classes",
         lambda: certify.certified_radius(LOGITS, np.array([0, 2]), 1.0), ValueError,
         'labels must lie in [0, 2), got values outside: [0 2]'),
    Case("certify.certified_radius", "logits with one class",
         lambda: certify.certified_radius(LOGITS[:, :1], LABELS, 1.0), ValueError,
         'logits must have a last (class) axis of size ≥ 2, got shape (2, 1)'),
    Case("certify.certified_radius", 'head="max"',
         lambda: certify.certified_radius(LOGITS, LABELS, 1.0, head="max"), ValueError,
         "head must be one of ('global', 'per_logit'), got 'max'"),
    Case("certify.certified_radius", "input_scale=0",
         lambda: certify.certified_radius(LOGITS, LABELS, 1.0, input_scale=0.0),
         ValueError,
         (
             "input_scale must be positive (the normalization's divisor), got "
             '0.0'
         )),
    Case("certify.certified_radius", "p=3",
         lambda: certify.certified_radius(LOGITS, LABELS, 1.0, p=3), ValueError,
         'certify: p must be 1, 2 or inf, got 3'),
    Case("certify.certified_accuracy", "eps = NaN",
         lambda: certify.certified_accuracy(LOGITS, LABELS, 1.0, math.nan), ValueError,
         'eps must be finite, got non-finite values (nan/inf) in eps'),
    Case("certify.certified_accuracy", "eps = -0.1",
         lambda: certify.certified_accuracy(LOGITS, LABELS, 1.0, -0.1), ValueError,
         'eps must be ≥ 0, got -0.10000000149011612'),
    Case("certify.certified_accuracy", "bound = inf",
         lambda: certify.certified_accuracy(LOGITS, LABELS, math.inf, 0.1), ValueError,
         (
             'lipschitz must be finite, got non-finite values (nan/inf) in '
             'lipschitz'
         )),
    Case("certify.tightness", "upper = NaN",
         lambda: certify.tightness(_dense(), np.ones((2, 3), np.float32), math.nan,
                                   key=jax.random.key(0)), ValueError,
         'upper must be finite, got non-finite values (nan/inf) in upper'),
    Case("certify.tightness", "a model with a NaN weight (upper from trivial_bound)",
         lambda: certify.tightness(_nan_model(), np.ones((2, 3), np.float32),
                                   key=jax.random.key(0)), ValueError,
         'upper must be finite, got non-finite values (nan/inf) in upper'),
    Case("certify.tightness", 'upper = Bound(2.0, "estimate")',
         lambda: certify.tightness(_dense(), np.ones((2, 3), np.float32),
                                   Bound(jnp.float32(2), "estimate"), key=jax.random.key(0)),
         ValueError,
         (
             "upper is of kind 'estimate': a certificate needs an 'exact' or "
             "'upper' bound, never an estimate (power iteration and lower "
             'bounds can be below the truth)'
         )),
    Case("certify.tightness", "upper=None for a plain callable",
         lambda: certify.tightness(lambda x: x, np.ones((2, 3), np.float32),
                                   key=jax.random.key(0)), TypeError,
         (
             "tightness: upper=None takes the trivial bound of a liplax model, but model is a "
             "function; pass upper= (a Bound or a number) for a plain callable"
         )),
    Case("certify.lipschitz_lower_bound", "steps=0",
         lambda: certify.lipschitz_lower_bound(jnp.sin, np.ones((2, 3), np.float32),
                                               key=jax.random.key(0), steps=0), ValueError,
         'steps must be an int ≥ 1, got 0'),
    Case("certify.lipschitz_lower_bound", "xs with a NaN",
         lambda: certify.lipschitz_lower_bound(jnp.sin, np.full((2, 3), np.nan, np.float32),
                                               key=jax.random.key(0)), ValueError,
         'xs must be finite, got non-finite values (nan/inf) in xs'),
    Case("guarantee.Bound", 'kind="guess"', lambda: Bound(1.0, "guess"), ValueError,
         (
             "Bound kind must be one of ('exact', 'upper', 'estimate'), got "
             "'guess'"
         )),
    # ---------------------------------------------------------------- liplax.training losses, data
    Case("training.losses.cross_entropy", "logits of rank 1",
         lambda: losses.cross_entropy(np.ones(3, np.float32), np.zeros(3, np.int32)),
         ValueError, "logits must have rank 2 (batch, classes), got shape (3,)"),
    Case("training.data.read_idx", "a missing file",
         lambda: data.read_idx("/nonexistent/train-images-idx3-ubyte"), data.DataError,
         "/nonexistent/train-images-idx3-ubyte: file not found (expected an IDX file)"),
    Case("training.data.read_idx", "a truncated file",
         lambda: data.read_idx(_scratch_file("short-idx", bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))),
         data.DataError,
         "/tmp/liplax-rejected-inputs/short-idx: truncated data: 2 data bytes, expected 9 for "
         "shape (9,) of uint8"),
    Case("training.data.load", "mnist without data_dir", lambda: data.load("mnist"), data.DataError,
         "mnist: data_dir is required; expected the mnist IDX files train-images-idx3-ubyte, "
         "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each raw or "
         "with .gz) in data_dir; pass the folder holding them as data_dir (--data-dir)"),
    # ---------------------------------------------------------------- training (liplax train)
    Case("training.get_config", "an unknown config", lambda: training.get_config("nope"),
         ValueError, "unknown config 'nope'; choose one of " + ", ".join(training.CONFIGS)),
    Case("training.models_cnn.build_cnn", "cnn_aol with odd widths",
         lambda: build_cnn("cnn_aol", (8, 8, 1), (4, 5), 10, rngs=rngs()), ValueError,
         "build_model: cnn_aol needs even widths (MaxMin sorts pairs), got (4, 5)"),
    Case("training.with_overrides", "--set steps=1.5",
         lambda: training.get_config("default", ["steps=1.5"]), ValueError,
         "config: steps='1.5' is not a valid int"),
    Case("training.with_overrides", "--set eval_every=7",
         lambda: training.get_config("default", ["eval_every=7"]), ValueError,
         "config: eval_every=7; expected a positive multiple of log_every=50"),
    Case("training.with_overrides", "--set gap_weight=1 penalty=none",
         lambda: training.get_config("default", ["gap_weight=1", "penalty=none"]), ValueError,
         "config: penalty='none'; expected log when gap_weight > 0 (the gap is log U − log of the "
         "attained gain)"),
    Case("training.with_overrides", "--set bjorck_order=3",
         lambda: training.get_config("fashion-groupsort4", ["bjorck_order=3"]), ValueError,
         "config: bjorck_order=3; expected 1 or 2"),
    Case("certify.witness.witness_gain", "a pair witness with x = y",
         lambda: witness_gain(lambda x: x, "pair", np.ones(3), np.ones(3)), ValueError,
         "witness_gain: a pair witness needs x ≠ y"),
    Case("training.train", "--out naming a file",
         lambda: check_output_dir(_scratch_file("file", b"x"), 1), OutputError,
         "--out '/tmp/liplax-rejected-inputs/file': exists and is not a folder"),
    Case("training.load_run", "a folder without checkpoints",
         lambda: training.load_run("/nonexistent/run"), CheckpointError,
         "'/nonexistent/run': not a liplax run folder (expected a 'checkpoints' folder inside)"),
    Case("certify.local_norm_ascent", "starts of rank 1",
         lambda: certify.local_norm_ascent(lambda x: x, np.ones(3, np.float32)), ValueError,
         "starts must be a batch (n ≥ 1, ...) of inputs, got shape (3,)"),
    # ---------------------------------------------------------------- liplax.traced
    Case("lipschitz_bound", "integer example_input",
         lambda: liplax.lipschitz_bound(jnp.sin, np.ones(3, np.int32)), ValueError,
         "lipschitz_bound: example_input must be a float32 or float64 array, got dtype int32"),
    Case("lipschitz_bound", "p=3", lambda: liplax.lipschitz_bound(jnp.sin, W, p=3), ValueError,
         "lipschitz_bound: p must be 1, 2 or inf, got 3"),
    Case("lipschitz_bound", "f returning two arrays",
         lambda: liplax.lipschitz_bound(lambda x: (x, x), W), ValueError,
         "lipschitz_bound: f must return one array, got 2 outputs"),
]


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def render_table() -> str:
    """The README section's table, one row per case."""
    lines = ["| function | input | error |", "| --- | --- | --- |"]
    for c in CASES:
        error = f"{c.error.__name__}: {c.message}"
        lines.append(f"| `{c.function}` | {c.input} | {_cell(error)} |")
    return "\n".join(lines)


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise AssertionError(f"README.md lacks the markers {START} … {END}")
    return text[text.index(START) + len(START): text.index(END)].strip()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.function}-{c.input}" for c in CASES])
def test_rejected_input(case):
    with pytest.raises(case.error) as info:
        case.call()
    assert type(info.value) is case.error
    assert str(info.value) == case.message


def test_readme_table_matches_the_cases():
    assert _readme_section() == render_table(), (
        "README.md's 'Rejected inputs' table is stale: run python -m tests.test_bad_input --write"
    )


def _write_readme() -> None:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{render_table()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    if "--messages" in sys.argv:  # print what each call raises now (to fill in new rows)
        for c in CASES:
            try:
                c.call()
                print(f"{c.function} | {c.input} | NOT REJECTED")
            except Exception as e:  # noqa: BLE001 (reporting, not swallowing)
                print(f"{c.function} | {c.input} | {type(e).__name__} | {e!s}")
    if "--write" in sys.argv:
        _write_readme()
        print("README.md updated")
    del re


# ------------------------------------------------------------------ certification: never certify


_BAD_LOGITS = {
    "nan": np.array([[np.nan, 0.0], [0.0, 1.0]], np.float32),
    "+inf true logit": np.array([[np.inf, 0.0], [0.0, 1.0]], np.float32),
    "-inf runner-up": np.array([[2.0, -np.inf], [0.0, 1.0]], np.float32),
}


@pytest.mark.parametrize("bad", sorted(_BAD_LOGITS))
def test_non_finite_logits_are_never_certified_under_jit(bad):
    """Under jit nothing can raise; the non-finite example must simply not be certified (radius
    0, not counted at any eps), while the finite example stays certified."""
    logits = _BAD_LOGITS[bad]
    radius = jax.jit(certify.certified_radius)(logits, LABELS, 1.0)
    acc = jax.jit(certify.certified_accuracy)(logits, LABELS, 1.0, jnp.array([0.0, 0.1]))
    assert float(radius[0]) == 0.0, (bad, radius)
    assert float(radius[1]) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(acc), [0.5, 0.5])


@pytest.mark.parametrize("bound", [math.nan, math.inf, -math.inf])
def test_non_finite_bounds_never_certify_under_jit(bound):
    radius = jax.jit(certify.certified_radius)(LOGITS, LABELS, jnp.float32(bound))
    acc = jax.jit(certify.certified_accuracy)(LOGITS, LABELS, jnp.float32(bound),
                                             jnp.array([0.0, 0.1]))
    np.testing.assert_array_equal(np.asarray(radius), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(acc), [0.0, 0.0])


def test_nan_weight_model_never_certifies_under_jit():
    model = _nan_model()
    b = bounds.trivial_bound(model, (3,))
    assert math.isnan(float(b.value))  # the bound itself says so
    radius = jax.jit(lambda v: certify.certified_radius(LOGITS, LABELS, v))(b.value)
    np.testing.assert_array_equal(np.asarray(radius), [0.0, 0.0])
