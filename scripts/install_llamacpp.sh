#!/usr/bin/env bash
# Install llama-cpp-python (llama.cpp compiled from source, with llama_model_quantize and full
# per-token logits) into a venv, building its wheel only once into a cache folder.
#
# Idempotent: does nothing when the pinned version is already installed; installs from the cache
# when a wheel for the same version + CMake flags is there; otherwise builds (~7 min on 2 cores),
# stores the wheel in the cache, then installs it.
#
# Environment (all optional):
#   PYTHON                 interpreter of the target venv        (default: .venv/bin/python)
#   LLAMACPP_PY_VERSION    llama-cpp-python version               (default: 0.3.36)
#   LLAMACPP_CMAKE_ARGS    CMake flags for llama.cpp              (default: portable AVX2 build)
#   LLAMACPP_SDIST         local sdist to build from instead of downloading it from PyPI
#   LOWBIT_WHEEL_CACHE     wheel cache folder                     (default: ~/.cache/lowbit/wheels)
#   LLAMACPP_FORCE=1       reinstall even when the version is already installed
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"
VERSION="${LLAMACPP_PY_VERSION:-0.3.36}"
# GGML_NATIVE=OFF: no -march=native, so the cached wheel runs on any x86-64 CPU with AVX2/FMA/F16C
# (ggml then enables SSE4.2, AVX, AVX2, BMI2, FMA, F16C). LLAVA_BUILD=OFF: no multimodal library.
CMAKE_FLAGS="${LLAMACPP_CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"
CACHE="${LOWBIT_WHEEL_CACHE:-$HOME/.cache/lowbit/wheels}"

if [[ ! -x "$PYTHON" ]]; then
    echo "install_llamacpp: no interpreter at $PYTHON (set PYTHON=...)" >&2
    exit 2
fi

installed="$("$PYTHON" - <<'EOF' 2>/dev/null || true
from importlib.metadata import PackageNotFoundError, version
try:
    print(version("llama_cpp_python"))
except PackageNotFoundError:
    pass
EOF
)"
if [[ "$installed" == "$VERSION" && "${LLAMACPP_FORCE:-0}" != "1" ]]; then
    echo "install_llamacpp: llama-cpp-python $VERSION already installed"
    exit 0
fi

# One cache entry per (version, CMake flags, machine architecture).
key="$(printf '%s|%s|%s' "$VERSION" "$CMAKE_FLAGS" "$(uname -m)" | sha256sum | cut -c1-12)"
dir="$CACHE/llama_cpp_python-$VERSION-$key"
wheel="$(ls "$dir"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)"

if [[ -z "$wheel" ]]; then
    if [[ -n "${LLAMACPP_SDIST:-}" ]]; then
        src="$LLAMACPP_SDIST"
    else
        src="llama-cpp-python==$VERSION"
    fi
    echo "install_llamacpp: building $src with CMAKE_ARGS='$CMAKE_FLAGS' (once; cached in $dir)"
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    start=$SECONDS
    CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$PYTHON" -m pip wheel --no-deps --no-binary llama-cpp-python --no-cache-dir \
        -w "$tmp" "$src"
    echo "install_llamacpp: built in $((SECONDS - start)) s"
    mkdir -p "$dir"
    built="$(ls "$tmp"/llama_cpp_python-"$VERSION"-*.whl | head -n1)"
    # Rename within the same file system, so a concurrent reader never sees half a wheel.
    mv "$built" "$dir/"
    wheel="$dir/$(basename "$built")"
fi

echo "install_llamacpp: installing $wheel"
"$PYTHON" -m pip install --force-reinstall --no-deps "$wheel"
# Its runtime dependencies (normal wheels from PyPI; most are already there).
"$PYTHON" -m pip install "typing-extensions>=4.5.0" "numpy>=1.20.0" "diskcache>=5.6.1" \
    "jinja2>=2.11.3"
"$PYTHON" -c "import llama_cpp; print('install_llamacpp: llama_cpp', llama_cpp.__version__, 'OK')"
