"""liplax.sweep: a batched sweep equals the single calls, in order, for every chunk size and mesh.

The single calls are the operators themselves (jitted one item at a time); the float64 NumPy
truths come from ``tests/reference.py`` (SVD of the dense matrix, FFT + SVD for circular convs).
The multi-device test runs in subprocesses: ``XLA_FLAGS=--xla_force_host_platform_device_count``
is read when JAX starts, so it cannot change inside this pytest process.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import liplax
import liplax.nn as ln
from liplax import bounds, conv, linalg
from liplax.guarantee import product_margin
from liplax.sweep import model_sweep, sweep
from tests import reference as ref

ROOT = Path(__file__).resolve().parents[1]
CHUNKS = (None, 1, 2, 3, 4, 7, 10)  # 7 items: divisors, non-divisors, the batch, beyond it.
HW = (6, 6)

conv_gram = functools.partial(conv.gram_bound, input_shape=HW, num_iters=5)
conv_exact = functools.partial(conv.exact_spectral_norm, input_shape=HW)
conv_power = functools.partial(
    conv.power_iteration, input_shape=HW, padding="CIRCULAR", num_iters=30, key=jax.random.key(3)
)
dense_gram = functools.partial(linalg.gram_bound, num_iters=6)


def _warm_power(item):
    """Power iteration warm-started from a per-item vector: a pytree (w, u) in, (σ̂, u) out."""
    w, u = item
    return linalg.power_iteration(w, u, num_iters=5)


def _kernels(n: int = 7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 3, 2, 3)) / 4.0).astype(np.float32)


def _matrices(n: int = 7, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 9, 5)).astype(np.float32)


def _single(fn, batch) -> list:
    one = jax.jit(fn)
    size = len(jax.tree_util.tree_leaves(batch)[0])
    return [one(jax.tree_util.tree_map(lambda x, i=i: x[i], batch)) for i in range(size)]


def _stack(results):
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *results)


@pytest.fixture(scope="module")
def kernels() -> np.ndarray:
    return _kernels()


@pytest.fixture(scope="module")
def gram_singles(kernels) -> np.ndarray:
    return _stack(_single(conv_gram, kernels)).value


@pytest.fixture(scope="module")
def same_truths(kernels) -> np.ndarray:
    """‖layer‖₂ of each kernel with SAME zero padding, from the materialized operator."""
    return np.array([ref.spectral_norm_truth(ref.conv_operator(k, HW, padding="SAME"))
                     for k in kernels])


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_conv_gram_sweep_equals_single_calls(kernels, gram_singles, same_truths, chunk_size):
    got = np.asarray(sweep(conv_gram, jnp.asarray(kernels), chunk_size=chunk_size).value)
    assert got.shape == (len(kernels),)
    np.testing.assert_allclose(got, gram_singles, rtol=2e-6)
    assert np.all(got >= same_truths)  # still each item's own upper bound.


@pytest.mark.parametrize("chunk_size", (None, 3))
def test_conv_exact_sweep_matches_fft_svd_truth(kernels, chunk_size):
    got = np.asarray(sweep(conv_exact, kernels, chunk_size=chunk_size).value)
    singles = _stack(_single(conv_exact, kernels)).value
    np.testing.assert_allclose(got, singles, rtol=2e-6)
    truths = [ref.circular_spectral_norm_fft(k, HW) for k in kernels]
    np.testing.assert_allclose(got, truths, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", (None, 2, 5))
def test_dense_exact_and_gram_sweeps(chunk_size):
    ws = _matrices()
    truths = np.array([ref.spectral_norm_truth(ref.dense_operator(w)) for w in ws])
    exact = np.asarray(sweep(linalg.spectral_norm, ws, chunk_size=chunk_size).value)
    np.testing.assert_allclose(exact, truths, rtol=1e-5)
    np.testing.assert_allclose(exact, _stack(_single(linalg.spectral_norm, ws)).value, rtol=2e-6)
    gram = np.asarray(sweep(dense_gram, ws, chunk_size=chunk_size).value)
    np.testing.assert_allclose(gram, _stack(_single(dense_gram, ws)).value, rtol=2e-6)
    assert np.all(gram >= truths)
    assert np.all(gram <= truths * 1.05)  # 6 Gram steps on a 9×5 matrix: within a few percent.


@pytest.mark.parametrize("chunk_size", (None, 1, 3))
def test_input_order_is_preserved(chunk_size):
    """Item i is c_i·W with distinct c_i in a shuffled order: the result must be c_i·‖W‖ in that
    order, and permuting the batch permutes the result."""
    w = _matrices(1)[0]
    scales = np.array([5.0, 1.0, 7.0, 2.0, 0.5, 3.0, 6.0, 4.0], np.float32)
    batch = scales[:, None, None] * w[None]
    got = np.asarray(sweep(linalg.spectral_norm, batch, chunk_size=chunk_size).value)
    np.testing.assert_allclose(got, scales * ref.spectral_norm_truth(ref.dense_operator(w)),
                               rtol=1e-5)
    perm = np.random.default_rng(0).permutation(len(scales))
    permuted = np.asarray(sweep(linalg.spectral_norm, batch[perm], chunk_size=chunk_size).value)
    np.testing.assert_array_equal(permuted, got[perm])


@pytest.mark.parametrize("chunk_size", (None, 3))
def test_pytree_outputs_of_power_iteration(kernels, chunk_size):
    est, u = sweep(conv_power, kernels, chunk_size=chunk_size)
    singles = _stack(_single(conv_power, kernels))
    assert est.value.shape == (len(kernels),) and u.shape == (len(kernels), *HW, kernels.shape[3])
    np.testing.assert_allclose(np.asarray(est.value), singles[0].value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(u), singles[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u).reshape(len(kernels), -1), axis=1), 1,
                               rtol=1e-5)
    truths = np.array([ref.circular_spectral_norm_fft(k, HW) for k in kernels])
    assert np.all(np.asarray(est.value) <= truths * (1 + 1e-5))  # an estimate: from below.


@pytest.mark.parametrize("chunk_size", (None, 2))
def test_pytree_inputs_warm_start(chunk_size):
    ws = _matrices()
    us = np.random.default_rng(2).standard_normal((len(ws), ws.shape[1])).astype(np.float32)
    est, u = sweep(_warm_power, (ws, us), chunk_size=chunk_size)
    singles = _stack(_single(_warm_power, (ws, us)))
    np.testing.assert_allclose(np.asarray(est.value), singles[0].value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(u), singles[1], rtol=1e-4, atol=1e-5)


def test_one_device_mesh_equals_no_mesh(kernels):
    mesh = jax.make_mesh((1,), ("batch",))
    plain = np.asarray(sweep(conv_gram, kernels, chunk_size=3).value)
    np.testing.assert_allclose(
        np.asarray(sweep(conv_gram, kernels, chunk_size=3, mesh=mesh).value), plain, rtol=2e-6
    )


def test_sweep_inside_jit_and_exported():
    ws = _matrices()
    jitted = jax.jit(functools.partial(sweep, linalg.spectral_norm, chunk_size=3))
    np.testing.assert_allclose(np.asarray(jitted(ws).value),
                               np.asarray(sweep(linalg.spectral_norm, ws).value), rtol=2e-6)
    assert liplax.sweep is sweep and liplax.model_sweep is model_sweep


def test_chunked_peak_memory_is_independent_of_batch_size():
    """XLA's compiled temporary buffer (the peak of the intermediates): constant in the batch
    size for a chunked sweep, growing with it for a single vmap."""
    fn = functools.partial(linalg.gram_bound, num_iters=4)

    def temp_bytes(batch: int, chunk: int | None) -> int:
        spec = jax.ShapeDtypeStruct((batch, 48, 48), jnp.float32)
        run = jax.jit(functools.partial(sweep, fn, chunk_size=chunk))
        return run.lower(spec).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(16, 4), temp_bytes(64, 4)
    assert large <= small + 64 * 4  # at most the (B,) result buffer may grow.
    assert temp_bytes(64, None) > 3 * temp_bytes(16, None) > 0


# --------------------------------------------------------------------------------------------
# Bad arguments: clear errors naming the argument.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", (0, -2, 2.5, True, "4"))
def test_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        sweep(linalg.spectral_norm, _matrices(), chunk_size=chunk_size)


def test_bad_fn_mesh_and_batch():
    ws = _matrices()
    with pytest.raises(TypeError, match="fn must be a callable"):
        sweep("spectral_norm", ws)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        sweep(linalg.spectral_norm, ws, mesh="cpu")
    with pytest.raises(ValueError, match="share the leading"):
        sweep(_warm_power, (ws, np.ones((3, 9), np.float32)))
    with pytest.raises(ValueError, match="leading batch axis"):
        sweep(linalg.spectral_norm, np.float32(1.0))
    with pytest.raises(ValueError, match="at least one item"):
        sweep(linalg.spectral_norm, np.zeros((0, 3, 3), np.float32))
    with pytest.raises(ValueError, match="no array leaves"):
        sweep(linalg.spectral_norm, ())
    with pytest.raises(TypeError, match="batch must hold arrays"):
        sweep(linalg.spectral_norm, [1.0, 2.0])
    # the operator's own checks see one item: a batch of vectors is not a batch of matrices.
    with pytest.raises(ValueError, match="w must be a matrix"):
        sweep(linalg.spectral_norm, np.ones((4, 3), np.float32))


# --------------------------------------------------------------------------------------------
# 1 and 4 (simulated) devices.
# --------------------------------------------------------------------------------------------

_DEVICE_SCRIPT = textwrap.dedent(
    """
    import functools, json, sys
    import jax, numpy as np
    from liplax import conv, linalg
    from liplax.sweep import sweep
    assert jax.device_count() == int(sys.argv[1]), jax.devices()
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    rng = np.random.default_rng(0)
    ks = (rng.standard_normal((10, 3, 3, 2, 3)) / 4).astype(np.float32)  # 10: 4 does not divide
    gram = functools.partial(conv.gram_bound, input_shape=(6, 6), num_iters=5)
    power = functools.partial(conv.power_iteration, input_shape=(6, 6), num_iters=20,
                              key=jax.random.key(0))
    out = {}
    for c in (None, 1, 2):
        out[f"gram_{c}"] = np.asarray(sweep(gram, ks, chunk_size=c, mesh=mesh).value).tolist()
    est, u = sweep(power, ks, chunk_size=2, mesh=mesh)
    out["power"] = np.asarray(est.value).tolist()
    out["power_u"] = np.asarray(u).reshape(-1).tolist()
    exact = sweep(linalg.spectral_norm, ks.reshape(10, 9, 6), mesh=mesh)
    out["exact"] = np.asarray(exact.value).tolist()
    print(json.dumps(out))
    """
)


def _run_on_devices(count: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT, str(count)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh processes (~20 s); the 1-device mesh test runs by default
def test_one_and_four_devices_agree():
    one, four = _run_on_devices(1), _run_on_devices(4)
    assert one.keys() == four.keys()
    for name in one:
        assert len(one[name]) == len(four[name])
        np.testing.assert_allclose(four[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # and the sharded results are the single calls (in order), not merely self-consistent.
    ks = (np.random.default_rng(0).standard_normal((10, 3, 3, 2, 3)) / 4).astype(np.float32)
    gram = functools.partial(conv.gram_bound, input_shape=(6, 6), num_iters=5)
    np.testing.assert_allclose(four["gram_2"], _stack(_single(gram, ks)).value, rtol=2e-6)


# --------------------------------------------------------------------------------------------
# model_sweep: the bounds of many models of one architecture.
# --------------------------------------------------------------------------------------------


def _mlp(seed: int):
    r = nnx.Rngs(seed)
    return ln.Sequential(ln.Dense(5, 6, rngs=r), ln.MaxMin(), ln.Dense(6, 3, rngs=r))


@pytest.mark.parametrize("chunk_size", (None, 2))
def test_model_sweep_equals_per_model_bounds(chunk_size):
    models = [_mlp(s) for s in range(3)]
    out = model_sweep(models, (5,), chunk_size=chunk_size)
    for i, m in enumerate(models):
        single = bounds.trivial_bound(m, (5,))
        assert out["trivial"].kind == single.kind == "upper"
        np.testing.assert_allclose(float(out["trivial"].value[i]), float(single.value), rtol=2e-6)
        per_layer = bounds.layer_bounds(m, (5,))
        assert [n for n, _ in out["layers"]] == [n for n, _ in per_layer]
        for (_, got), (_, want) in zip(out["layers"], per_layer, strict=True):
            assert got.kind == want.kind
            np.testing.assert_allclose(float(got.value[i]), float(want.value), rtol=2e-6)
        # the trivial bound of a Sequential is the product of its layer bounds, rounded up by
        # the documented margin (guarantee.product_margin).
        prod = np.prod([float(b.value[i]) for _, b in out["layers"]])
        margin = product_margin([b.kind for _, b in out["layers"]], np.float32)
        np.testing.assert_allclose(float(out["trivial"].value[i]), prod * (1 + margin), rtol=1e-6)


def test_model_sweep_lower_bounds_are_the_single_ascents_and_below_the_truth():
    # Linear models (Dense·Dense): the Lipschitz constant is ‖W1 W2‖₂ exactly, attained
    # everywhere, so the swept lower bound must equal it and the per-model local_norm_ascent.
    from liplax.certify import local_norm_ascent

    models = [ln.Sequential(ln.Dense(5, 6, rngs=nnx.Rngs(s)), ln.Dense(6, 3, rngs=nnx.Rngs(s + 9)))
              for s in range(3)]
    xs = jax.random.normal(jax.random.key(0), (4, 5))
    out = model_sweep(models, (5,), xs=xs, lower_steps=5)
    assert out["lower"].kind == "estimate"
    for i, m in enumerate(models):
        w1, w2 = (np.asarray(layer.kernel[...], np.float64) for layer in m.layers)
        truth = np.linalg.norm(w1 @ w2, 2)
        assert float(out["lower"].value[i]) == pytest.approx(truth, rel=1e-5)
        single = local_norm_ascent(lambda x, m=m: m(x[None])[0],
                                   jnp.concatenate([jnp.zeros((1, 5)), xs]), steps=5)
        assert float(out["lower"].value[i]) == pytest.approx(float(single.value), rel=1e-5)
        assert float(out["tightness"][i]) >= 1 - 1e-5
    with pytest.raises(ValueError, match="xs must be a batch"):
        model_sweep(models, (5,), xs=jnp.ones((4, 6)))


def test_model_sweep_bad_models():
    with pytest.raises(ValueError, match="models must be a non-empty list"):
        model_sweep([], (5,))
    with pytest.raises(TypeError, match=r"models\[1\] must be a flax.nnx.Module"):
        model_sweep([_mlp(0), "ckpt"], (5,))
    other = ln.Sequential(ln.Dense(5, 7, rngs=nnx.Rngs(0)), ln.MaxMin(),
                          ln.Dense(7, 3, rngs=nnx.Rngs(1)))
    with pytest.raises(ValueError, match=r"models\[1\] does not have the architecture"):
        model_sweep([_mlp(0), other], (5,))
