#!/usr/bin/env bash
# Diagnoses figure 1 of BENCHMARKS.md (cache-hit GetToken vs Health/Check
# with ghz): builds the broker as it is and two measurement builds from a
# patched copy of the tree, runs them side by side in `dev` mode and
# interleaves the ghz rounds over all three, so that the machine's drift
# hits every build alike. Prints the median rps ratio of each build.
#   shipped   the tree as it is
#   log-trim  GetToken's per-call log line cut to the fields the health
#             check's line has (what the handler's logging costs)
#   tiny      GetToken answering with a one-byte access_token (what
#             carrying the ~1.2 KiB token costs)
# The patched builds exist only in a temporary directory; they are
# measurement instruments, never something to ship.
# Usage: bash scripts/figure1-controls.sh [ROUNDS] [REQUESTS]  (9, 25000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-9}"
total="${2:-25000}"
scripts/tools.sh
GOBIN="$PWD/.tmp/bin" go install -modfile=tools/ghz/go.mod tool
export PATH="$PWD/.tmp/bin:$PATH"

work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
bin="$work/bin"
mkdir -p "$bin"
go build -o "$bin/shipped" ./cmd/tokenbroker

# patch_build VARIANT FILE OLD NEW [OLD NEW ...]: builds VARIANT from a
# copy of the tree with each OLD replaced by its NEW in FILE; fails when an
# OLD is not found, so a stale patch cannot measure the wrong thing.
patch_build() {
  local variant="$1" file="$2" src="$work/src-$1"
  shift 2
  mkdir -p "$src"
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src"
  python3 - "$src/$file" "$@" <<'PY'
import sys
path, pairs = sys.argv[1], sys.argv[2:]
text = open(path).read()
for old, new in zip(pairs[::2], pairs[1::2]):
    if old not in text:
        sys.exit(f"{path}: patch target not found: {old}")
    text = text.replace(old, new)
open(path, "w").write(text)
PY
  (cd "$src" && go build -o "$bin/$variant" ./cmd/tokenbroker)
}
patch_build log-trim server/status.go \
  'if r, ok := req.(*tokenbrokerv1.GetTokenRequest); ok {' \
  'if r, ok := req.(*tokenbrokerv1.GetTokenRequest); ok && false {' \
  'if r, ok := resp.(*tokenbrokerv1.GetTokenResponse); ok && r != nil {' \
  'if r, ok := resp.(*tokenbrokerv1.GetTokenResponse); ok && r != nil && false {'
patch_build tiny server/server.go 'AccessToken:  tok.AccessToken,' 'AccessToken:  "x",'

variants=(shipped log-trim tiny)
req='{"customer_org":"310904473","scopes":["altinn:systembruker.demo"]}'
port=50171
for v in "${variants[@]}"; do
  "$bin/$v" dev --listen "127.0.0.1:$port" > "$work/$v.out" 2> /dev/null &
  pids+=($!)
  for _ in $(seq 50); do grep -q serving "$work/$v.out" 2>/dev/null && break; sleep 0.1; done
  grpcurl -plaintext -d "$req" "127.0.0.1:$port" tokenbroker.v1.TokenBrokerService/GetToken > /dev/null
  port=$((port + 1))
done
echo "figure 1 controls: ${#variants[@]} builds, $rounds interleaved rounds, $total requests per run, concurrency 32"
for r in $(seq "$rounds"); do
  port=50171
  for v in "${variants[@]}"; do
    ghz --insecure --call grpc.health.v1.Health/Check -d '{}' -c 32 -n "$total" -O json "127.0.0.1:$port" > "$work/$v.health.$r.json"
    ghz --insecure --call tokenbroker.v1.TokenBrokerService/GetToken -d "$req" -c 32 -n "$total" -O json "127.0.0.1:$port" > "$work/$v.token.$r.json"
    port=$((port + 1))
  done
done
python3 - "$work" "$rounds" "${variants[@]}" <<'PY'
import json, statistics, sys
work, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rps = lambda v, call, r: json.load(open(f"{work}/{v}.{call}.{r}.json"))["rps"]
for v in variants:
    ratios = [rps(v, "token", r) / rps(v, "health", r) for r in range(1, rounds + 1)]
    print(f"FIGURE cache_hit_control build={v} rps_ratio={statistics.median(ratios):.3f} "
          f"rounds={','.join(f'{x:.2f}' for x in ratios)}")
PY
