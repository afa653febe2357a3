#!/usr/bin/env bash
# Refresh constraints.txt: the exact version of every package CI installs (README's install command).
# Resolves ".[dev]" in a throw-away venv with only the torch pins, then writes `pip freeze` of it.
# Usage: bash scripts/lock_constraints.sh   (then run the tests and commit constraints.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]"
{
  echo "# CI's locked set: every package pinned (refresh: bash scripts/lock_constraints.sh)."
  echo "# torch 2.14.1 / torchvision 0.29.1 come from local wheels; the registry's newest torch pulls GBs of CUDA packages."
  "$tmp/venv/bin/pip" freeze --exclude-editable | grep -v '^#' | grep -vi '^sslguard'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
