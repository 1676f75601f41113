"""liplax.training.data: the IDX format, dataset loaders and seeded batching."""

from __future__ import annotations

import gzip
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax.training import data

IDX_CODES = {
    np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
    np.float64: 0x0E,
}


def sample_array(dtype, shape=(3, 2, 5), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.normal(scale=1e3, size=shape).astype(dt)
        a.flat[0], a.flat[1] = np.finfo(dt).max, -np.finfo(dt).tiny
        return a
    info = np.iinfo(dt)
    a = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)
    a.flat[0], a.flat[1] = info.min, info.max
    return a


def handmade_idx(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built byte by byte from the format's definition (not from write_idx)."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


# ----------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize(
    "filename,compress",
    [("a.idx", None), ("a.idx.gz", None), ("a.idx.gz", False), ("a.idx", True)],
)
def test_idx_round_trip(tmp_path, dtype, filename, compress):
    a = sample_array(dtype)
    path = tmp_path / filename
    data.write_idx(path, a, compress=compress)
    zipped = filename.endswith(".gz") if compress is None else compress
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == zipped  # compression follows `compress`, not the name
    if zipped:
        raw = gzip.decompress(raw)
    big_endian = a.astype(a.dtype.newbyteorder(">")).tobytes()
    assert raw == handmade_idx(IDX_CODES[dtype], a.shape, big_endian)
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == a.shape
    np.testing.assert_array_equal(back, a)


def test_read_handmade_big_endian(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(handmade_idx(0x0B, (2, 2), bytes([0, 1, 1, 2, 0xFF, 0xFE, 0x80, 0])))
    np.testing.assert_array_equal(data.read_idx(path), [[1, 258], [-2, -32768]])
    path.write_bytes(gzip.compress(handmade_idx(0x0D, (1,), struct.pack(">f", 1.5))))
    np.testing.assert_array_equal(data.read_idx(str(path)), np.array([1.5], np.float32))
    path.write_bytes(handmade_idx(0x08, (0, 4), b""))
    assert data.read_idx(path).shape == (0, 4)


def _corrupt_cases(tmp_path):
    good = handmade_idx(0x0C, (2, 3), np.arange(6, dtype=">i4").tobytes())
    zipped = gzip.compress(good)
    return {
        "truncated data": good[:-1],
        "trailing bytes": good + b"\x00",
        "truncated data.gz": gzip.compress(good[:-4]),
        "trailing bytes.gz": gzip.compress(good + b"\x00\x00\x00\x00"),
        "corrupt gzip": zipped[: len(zipped) // 2],
        "corrupt gzip ": zipped[:10] + b"\x00" * (len(zipped) - 10),
        "bad magic": b"\x01\x00" + good[2:],
        "bad magic ": b"",
        "unknown IDX dtype code 0x0A": good[:2] + b"\x0a" + good[3:],
        "truncated header": good[:9],
    }


@pytest.mark.parametrize("case", list(_corrupt_cases(None)))
def test_read_idx_rejects_malformed(tmp_path, case):
    path = tmp_path / f"file-{len(case)}-{case.strip().replace(' ', '_')}"
    path.write_bytes(_corrupt_cases(tmp_path)[case])
    what = case.strip().removesuffix(".gz")
    with pytest.raises(data.DataError, match=what) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nothing-here-idx1-ubyte"
    with pytest.raises(data.DataError, match="file not found") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.uint16, np.complex64])
def test_write_idx_rejects_other_dtypes(tmp_path, dtype):
    expected = f"array must have an IDX dtype.*got dtype {np.dtype(dtype)}"
    with pytest.raises(TypeError, match=expected):
        data.write_idx(tmp_path / "a", np.zeros(3, dtype))
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------- IDX datasets


