"""From models and plain lists to the verifiers' input: a list of float64 ``(in, out)`` matrices.

The verifiers take ``weights = [W1, …, W_L]`` in flax's ``(in, out)`` layout: the network is
x ↦ σ(… σ(x @ W1) …) @ W_L with x a row vector, and biases are ignored (see
:mod:`liplax.verify._common`). With CReLU activations (z ↦ (relu(z), relu(−z)) concatenated on
the feature axis) the matrix after a CReLU layer of width n has 2n rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ACTIVATIONS = ("relu", "abs", "crelu")


def _array(x) -> np.ndarray:
    """The array inside an ``nnx.Variable`` (or anything with ``.value``), or ``x`` itself."""
    if hasattr(x, "get_value"):
        return np.asarray(x.get_value())
    return np.asarray(getattr(x, "value", x))


def _matrix(w, name: str) -> np.ndarray:
    w = _array(w)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real matrix, got dtype {w.dtype}")
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"{name} must be a non-empty (in, out) matrix, got shape {w.shape}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} must be finite, got nan/inf entries")
    return w


def weights_from_list(weights: Sequence) -> list[np.ndarray]:
    """``weights`` (arrays, ``nnx.Param``s or anything with ``.value``) as float64 matrices."""
    if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence) or not weights:
        raise TypeError(
            "weights must be a non-empty list of (in, out) matrices [W1, ..., W_L], got "
            f"{type(weights).__name__}"
        )
    return [_matrix(w, f"weights[{i}]") for i, w in enumerate(weights)]


def check_chain(weights: list[np.ndarray], activation: str = "relu", *, min_layers: int = 2):
    """Check that consecutive matrices compose (W_l.shape[1]·K == W_{l+1}.shape[0]).

    K = 2 for CReLU (its output doubles the width), else 1.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if len(weights) < min_layers:
        raise ValueError(
            f"weights must hold at least {min_layers} matrices (one hidden layer), got "
            f"{len(weights)}; a single linear layer's constant is its norm"
        )
    k = 2 if activation == "crelu" else 1
    for i in range(len(weights) - 1):
        out, nxt = weights[i].shape[1], weights[i + 1].shape[0]
        if out * k != nxt:
            raise ValueError(
                f"weights[{i}] has {out} outputs but weights[{i + 1}] has {nxt} inputs; with "
                f"activation {activation!r} it needs {out * k} ((in, out) layout, x @ W)"
            )


def crelu_to_relu(weights: Sequence) -> list[np.ndarray]:
    """The same function as a ReLU network: W ↦ [W, −W] before every CReLU.

    relu(z) and relu(−z) are the ReLUs of the pre-activations z and −z, so a CReLU network is the
    ReLU network whose hidden weights are [W, −W]; LipSDP and LiPopt then apply unchanged.
    """
    ws = weights_from_list(weights)
    check_chain(ws, "crelu", min_layers=1)
    return [np.concatenate([w, -w], axis=1) for w in ws[:-1]] + [ws[-1]]


def network_function(weights: Sequence, activation: str = "relu", dtype=None):
    """The network the weights describe, as a JAX function of one input x (a vector).

    x ↦ σ(… σ(x @ W1) …) @ W_L with σ = ReLU, |·| or CReLU (z ↦ [relu(z), relu(−z)]), the
    convention of every verifier here; for :func:`liplax.certify.lipschitz_lower_bound` on the
    same network the verifiers analyse. ``dtype`` defaults to JAX's default float.
    """
    import jax
    import jax.numpy as jnp

    ws = weights_from_list(weights)
    check_chain(ws, activation, min_layers=1)
    mats = [jnp.asarray(w, dtype=dtype) for w in ws]
    act = {
        "relu": jax.nn.relu,
        "abs": jnp.abs,
        "crelu": lambda z: jnp.concatenate([jax.nn.relu(z), jax.nn.relu(-z)], axis=-1),
    }[activation]

    def f(x):
        for w in mats[:-1]:
            x = act(x @ w)
        return x @ mats[-1]

    return f


def _kernel(node):
    """The matrix a layer applies: ``effective_kernel()`` when it has one (liplax layers that
    normalize or reparametrize their kernel), else ``.kernel``; None for anything else."""
    effective = getattr(node, "effective_kernel", None)
    if callable(effective):
        return _array(effective())
    k = getattr(node, "kernel", None)
    return None if k is None else _array(k)


def weights_from_model(model) -> list[np.ndarray]:
    """The dense kernels of a model, in order, as float64 ``(in, out)`` matrices.

    ``model`` is either a sequence of layers or of matrices, or an NNX module: its sub-modules
    with a 2-D kernel are collected in NNX graph order (attributes sorted by name, list items by
    index, as in ``nnx.Sequential`` and ``liplax.nn.Sequential``). A layer's matrix is its
    ``effective_kernel()`` when it has one (liplax's spectral, Björck, AOL, ℓ∞ layers: the
    normalized weight actually applied; call ``model.eval()`` first so no state moves), else its
    ``.kernel`` (``nnx.Linear``). The result must chain (out·K == next in, K = 1 or 2);
    otherwise pass the layers as a list in order. Only plain chains are meaningful to the
    verifiers (no residual branches); biases are ignored.
    """
    if isinstance(model, Sequence) and not isinstance(model, str | np.ndarray):
        items = [_kernel(m) if _kernel(m) is not None else m for m in model]
        return weights_from_list(items)
    from flax import nnx

    found = []
    for path, node in nnx.iter_graph(model):
        k = _kernel(node) if not isinstance(node, nnx.Variable) else None
        if k is None:
            continue
        if k.ndim != 2:
            raise ValueError(
                f"layer at {'/'.join(map(str, path))} has a kernel of shape {k.shape}: the "
                "verifiers handle dense (in, out) layers only"
            )
        found.append(("/".join(map(str, path)), k))
    if not found:
        raise ValueError(f"no layer with a .kernel found in {type(model).__name__}")
    ws = weights_from_list([k for _, k in found])
    for i in range(len(ws) - 1):
        if ws[i].shape[1] not in (ws[i + 1].shape[0], ws[i + 1].shape[0] // 2):
            listing = ", ".join(f"{p}: {w.shape}" for (p, _), w in zip(found, ws, strict=True))
            raise ValueError(
                f"the kernels found in graph order do not chain ({listing}); pass the layers in "
                "order as a list"
            )
    return ws
