"""The brackets agree on random networks.

ℓ2: lower ≤ exact ≤ LipSDP ≤ trivial; ℓ∞: lower ≤ exact ≤ LiPopt ≤ trivial.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liplax.certify import lipschitz_lower_bound
from liplax.verify import exact_lipschitz, lipopt, lipsdp, network_function
from tests.verify_helpers import random_weights

NETS = {"2-layer": [16, 12, 4], "3-layer": [8, 6, 6, 3]}
RTOL = 1e-5  # the lower bound runs in float32


@functools.cache
def net(name):
    return random_weights(len(NETS[name]), NETS[name])


def lower(ws, p):
    f = network_function(ws, "relu", jnp.float32)
    xs = jax.random.normal(jax.random.key(0), (32, ws[0].shape[0]))
    return float(lipschitz_lower_bound(f, xs, key=jax.random.key(1), p=p, steps=100).value)


@pytest.mark.parametrize("name", NETS)
def test_l2_brackets(name):
    ws = net(name)
    trivial = np.prod([np.linalg.norm(w, 2) for w in ws])
    low = lower(ws, 2)
    exact = float(exact_lipschitz(ws, p=2))
    sdp = float(lipsdp(ws))
    assert low <= exact * (1 + RTOL)
    assert exact <= sdp * (1 + 1e-9)
    assert sdp <= trivial * (1 + 1e-9)
    assert low >= 0.75 * exact  # the search gets close to the constant on these networks


@pytest.mark.slow  # the default suite's 10-minute budget on 2 cores; `make test-slow` runs it
@pytest.mark.parametrize("name", NETS)
def test_linf_brackets(name):
    ws = net(name)
    trivial = np.prod([np.linalg.norm(w, 1) for w in ws])  # x ↦ x@W: max column abs-sum
    low = lower(ws, "inf")
    exact = float(exact_lipschitz(ws, p="inf"))
    lp = float(lipopt(ws, degree=max(2, len(ws))))
    assert low <= exact * (1 + RTOL)
    assert exact <= lp * (1 + 1e-9)
    assert lp <= trivial * (1 + 1e-9)
    assert low >= 0.75 * exact
