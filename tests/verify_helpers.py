"""Random bias-free networks shared by the verifier tests (no mathematics here)."""

from __future__ import annotations

import numpy as np


def random_weights(seed: int, dims, *, density: float = 1.0, crelu: bool = False):
    """[W1, …, W_L] in (in, out) layout, N(0, 1/in) entries, for widths ``dims``.

    ``density`` < 1 zeroes each entry independently with probability 1 − density; with
    ``crelu`` every matrix after the first has twice the rows (CReLU doubles each width).
    """
    rng = np.random.default_rng(seed)
    ws = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = rng.normal(size=(a * (2 if crelu and i > 0 else 1), b)) / np.sqrt(a)
        if density < 1.0:
            w = w * (rng.random(w.shape) < density)
        ws.append(w)
    return ws
