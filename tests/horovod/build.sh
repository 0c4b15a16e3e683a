#!/bin/bash
# Builds the Horovod environment: a virtualenv with tensorflow-cpu 2.15.1 (Keras 2.15), Horovod
# 0.28.1 compiled with TensorFlow and Gloo (no MPI, no torch), and crackhpc installed editable from
# this checkout. `make horovod` (and so `make test`) runs it; a user can run it as it is.
#
#   tests/horovod/build.sh            build or reuse; prints the venv's path last
#
# Where things go (override with the variables):
#   CRACKHPC_HOROVOD_VENV   the venv                      default: <checkout>/.venv-horovod (git-ignored)
#   CRACKHPC_HOROVOD_CACHE  the compiled Horovod wheel    default: ~/.cache/crackhpc/horovod
# The venv is rebuilt only when this script, setup.cfg, pyproject.toml or the checkout's path
# change. The wheel sits outside the checkout, keyed by Python, TensorFlow and Horovod versions
# and the build flags, so a fresh clone on the same machine installs it instead of compiling
# Horovod again (~2 min).
#
# Why these versions: Horovod 0.28.1 (the last release) compiles against TensorFlow up to 2.18
# (2.19 moved the XLA headers it includes) and its Keras callbacks break under Keras 3, which
# TensorFlow >= 2.16 brings; 2.15.1 is the newest TensorFlow whose own Keras (2.15) it supports.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${CRACKHPC_HOROVOD_VENV:-$ROOT/.venv-horovod}
CACHE=${CRACKHPC_HOROVOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crackhpc/horovod}
PYTHON=${PYTHON:-python3}
TENSORFLOW=tensorflow-cpu==2.15.1
HOROVOD=0.28.1
FLAGS=(HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
       HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1)

say() { echo "horovod env: $*" >&2; }

# The checkout is an input too: the venv's editable install points at it.
inputs=$( (echo "$ROOT"; cat "${BASH_SOURCE[0]}" "$ROOT/setup.cfg" "$ROOT/pyproject.toml") | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.built" 2>/dev/null)" = "$inputs" ]; then
    say "up to date: $VENV"
    echo "$VENV"
    exit 0
fi

# Debian's cmake and g++ are all Horovod's Gloo build needs.
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
    say "installing cmake and g++ from Debian"
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q && $sudo apt-get install -y -q cmake g++
fi

if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 11))'; then
    say "tensorflow-cpu 2.15.1 has wheels for Python 3.9 to 3.11 only; run with PYTHON=python3.11 (or 3.10, 3.9)"
    exit 1
fi

t0=$SECONDS
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip setuptools wheel
"${pip[@]}" install -q "$TENSORFLOW" -e "$ROOT"

pytag=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
flagkey=$(printf '%s\n' "${FLAGS[@]}" | sha256sum | cut -c1-8)
wheels="$CACHE/horovod-$HOROVOD-${TENSORFLOW#*==}-$pytag-$flagkey"
mkdir -p "$CACHE"
# One build at a time per cache: a second `make test` waits for the first one's wheel.
exec 9>"$CACHE/.lock"
flock 9
if ! ls "$wheels"/horovod-*.whl >/dev/null 2>&1; then
    say "compiling horovod $HOROVOD against ${TENSORFLOW} (about 2 minutes on 2 cores)"
    tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT  # a failed build leaves no half-made folder in the cache
    # --no-build-isolation: Horovod compiles against the TensorFlow installed in this venv.
    env "${FLAGS[@]}" MAKEFLAGS="-j$(nproc)" "${pip[@]}" wheel -q --no-build-isolation --no-cache-dir \
        --no-deps -w "$tmp" "horovod==$HOROVOD"
    rm -rf "$wheels" && mv "$tmp" "$wheels"
else
    say "reusing the compiled wheel in $wheels"
fi
flock -u 9
"${pip[@]}" install -q "$wheels"/horovod-*.whl
# What `horovodrun --check-build` shows, in one import instead of one per framework.
"$VENV/bin/python" -c 'import horovod.tensorflow as hvd
assert hvd.gloo_built(), "horovod built without Gloo"
print("horovod env: horovod.tensorflow imports; Gloo built, MPI", "built" if hvd.mpi_built() else "not built")' >&2
echo "$inputs" > "$VENV/.built"
say "built in $((SECONDS - t0)) s: $VENV"
echo "$VENV"
