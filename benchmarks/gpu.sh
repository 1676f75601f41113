#!/usr/bin/env bash
# Every liplax benchmark on a machine with an NVIDIA GPU, in under 8 minutes, into ONE JSON.
#
#   pip install -e '.[cuda,peers]'        # jax[cuda12] (and torch, for the peers table)
#   git clone https://github.com/blaisedelattre/lip4conv /tmp/lip4conv   # optional peer
#   benchmarks/gpu.sh [--lip4conv /tmp/lip4conv] [--out benchmarks/results/gpu.json]
#   benchmarks/gpu.sh --tiny              # (or LIPLAX_BENCH_TINY=1) tiny sizes on the CPU, < 1 min
#
# Sections (benchmarks/gpu.py): convolution norms at 64–512 channels and 32–224 inputs, a sweep
# of 1024 kernels against a Python loop, a training step with and without the penalty, and the
# peers table (benchmarks/peers.py; lip4conv rows when torch and a checkout are present). Each
# runs in its own subprocess with its own timeout inside a 450 s budget, so the whole run ends
# in under 8 minutes whatever one section does. Extra arguments go to gpu.py (--budget,
# --repeats, --only conv_norms,sweep, --max-gb).
#
# No GPU was available when this was written: its first GPU run is pending (no network needed
# on the GPU machine once the packages are installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
tiny=0
for a in "$@"; do [ "$a" = "--tiny" ] && tiny=1; done
case "${LIPLAX_BENCH_TINY:-0}" in ""|0) ;; *) tiny=1 ;; esac
if [ "$tiny" = 1 ]; then
    export JAX_PLATFORMS=cpu          # the smoke run: tiny sizes on the CPU
    export LIPLAX_BENCH_TINY=1
else
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv \
        || echo "gpu.sh: no nvidia-smi: running on whatever JAX finds" >&2
    "$PY" -c "import jax; print('gpu.sh: jax', jax.__version__, jax.devices())" >&2
    # grow GPU memory on demand: torch (peers) and JAX share the device in one process
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi
exec "$PY" benchmarks/gpu.py "$@"
