#!/usr/bin/env bash
# Every GPU figure of issue 13 in one run (under 8 minutes on an H100/H200), as a Markdown table.
#
#   bash benchmarks/gpu.sh            # here first (writes benchmarks/.gpu-model), then on the GPU
#   bash benchmarks/gpu.sh --smoke    # the same steps on a CPU, tiny sizes
#
# On a GPU machine without the packaged model or hubembed installed, carry the prepared model
# (benchmarks/.gpu-model, ~45 MB, ignored by git) with the tree; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v .venv/bin/python || command -v python3)}
if [ ! -f benchmarks/.gpu-model/all-MiniLM-L6-v2/model.safetensors ]; then
    "$python" benchmarks/gpu.py --prepare
fi
PYTHONPATH=. exec "$python" benchmarks/gpu.py "$@"
