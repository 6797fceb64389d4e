#!/usr/bin/env bash
# The whole test suite and every check, as CI runs it (.ci/run calls this).
# It installs what the tests need: the pinned Go tools of tools/go.mod, SPIRE
# (scripts/spire.sh), the
# Debian packages listed in DEBIAN_PACKAGES when they are missing, and
# promtool from Debian's prometheus package.
set -euo pipefail
cd "$(dirname "$0")/.."

# SoftHSM2: the PKCS#11 backend is tested against it. redis-server: the
# shared cache (broker/sharedcache) is tested against real Redis processes
# that the tests start themselves, on free ports in temp dirs.
DEBIAN_PACKAGES=(softhsm2 redis-server)

step() { printf '\n== %s\n' "$*"; }

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

step "tools (buf, protoc-gen-go, protoc-gen-go-grpc, grpcurl, golangci-lint)"
scripts/tools.sh
export PATH="$PWD/.tmp/bin:$PATH"

# spire-server and spire-agent for TestSPIRE, which then must run, not skip.
step "SPIRE (scripts/spire.sh: spire-server, spire-agent)"
scripts/spire.sh
export TOKENBROKER_REQUIRE_SPIRE=1
# The shared cache tests then must run, not skip.
export TOKENBROKER_REQUIRE_REDIS=1

# promtool checks the alerting rules. It is taken from Debian's prometheus
# package without installing the package, which would also set up and start
# a Prometheus server.
if [ ! -x .tmp/bin/promtool ]; then
  step "promtool (unpacked from Debian's prometheus package)"
  deb="$(mktemp -d)"
  (cd "$deb" && apt-get download -qq prometheus 2>/dev/null) ||
    { apt-get update -qq && (cd "$deb" && apt-get download -qq prometheus); }
  dpkg-deb -x "$deb"/prometheus_*.deb "$deb/root"
  cp "$deb/root/usr/bin/promtool" .tmp/bin/promtool
  rm -rf "$deb"
fi

step "gofmt"
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
  echo "not gofmt'ed:"; echo "$unformatted"; exit 1
fi

step "go vet"
go vet ./...

step "golangci-lint $(golangci-lint version --short 2>/dev/null) (.golangci.yml: errorlint, revive, dupl and the standard set)"
golangci-lint run --timeout 10m ./...

step "buf lint, buf format"
buf lint
buf format -d --exit-code

step "gen/ matches buf generate"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
buf generate -o "$tmp"
diff -r gen "$tmp/gen"

step "alerting rules (promtool $(promtool --version 2>&1 | awk 'NR==1 {print $3}'))"
promtool check rules deploy/prometheus/tokenbroker-rules.yaml
promtool test rules deploy/prometheus/tokenbroker-rules.test.yaml

step "go test -race"
go test -race -shuffle=on -count=1 ./...
