#!/usr/bin/env bash
# Diagnoses figure 1 of BENCHMARKS.md (cache-hit GetToken vs Health/Check
# with ghz): builds the broker as it is and four measurement builds from a
# patched copy of the tree, runs them side by side in `dev` mode and
# interleaves the ghz rounds over all five, so that the machine's drift
# hits every build alike. Prints the median rps ratio of each build.
#   shipped   the tree as it is
#   log-trim  GetToken's per-call log line cut to the fields the health
#             check's line has (what the handler's logging costs)
#   tiny      GetToken answering with a one-byte access_token (what
#             carrying the ~1.2 KiB token costs)
#   encoded-once  the GetToken answer encoded once and its bytes reused
#             (valid only for this one warm key: the most a per-token
#             encoding cache could save)
#   all-three the three above together: a bound no real change could
#             pass, since it also drops the token itself
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

# edit SRC FILE OLD NEW [OLD NEW ...]: replaces each OLD by its NEW in
# FILE under SRC; fails when an OLD is not found, so a stale patch cannot
# measure the wrong thing.
edit() {
  python3 - "$1/$2" "${@:3}" <<'PY'
import sys
path, pairs = sys.argv[1], sys.argv[2:]
text = open(path).read()
for old, new in zip(pairs[::2], pairs[1::2]):
    if old not in text:
        sys.exit(f"{path}: patch target not found: {old}")
    text = text.replace(old, new)
open(path, "w").write(text)
PY
}
log_trim() {
  edit "$1" server/status.go \
    'if r, ok := req.(*tokenbrokerv1.GetTokenRequest); ok {' \
    'if r, ok := req.(*tokenbrokerv1.GetTokenRequest); ok && false {' \
    'if r, ok := resp.(*tokenbrokerv1.GetTokenResponse); ok && r != nil {' \
    'if r, ok := resp.(*tokenbrokerv1.GetTokenResponse); ok && r != nil && false {'
}
tiny() { edit "$1" server/server.go 'AccessToken:  tok.AccessToken,' 'AccessToken:  "x",'; }
encoded_once() {
  edit "$1" server/codec.go \
    'import (' 'import (
	"sync/atomic"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"' \
    'func (c lenientCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }' \
    'var encoded atomic.Pointer[[]byte]

func (c lenientCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*tokenbrokerv1.GetTokenResponse)
	if !ok {
		return c.base.Marshal(v)
	}
	if b := encoded.Load(); b != nil {
		return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
	}
	b, err := protobuf.Marshal(m)
	if err != nil {
		return nil, err
	}
	encoded.Store(&b)
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}'
}
# build VARIANT EDIT...: builds VARIANT from a copy of the tree with each
# EDIT function applied.
build() {
  local variant="$1" src="$work/src-$1"
  mkdir -p "$src"
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src"
  for p in "${@:2}"; do "$p" "$src"; done
  (cd "$src" && go build -o "$bin/$variant" ./cmd/tokenbroker)
}
build log-trim log_trim
build tiny tiny
build encoded-once encoded_once
build all-three log_trim tiny encoded_once

variants=(shipped log-trim tiny encoded-once all-three)
source scripts/figure1-lib.sh
for i in "${!variants[@]}"; do
  fig1_start "$bin/${variants[$i]}" "127.0.0.1:$((50171 + i))" "$work/${variants[$i]}.out"
  pids+=("$fig1_pid")
done
echo "figure 1 controls: ${#variants[@]} builds, $rounds interleaved rounds, $total requests per run, concurrency 32"
for r in $(seq "$rounds"); do
  for i in "${!variants[@]}"; do
    fig1_round "${pids[$i]}" "127.0.0.1:$((50171 + i))" 32 "$total" "$r" "$work/${variants[$i]}."
  done
done
python3 - "$work" "$rounds" "${variants[@]}" <<'PY'
import json, statistics, sys
work, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rps = lambda v, call, r: json.load(open(f"{work}/{v}.{call}.{r}.json"))["rps"]
cpu = lambda v, call, r: int(open(f"{work}/{v}.{call}.{r}.cpu").read()) / json.load(open(f"{work}/{v}.{call}.{r}.json"))["count"] / 1e3
med = statistics.median
for v in variants:
    ratios = [rps(v, "token", r) / rps(v, "health", r) for r in range(1, rounds + 1)]
    cpus = [(cpu(v, "health", r), cpu(v, "token", r)) for r in range(1, rounds + 1)]
    print(f"FIGURE cache_hit_control build={v} rps_ratio={med(ratios):.3f} "
          f"broker_cpu_us health={med(h for h, _ in cpus):.1f} token={med(t for _, t in cpus):.1f} "
          f"ratio={med(h / t for h, t in cpus):.3f} rounds={','.join(f'{x:.2f}' for x in ratios)}")
PY