def fake_mnist(folder, *, n_train=7, n_test=4, hw=(4, 6), gz=(False, True, True, False), seed=0):
    """Write a tiny MNIST-format folder; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, *hw)).astype(np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, *hw)).astype(np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test).astype(np.uint8),
    }
    arrays["train_images"][0, 0, 0], arrays["train_images"][0, 0, 1] = 0, 255
    os.makedirs(folder, exist_ok=True)
    for (key, stem), zipped in zip(data.IDX_FILES.items(), gz, strict=True):
        data.write_idx(os.path.join(folder, stem + (".gz" if zipped else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("gz", [(False,) * 4, (True,) * 4, (True, False, False, True)])
def test_load_idx_dataset(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    ds = data.load_idx_dataset(tmp_path, name="mnist")
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (4, 6, 1)
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(x[..., 0] * 255, arrays[f"{split}_images"].astype(np.float32))
        np.testing.assert_array_equal(y, arrays[f"{split}_labels"])
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def _bad_folder(tmp_path, case):
    """A fake folder with one defect; returns the file stem the error must name."""
    arrays = fake_mnist(tmp_path)
    stems = data.IDX_FILES
    if case == "rank of images":
        data.write_idx(tmp_path / stems["train_images"], arrays["train_images"][:, 0])
        return stems["train_images"], "rank 3"
    if case == "dtype of images":
        data.write_idx(tmp_path / stems["train_images"], arrays["train_images"].astype(np.float32))
        return stems["train_images"], "uint8"
    if case == "rank of labels":
        data.write_idx(tmp_path / (stems["test_labels"]), arrays["test_labels"][:, None])
        return stems["test_labels"], "rank 1"
    if case == "counts":
        data.write_idx(tmp_path / (stems["train_labels"] + ".gz"), arrays["train_labels"][:-1])
        return stems["train_labels"], "6 labels, expected one per image"
    if case == "labels out of range":
        bad = arrays["test_labels"].copy()
        bad[1] = 10
        data.write_idx(tmp_path / stems["test_labels"], bad)
        return stems["test_labels"], r"labels must lie in \[0, 10\)"
    if case == "image size":
        data.write_idx(tmp_path / (stems["test_images"] + ".gz"), arrays["test_images"][:, :3])
        return stems["test_images"], "expected the training size"
    if case == "missing file":
        os.remove(tmp_path / (stems["train_labels"] + ".gz"))
        return stems["train_labels"], "file not found"
    if case == "malformed file":
        (tmp_path / (stems["test_images"] + ".gz")).write_bytes(b"\x1f\x8b not gzip")
        return stems["test_images"], "corrupt gzip"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["rank of images", "dtype of images", "rank of labels", "counts", "labels out of range",
     "image size", "missing file", "malformed file"],
)
def test_load_idx_dataset_rejects(tmp_path, case):
    stem, what = _bad_folder(tmp_path, case)
    with pytest.raises(data.DataError, match=what) as err:
        data.load_idx_dataset(tmp_path)
    assert os.path.join(str(tmp_path), stem) in str(err.value)
    if case == "missing file":  # the message lists every file expected
        assert all(s in str(err.value) for s in data.IDX_FILES.values())


@pytest.mark.parametrize("name,hint", [("mnist", "--data-dir"), ("fashion-mnist", "apt-get")])
def test_missing_folder_lists_files(tmp_path, name, hint):
    folder = tmp_path / "absent"
    with pytest.raises(data.DataError, match="folder not found") as err:
        data.load_idx_dataset(folder, name)
    msg = str(err.value)
    assert str(folder) in msg and hint in msg
    assert all(s in msg for s in data.IDX_FILES.values())
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in msg


def test_load_by_name(tmp_path):
    arrays = fake_mnist(tmp_path)
    for name in ("mnist", "fashion-mnist"):
        ds = data.load(name, data_dir=str(tmp_path))
        assert ds.name == name
        np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    with pytest.raises(data.DataError, match="mnist: data_dir is required"):
        data.load("mnist")
    with pytest.raises(ValueError, match=r"name must be one of \('digits', 'fashion-mnist', "):
        data.load("cifar10")
    with pytest.raises(ValueError, match="data_dir is not used by 'digits'"):
        data.load("digits", data_dir=tmp_path)
    assert data.DATASETS == ("digits", "fashion-mnist", "mnist")


# ----------------------------------------------------------------------------- digits


def test_load_digits_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    raw = sklearn_datasets.load_digits()
    ds = data.load_digits()
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    n_train, n_test = len(ds.y_train), len(ds.y_test)
    assert n_train + n_test == len(raw.target) == 1797
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))  # the 0..16 grey levels, scaled
    # the two sets partition the original examples (compare sorted rows with their labels)
    y = np.concatenate([ds.y_train, ds.y_test])
    ours = np.concatenate([x.reshape(len(x), -1) * 16, y[:, None]], 1)
    theirs = np.concatenate([raw.data, raw.target[:, None]], 1)

    def sorted_rows(rows):
        return rows[np.lexsort(rows.T[::-1])]

    np.testing.assert_array_equal(sorted_rows(ours), sorted_rows(theirs))
    # stratified: each class keeps round(0.25 n_c) test examples
    counts = np.bincount(raw.target)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.round(0.25 * counts))
    np.testing.assert_array_equal(
        np.bincount(ds.y_train, minlength=10), counts - np.round(0.25 * counts)
    )


def test_load_digits_deterministic_and_seeded():
    pytest.importorskip("sklearn")
    a, b, c = data.load_digits(seed=3), data.load_digits(seed=3), data.load_digits(seed=4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.y_train, c.y_train)
    small = data.load_digits(test_fraction=0.1)
    assert abs(len(small.y_test) - 180) <= 10
    for bad in (0.0, 1.0, -0.2, "0.5", True):
        with pytest.raises(ValueError, match="test_fraction must be a number in"):
            data.load_digits(test_fraction=bad)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        data.load_digits(seed=-1)


# ----------------------------------------------------------------------------- batching


def test_steps_per_epoch():
    assert data.steps_per_epoch(10, 3) == 3 and data.steps_per_epoch(12, 4) == 3
    assert data.steps_per_epoch(5, 5) == 1
    with pytest.raises(ValueError, match="batch_size must be ≤ n = 3.*got 4"):
        data.steps_per_epoch(3, 4)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        data.steps_per_epoch(3, 0)
    with pytest.raises(ValueError, match="n must be a positive int, got 2.0"):
        data.steps_per_epoch(2.0, 1)


def test_batch_indices_epochs_are_permutations():
    key = jax.random.key(0)
    n, bs = 12, 4
    epochs = []
    for e in range(4):
        idx = np.concatenate(
            [np.asarray(data.batch_indices(key, n, bs, 3 * e + i)) for i in range(3)]
        )
        np.testing.assert_array_equal(np.sort(idx), np.arange(n))  # each index exactly once
        epochs.append(idx)
    assert len({tuple(e) for e in epochs}) == 4  # every epoch has its own order
    # dropped remainder: 10 = 3·3 + 1, each epoch still draws 9 distinct valid indices
    idx = np.concatenate([np.asarray(data.batch_indices(key, 10, 3, 6 + i)) for i in range(3)])
    assert len(set(idx.tolist())) == 9 and idx.min() >= 0 and idx.max() < 10


def test_batch_indices_pure_and_jittable():
    key = jax.random.key(1)
    eager = [np.asarray(data.batch_indices(key, 50, 8, s)) for s in range(14)]
    again = [np.asarray(data.batch_indices(key, 50, 8, np.int32(s))) for s in range(14)]
    np.testing.assert_array_equal(eager, again)
    jitted = jax.jit(data.batch_indices, static_argnums=(1, 2))
    for s in (0, 5, 6, 13):
        np.testing.assert_array_equal(jitted(key, 50, 8, jnp.int32(s)), eager[s])
    # a traced step inside a scan, as a training loop would use it
    def body(carry, s):
        return carry, data.batch_indices(key, 50, 8, s)

    _, scanned = jax.lax.scan(body, 0, jnp.arange(14))
    np.testing.assert_array_equal(np.asarray(scanned), np.stack(eager))
    other = np.asarray(data.batch_indices(jax.random.key(2), 50, 8, 0))
    assert not np.array_equal(other, eager[0])
    assert eager[0].dtype == np.int32 and eager[0].shape == (8,)


def test_epoch_permutation_is_what_batch_indices_slices():
    key = jax.random.key(5)
    n, bs = 23, 5  # 4 steps per epoch, 3 examples dropped
    for e in (0, 2):
        perm = np.asarray(data.epoch_permutation(key, n, e))
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
        batches = [np.asarray(data.batch_indices(key, n, bs, 4 * e + i)) for i in range(4)]
        np.testing.assert_array_equal(np.concatenate(batches), perm[: 4 * bs])


@pytest.mark.parametrize("step", [1.0, np.ones(2, np.int32), True])
def test_batch_indices_rejects_bad_step(step):
    with pytest.raises(TypeError, match="step must be a scalar integer"):
        data.batch_indices(jax.random.key(0), 10, 2, step)


# ----------------------------------------------------------------------------- real data


def test_fashion_mnist_debian_files():
    if not os.path.isdir(data.FASHION_MNIST_DIR):
        pytest.skip(f"{data.FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)")
    ds = data.load("fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
