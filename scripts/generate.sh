#!/usr/bin/env bash
# Regenerates gen/ from proto/ with buf and the pinned local plugins.
# Usage: scripts/generate.sh [OUTPUT_BASE]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
export PATH="$PWD/.tmp/bin:$PATH"
buf lint
if [ $# -gt 0 ]; then
  buf generate -o "$1"
else
  buf generate
fi
