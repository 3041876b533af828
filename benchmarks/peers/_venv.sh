#!/usr/bin/env bash
# Shared helper for the peer setup scripts: make_peer_venv NAME PACKAGE... creates
# .venv-peers/NAME (gitignored) with torch==2.13.0 installed FIRST (it resolves to the local CPU
# build; any other torch would pull the CUDA wheels), then the pinned peer packages.
# Idempotent: a venv whose marker file lists the same packages is left as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS="${LOWBIT_PEERS_DIR:-$ROOT/.venv-peers}"
BASE_PYTHON="${BASE_PYTHON:-python3.11}"
TORCH_PIN="torch==2.13.0"

make_peer_venv() {
    local name="$1"; shift
    local venv="$PEERS/$name" want="$TORCH_PIN $*"
    if [[ -f "$venv/.lowbit-peer" && "$(cat "$venv/.lowbit-peer")" == "$want" ]]; then
        echo "$name: ready ($want)" >&2
        echo "$venv/bin/python"
        return 0
    fi
    mkdir -p "$PEERS"
    [[ -x "$venv/bin/python" ]] || "$BASE_PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q "$TORCH_PIN" >&2
    # The torch pin again, so the resolver keeps the CPU build while adding the peer.
    "$venv/bin/python" -m pip install -q "$TORCH_PIN" "$@" >&2
    echo "$want" > "$venv/.lowbit-peer"
    echo "$name: installed ($want)" >&2
    echo "$venv/bin/python"
}
