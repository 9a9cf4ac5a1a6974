#!/usr/bin/env bash
# Create .venv in the repository root and install transduce with its development extras.
# Usage: bash scripts/setup.sh        (idempotent; a second run only checks what is installed)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
# the CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build
.venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
