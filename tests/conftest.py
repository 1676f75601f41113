"""Shared test configuration: hypothesis profiles.

- ``default``: 10 examples per property (a smoke run of each; ``make fuzz`` is the search), no
  deadline (JAX compiles on first call per shape); the suite CI runs on every commit, kept under
  10 minutes on 2 cores.
- ``fuzz``: 10,000 examples per property, selected with ``HYPOTHESIS_PROFILE=fuzz``.
"""

from __future__ import annotations

import os
import sys

# The float64 truth is many small SVDs: one BLAS thread each is ~100x faster than a thread pool
# fighting JAX's own threads on a 2-core machine. Set before NumPy loads its BLAS.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if "numpy" in sys.modules:  # too late for the environment: limit the loaded pool instead
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("default", max_examples=10, **_COMMON)
settings.register_profile("fuzz", max_examples=10_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


_TESTS_RUN = [0]


def _memory_map_count() -> int | None:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


@pytest.fixture(autouse=True)
def _bounded_jax_caches():
    """Drop JAX's compiled-function caches when the process holds too many memory maps.

    The slow sweeps compile thousands of shapes; every executable maps memory, and past
    vm.max_map_count (65530 here) XLA aborts mid-compile (seen at ~360 matrix cases). Checked
    every 10 tests; where /proc is missing, the caches are dropped every 100 tests instead."""
    yield
    _TESTS_RUN[0] += 1
    if _TESTS_RUN[0] % 10:
        return
    maps = _memory_map_count()
    if (maps is None and _TESTS_RUN[0] % 100 == 0) or (maps is not None and maps > 25_000):
        import jax

        jax.clear_caches()


# The longest files first: `make test` hands whole files to its workers in collection order, so a
# long file collected last would run alone at the end. Only the order changes, never the tests.
LONGEST_FIRST = (
    "test_train.py", "test_norms_contract.py", "test_conv.py", "test_layer_contract.py",
    "test_traced.py", "test_grouped.py", "test_train_processes.py", "test_certify.py",
    "test_experiments.py", "test_sweep.py", "test_nn_plain.py", "test_cli.py", "test_configs.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    order = {id(item): k for k, item in enumerate(items)}
    items.sort(key=lambda it: (rank.get(it.path.name, len(rank)), order[id(it)]))
