#!/usr/bin/env bash
# Build llama.cpp's own command-line tools (llama-quantize, llama-imatrix, llama-perplexity) from
# the llama.cpp source vendored in the same llama-cpp-python sdist that install_llamacpp.sh builds,
# once, into a cache folder. Tests and benchmarks use them as the independent implementation of
# importance-matrix quantization.
#
# Idempotent: prints the bin folder and exits when the tools are already built.
#
# Environment (all optional):
#   PYTHON                 interpreter used to download the sdist   (default: .venv/bin/python)
#   LLAMACPP_PY_VERSION    llama-cpp-python version                 (default: 0.3.36)
#   LLAMACPP_SDIST         local sdist to build from instead of downloading it from PyPI
#   LOWBIT_TOOLS_CACHE     cache folder                             (default: ~/.cache/lowbit/tools)
# Prints the folder holding the binaries on its last line.
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"
VERSION="${LLAMACPP_PY_VERSION:-0.3.36}"
CACHE="${LOWBIT_TOOLS_CACHE:-$HOME/.cache/lowbit/tools}"
TARGETS=(llama-quantize llama-imatrix llama-perplexity)
FLAGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF"

key="$(printf '%s|%s|%s|%s' "$VERSION" "$FLAGS" "${TARGETS[*]}" "$(uname -m)" | sha256sum | cut -c1-12)"
dir="$CACHE/llama.cpp-$VERSION-$key"

ready=1
for t in "${TARGETS[@]}"; do [[ -x "$dir/bin/$t" ]] || ready=0; done
if [[ "$ready" == 1 ]]; then
    echo "install_llamacpp_tools: already built" >&2
    echo "$dir/bin"
    exit 0
fi

command -v cmake >/dev/null || { echo "install_llamacpp_tools: cmake is needed" >&2; exit 2; }
mkdir -p "$CACHE"
tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if [[ -n "${LLAMACPP_SDIST:-}" ]]; then
    sdist="$LLAMACPP_SDIST"
else
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2
    sdist="$(ls "$tmp"/llama_cpp_python-"$VERSION".tar.gz)"
fi
tar xzf "$sdist" -C "$tmp"
src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
start=$SECONDS
# shellcheck disable=SC2086
cmake -S "$src" -B "$tmp/build" $FLAGS >&2
cmake --build "$tmp/build" --target "${TARGETS[@]}" -j "$(nproc)" >&2
echo "install_llamacpp_tools: built in $((SECONDS - start)) s" >&2
mkdir -p "$tmp/out/bin"
for t in "${TARGETS[@]}"; do cp "$tmp/build/bin/$t" "$tmp/out/bin/"; done
# Rename within the same file system, so a concurrent reader never sees half a build.
rm -rf "$dir"
mv "$tmp/out" "$dir"
echo "$dir/bin"
