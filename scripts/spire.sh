#!/usr/bin/env bash
# Builds spire-server and spire-agent, pinned to SPIRE_VERSION, into .tmp/bin
# for cmd/tokenbroker's TestSPIRE. Cached: nothing is done when .tmp/bin holds
# binaries of this version.
#
# Why not `go install ...@version` or a tools module like tools/go.mod:
#   - `go install github.com/spiffe/spire/cmd/spire-server@v1.14.5` fails here
#     before it builds: it loads deprecations from the proxy's version list,
#     which the module proxy refuses ("reading .../spire/@v/list: 403").
#   - A tools module re-resolves SPIRE's dependencies and verifies each against
#     sum.golang.org, which has no entry for the pseudo-version of
#     spire-plugin-sdk that SPIRE pins ("verifying module: ... 404 Not Found").
# So the module is downloaded (verified against sum.golang.org) and built
# inside its module-cache copy, with SPIRE's own go.mod and go.sum: exactly
# the dependency versions SPIRE releases with, and no replace to copy.
#
# Why v1.14.5: v1.16.0 needs Go 1.27.3 (we have 1.26), and every v1.15.x needs
# github.com/Keyfactor/ejbca-go-client-sdk v1.1.0, whose zip the proxy refuses
# (403). v1.14.5 (2026-04-08) is the newest release that builds here.
set -euo pipefail
cd "$(dirname "$0")/.."
SPIRE_VERSION=v1.14.5
mkdir -p .tmp/bin
stamp=.tmp/bin/.spire.version
if [ -x .tmp/bin/spire-server ] && [ -x .tmp/bin/spire-agent ] && [ "$(cat "$stamp" 2>/dev/null)" = "$SPIRE_VERSION" ]; then
  exit 0
fi
dir="$(go mod download -json "github.com/spiffe/spire@$SPIRE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$dir" ]; then
  echo "spire: go mod download github.com/spiffe/spire@$SPIRE_VERSION gave no directory" >&2
  exit 1
fi
out="$PWD/.tmp/bin"
# CGO: SPIRE's sqlite3 datastore (the one a single-machine server uses) needs it.
(cd "$dir" && CGO_ENABLED=1 go build -mod=readonly -trimpath -o "$out/" ./cmd/spire-server ./cmd/spire-agent)
echo "$SPIRE_VERSION" > "$stamp"
