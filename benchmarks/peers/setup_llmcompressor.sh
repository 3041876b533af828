#!/usr/bin/env bash
# llm-compressor (GPTQ, AWQ) in its own venv, .venv-peers/llmcompressor; prints its python.
# Idempotent. Run from anywhere: benchmarks/peers/setup_llmcompressor.sh
set -euo pipefail
# shellcheck source=_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
make_peer_venv llmcompressor "llmcompressor==${LLMCOMPRESSOR_VERSION:-0.14.0.1}" safetensors
