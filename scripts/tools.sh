#!/usr/bin/env bash
# Installs the pinned Go tools of tools/go.mod (buf, protoc-gen-go,
# protoc-gen-go-grpc, grpcurl) into .tmp/bin. Offline once the module cache
# holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tmp/bin
stamp=.tmp/bin/.tools.sum
want="$(sha256sum tools/go.mod tools/go.sum | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
GOBIN="$PWD/.tmp/bin" go install -modfile=tools/go.mod tool
echo "$want" > "$stamp"
