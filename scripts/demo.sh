#!/usr/bin/env bash
# The main job on the embedded default (procedural chest phantoms): no data download, no GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec cxrfm demo --out "${1:-runs/demo}" "${@:2}"
