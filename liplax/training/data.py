"""Datasets that need no download, the IDX file format, and seeded batching.

- :func:`load_digits`: scikit-learn's bundled 8×8 digits (1797 images, 10 classes).
- :func:`load_idx_dataset`: MNIST-format IDX files from a folder (MNIST, Fashion-MNIST); Debian's
  ``dataset-fashion-mnist`` package installs Fashion-MNIST in :data:`FASHION_MNIST_DIR`.
- :func:`load`: one of :data:`DATASETS` by name.
- :func:`read_idx` / :func:`write_idx`: the IDX format (LeCun, Cortes, Burges, "The MNIST database
  of handwritten digits", http://yann.lecun.com/exdb/mnist/): four magic bytes ``0x00 0x00
  <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data in big-endian C order.
  Files may be gzip-compressed; compression is recognized by its magic bytes ``1f 8b``, never by
  the file name.
- :func:`batch_indices`: the indices of the batch at a training step, a pure function of
  ``(key, step)``: epoch e = step // steps_per_epoch is shuffled by the permutation drawn from
  ``fold_in(key, e)`` (:func:`epoch_permutation`), so a run resumed at step s sees exactly the
  batches it would have seen.

Images are NHWC float32 in [0, 1] with one channel; labels are int32.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from liplax import _checks

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
DATASETS = ("digits", "fashion-mnist", "mnist")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_CLASSES = 10

# IDX dtype code -> NumPy dtype (data stored big-endian).
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(np.int16),
    0x0C: np.dtype(np.int32),
    0x0D: np.dtype(np.float32),
    0x0E: np.dtype(np.float64),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file and what was expected."""


