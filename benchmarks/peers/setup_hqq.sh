#!/usr/bin/env bash
# The hqq package in its own venv, .venv-peers/hqq; prints its python. hqq's CUDA extension is
# optional (hqq falls back to its pure-torch backend), so the plain wheel installs on CPU.
# Idempotent. Run from anywhere: benchmarks/peers/setup_hqq.sh
set -euo pipefail
# shellcheck source=_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
make_peer_venv hqq "hqq==${HQQ_VERSION:-0.2.8.post1}" safetensors
