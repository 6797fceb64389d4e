#!/usr/bin/env bash
# Installs the pinned Go tools into .tmp/bin: tools/go.mod (buf,
# protoc-gen-go, protoc-gen-go-grpc, grpcurl) and tools/localkms/go.mod
# (local-kms, the AWS KMS emulator the tests start) and tools/golangci/go.mod
# (golangci-lint). Each tool module has its
# own go.mod so that their dependency graphs do not mix. Offline once the
# module cache holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tmp/bin
stamp=.tmp/bin/.tools.sum
want="$(sha256sum tools/go.mod tools/go.sum tools/localkms/go.mod tools/localkms/go.sum tools/golangci/go.mod tools/golangci/go.sum | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
GOBIN="$PWD/.tmp/bin" go install -modfile=tools/go.mod tool
GOBIN="$PWD/.tmp/bin" go install -modfile=tools/localkms/go.mod tool
GOBIN="$PWD/.tmp/bin" go install -modfile=tools/golangci/go.mod tool
echo "$want" > "$stamp"