class Dataset(NamedTuple):
    """A classification dataset held in memory.

    ``x_*``: float32 (n, H, W, 1) NHWC with values in [0, 1]; ``y_*``: int32 (n,) in
    [0, num_classes).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, 1): the shape of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])


# ----------------------------------------------------------------------------- IDX format


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip or raw), in native byte order.

    Raises :class:`DataError` naming ``path`` when the file is missing, is corrupt gzip, has a bad
    magic number or an unknown dtype code, or holds fewer or more data bytes than its header says.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected an IDX file)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the IDX file ({e.strerror})") from e
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path}: corrupt gzip data ({e}); expected a complete gzip stream holding an IDX "
                "file"
            ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{path}: bad magic number {raw[:4].hex(' ') or '(empty file)'}; expected an IDX file "
            "starting with 00 00 <dtype code> <ndim>"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {codes}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated header: {len(raw)} bytes, expected {header} for {ndim} dimensions"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated data" if found < expected else "trailing bytes after the data"
        raise DataError(
            f"{path}: {what}: {found} data bytes, expected {expected} for shape {shape} of "
            f"{dtype.name}"
        )
    data = np.frombuffer(raw, dtype=dtype.newbyteorder(">"), offset=header).reshape(shape)
    return data.astype(dtype)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` to ``path`` in the IDX format, the inverse of :func:`read_idx`.

    ``compress`` (default: whether ``path`` ends in ``.gz``) selects gzip. The dtype must be one
    of uint8, int8, int16, int32, float32, float64 (``TypeError`` otherwise).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    codes = {dt: code for code, dt in IDX_DTYPES.items()}
    if array.dtype not in codes:
        names = ", ".join(dt.name for dt in IDX_DTYPES.values())
        raise TypeError(f"array must have an IDX dtype ({names}), got dtype {array.dtype}")
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(
            f"array must have at most 255 dimensions, each < 2**32, got shape {array.shape}"
        )
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes()
    if compress is None:
        compress = path.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    with open(path, "wb") as f:
        f.write(payload)


# ----------------------------------------------------------------------------- loaders


def _expected_files_message(data_dir: str, name: str) -> str:
    files = ", ".join(IDX_FILES.values())
    msg = f"expected the {name} IDX files {files} (each raw or with .gz) in {data_dir}"
    if name == "fashion-mnist":
        msg += (
            f"; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` installs them in "
            f"{FASHION_MNIST_DIR}, or pass --data-dir"
        )
    else:
        msg += "; pass the folder holding them as data_dir (--data-dir)"
    return msg


def _find_idx(data_dir: str, stem: str, name: str) -> str:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(
        f"{os.path.join(data_dir, stem)}[.gz]: file not found; "
        + _expected_files_message(data_dir, name)
    )


def _read_split(data_dir: str, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    img_path = _find_idx(data_dir, IDX_FILES[f"{split}_images"], name)
    lbl_path = _find_idx(data_dir, IDX_FILES[f"{split}_labels"], name)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{img_path}: expected uint8 images of rank 3 (n, H, W), got {images.dtype} of shape "
            f"{images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{lbl_path}: expected integer labels of rank 1 (n,), got {labels.dtype} of shape "
            f"{labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lbl_path}: {labels.shape[0]} labels, expected one per image of {img_path} "
            f"({images.shape[0]})"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= IDX_CLASSES):
        raise DataError(
            f"{lbl_path}: labels must lie in [0, {IDX_CLASSES}), got values in "
            f"[{labels.min()}, {labels.max()}]"
        )
    x = (images.astype(np.float32) / np.float32(255.0))[..., None]
    return x, labels.astype(np.int32)


def load_idx_dataset(data_dir: str | os.PathLike, name: str = "mnist") -> Dataset:
    """MNIST-format data from the four IDX files in ``data_dir`` (raw or ``.gz``; raw preferred).

    Files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    t10k-labels-idx1-ubyte. Images must be uint8 (n, H, W), train and test of one size; labels
    (n,) in [0, 10). Pixels are scaled by 1/255. A missing folder or file, or a check that fails,
    raises :class:`DataError` naming the file.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: folder not found; " + _expected_files_message(data_dir, name))
    x_train, y_train = _read_split(data_dir, "train", name)
    x_test, y_test = _read_split(data_dir, "test", name)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{os.path.join(data_dir, IDX_FILES['test_images'])}: test images of size "
            f"{x_test.shape[1:3]}, expected the training size {x_train.shape[1:3]}"
        )
    return Dataset(name, x_train, y_train, x_test, y_test, IDX_CLASSES)


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits (8×8, values 0..16 scaled by 1/16), split by class.

    The split is stratified and deterministic: within each class, ``round(test_fraction · n_c)``
    examples (at least one, leaving at least one for training) chosen by
    ``numpy.random.RandomState(seed)`` go to the test set; both sets are then shuffled by the same
    generator. scikit-learn (a dependency) is imported here only.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) or not (
        0.0 < test_fraction < 1.0
    ):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    from sklearn.datasets import load_digits as sk_load_digits
    bunch = sk_load_digits()
    images = (np.asarray(bunch.images, np.float32) / np.float32(16.0))[..., None]
    labels = np.asarray(bunch.target, np.int32)
    rng = np.random.RandomState(seed)
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = min(max(int(round(test_fraction * idx.size)), 1), idx.size - 1)
        test_idx.append(rng.permutation(idx)[:n_test])
    is_test = np.zeros(labels.size, bool)
    is_test[np.concatenate(test_idx)] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    test = rng.permutation(np.flatnonzero(is_test))
    num_classes = int(labels.max()) + 1
    return Dataset("digits", images[train], labels[train], images[test], labels[test], num_classes)


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`).

    ``"digits"``: :func:`load_digits` (takes no ``data_dir``); ``"fashion-mnist"``: IDX files from
    ``data_dir``, by default :data:`FASHION_MNIST_DIR`; ``"mnist"``: IDX files from ``data_dir``,
    which is required (:class:`DataError` otherwise).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if name == "digits":
        if data_dir is not None:
            raise ValueError(f"data_dir is not used by 'digits' (bundled data), got {data_dir!r}")
        return load_digits()
    if name == "fashion-mnist":
        return load_idx_dataset(FASHION_MNIST_DIR if data_dir is None else data_dir, name)
    if data_dir is None:
        raise DataError(
            "mnist: data_dir is required; " + _expected_files_message("data_dir", "mnist")
        )
    return load_idx_dataset(data_dir, name)


# ----------------------------------------------------------------------------- batching


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch, n // batch_size (the remainder is dropped); ValueError if none."""
    n = _checks.positive_int(n, "n")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(
            f"batch_size must be ≤ n = {n} (one full batch per epoch), got {batch_size}"
        )
    return n // batch_size


def epoch_permutation(key: jax.Array, n: int, epoch) -> jax.Array:
    """The order of the n examples in epoch ``epoch``: ``permutation(fold_in(key, epoch), n)``.

    :func:`batch_indices` slices this permutation; a loop that runs a whole epoch at once can
    compute it once and slice it itself (the permutation is a sort of n keys, the costly part of
    a per-step :func:`batch_indices` for large n; see ``benchmarks/data_batching.py``).
    """
    n = _checks.positive_int(n, "n")
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def batch_indices(key: jax.Array, n: int, batch_size: int, step) -> jax.Array:
    """Indices (batch_size,) int32 of the examples in the batch of training step ``step``.

    With S = n // batch_size steps per epoch, e = step // S and i = step mod S, the batch is
    ``permutation(fold_in(key, e), n)[i·batch_size : (i+1)·batch_size]``: every epoch visits a
    fresh permutation (the last n mod batch_size examples of it are skipped), and the result is a
    pure function of ``(key, step)``. ``n`` and ``batch_size`` are static Python ints; ``step`` is
    a scalar integer and may be traced (``jit``). Each call draws the whole epoch's permutation
    (a sort of n keys); for large n, :func:`epoch_permutation` once per epoch is cheaper.
    """
    spe = steps_per_epoch(n, batch_size)
    dtype = getattr(step, "dtype", None)
    dtype = np.dtype(np.asarray(step).dtype if dtype is None else dtype)
    if not np.issubdtype(dtype, np.integer) or dtype == np.bool_ or np.ndim(step) != 0:
        raise TypeError(
            f"step must be a scalar integer, got {type(step).__name__} of dtype {dtype} "
            f"and shape {np.shape(step)}"
        )
    step = jnp.asarray(step)
    epoch, i = step // spe, step % spe
    perm = epoch_permutation(key, n, epoch)
    return lax.dynamic_slice(perm, (i * batch_size,), (batch_size,))
