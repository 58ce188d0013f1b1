#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install cxrfm into it.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run on a fresh machine (PyPI only).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CXRFM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "cxrfm needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[cxrfm] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Re-install only when pyproject.toml changed since the last install.
STAMP="$VENV/.cxrfm-installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
    echo "[cxrfm] installing dependencies (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first and pinned: the CPU wheel; a looser spec would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[${CXRFM_EXTRAS:-dev,dicom,report,classify,diffusion}]"
    rm -f "$VENV"/.cxrfm-installed-*
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
